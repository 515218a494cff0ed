"""The one training loop every lifecycle command uses.

Accelerate underneath (single process, multi-process CPU/GPU, DeepSpeed ZeRO-2/3), AdamW, warmup +
cosine / WSD / constant schedules, gradient accumulation and clipping, fp32/bf16, periodic held-out
loss, resumable checkpoints, and hooks so methods can add a loss term, edit gradients after backward,
or edit weights after the optimizer step (see :class:`TrainHooks`).

Data order is a pure function of (seed, epoch, position): optimizer step ``s`` consumes the global
batch at ``position = s * global_batch`` of the epoch permutation, split across micro-batches and
ranks. A resumed run therefore sees exactly the blocks an uninterrupted run would, and a 2-process
run sees the same global batches as a 1-process run with twice the accumulation.

Checkpoint layout (``run_dir/checkpoints/step-N``), written to a temp folder and renamed:
``model.safetensors`` (full weights), ``optimizer.pt`` (tensor-only state, read back with
``weights_only=True``, so loading executes no code), ``rng-<rank>.pt`` (same), ``trainer_state.json``.
Under DeepSpeed the optimizer state is sharded, so ``accelerate.save_state`` writes it instead.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.data.packing import epoch_order
from lifecycle.display import count, number
from lifecycle.errors import LifecycleError, TrainingInterrupted
from lifecycle.train.hooks import TrainHooks, _call_after_backward, _split_state, causal_lm_loss, place_auxiliary
from lifecycle.train.plots import plot_loss_curve
from lifecycle.train.resume import StopSignals, check_resume, run_identity
from lifecycle.train.runtime import gather_plain_model, make_accelerator, prepare, rng_state, set_rng_state


class TrainConfig(BaseModel):
    """Optimisation settings shared by every command that trains."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = Field(200, ge=0, description="optimizer steps")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of the peak")
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: share of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 disables")
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    eval_every: int = Field(50, ge=0, description="steps between held-out evaluations; 0 = only at the end")
    eval_blocks: int = Field(32, ge=1, description="held-out blocks per evaluation")
    save_every: int = Field(0, ge=0, description="steps between resumable checkpoints; 0 = none")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    skip_tokens: int = Field(0, ge=0, description="tokens of the data stream to skip (already seen by a parent)")
    # One LR schedule over several train() calls (prune <-> train stages): call k sets step_offset to the
    # steps already taken and schedule_steps to the total, so warmup/decay continue instead of restarting.
    step_offset: int = Field(0, ge=0, description="global step of this run's first step (schedule position)")
    schedule_steps: int | None = Field(None, ge=1, description="length of the LR schedule; default: steps")
    report_to: list[Literal["tensorboard", "trackio", "wandb"]] = Field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based, counted from ``cfg.step_offset``)."""
    step = step + cfg.step_offset
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    total = max(cfg.schedule_steps or cfg.steps, 1)
    if cfg.schedule == "wsd":
        # Warmup-stable-decay: flat at the peak, then linear decay over the last decay_fraction.
        decay_start = int(total * (1 - cfg.decay_fraction))
        if step < decay_start:
            return peak
        frac = (step - decay_start) / max(total - decay_start, 1)
        return peak + (floor - peak) * min(frac, 1.0)
    frac = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(frac, 1.0)))


@dataclass
class TrainResult:
    model: nn.Module  # plain (unwrapped) model with full weights, on CPU, on the main process
    steps: int
    tokens_seen: int
    final_train_loss: float | None
    final_val_loss: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    is_main_process: bool = True


def _say(progress: bool, message: str) -> None:
    if progress:
        from lifecycle.display import say

        say(message)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return ckpts[-1] if ckpts else None


def held_out_loss(model: nn.Module, data: Any, cfg: TrainConfig, device: torch.device) -> float | None:
    """Mean next-token loss over the first ``eval_blocks`` held-out examples, weighted by loss tokens."""
    count_examples = min(data.num_validation, cfg.eval_blocks)
    if count_examples == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, count_examples, cfg.micro_batch_size):
            idx = torch.arange(start, min(start + cfg.micro_batch_size, count_examples))
            batch = {k: v.to(device) for k, v in data.validation_batch(idx).items()}
            out = model(**batch)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += out.loss.float().item() * tokens
            count += tokens
    model.train(was_training)
    return total / max(count, 1)


class _MetricsLog:
    def __init__(self, path: Path | None, trackers: bool):
        self.path = path
        self.trackers = trackers

    def write(self, accelerator, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.trackers:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=row["step"])


def train(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    hooks: TrainHooks | None = None,
    resume: bool | str = False,
    deepspeed_config: str | dict | None = None,
    accelerator=None,
    description: str = "training",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.steps`` optimizer steps; see the module docstring.

    ``data`` is any training set with the batch protocol of :mod:`lifecycle.data` (packed blocks or
    prompt/completion examples): ``num_train``, ``num_validation``, ``train_batch(idx)``,
    ``validation_batch(idx)``, ``epoch_order(seed, epoch)``, ``block_size`` and ``fingerprint``.

    ``resume``: ``True`` continues from the latest checkpoint in ``run_dir`` if there is one (and says
    it starts fresh otherwise); ``"strict"`` refuses to start without one. A checkpoint of another
    run is refused, naming the settings that differ (:mod:`lifecycle.train.resume`). SIGINT/SIGTERM
    stop after the current step with a checkpoint and :class:`~lifecycle.errors.TrainingInterrupted`.
    """
    hooks = hooks or TrainHooks()
    run_dir = Path(run_dir)
    accelerator = accelerator or make_accelerator(cfg, deepspeed_config, logging_dir=run_dir / "logs")
    is_main = accelerator.is_main_process
    world = accelerator.num_processes
    using_deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    if using_deepspeed and hooks.after_backward is not None:
        raise LifecycleError("this method edits gradients after backward, which DeepSpeed does not allow; run it without --deepspeed")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    identity = run_identity(model, data, cfg, world)
    global_batch = cfg.micro_batch_size * cfg.grad_accum * world
    tokens_per_step = global_batch * data.block_size
    num_blocks = data.num_train
    skip_blocks = cfg.skip_tokens // data.block_size

    if hooks.prepare_model is not None:
        model = hooks.prepare_model(model)
    place_auxiliary(hooks.auxiliary_models, accelerator.device)

    # Resume: weights go into the plain model before prepare(); optimizer/RNG after.
    start_step, ckpt, history, hook_state = 0, None, [], None
    if resume:
        ckpt = _latest_checkpoint(run_dir)
        if ckpt is None and resume == "strict":
            raise LifecycleError(f"--resume: no checkpoint in {run_dir} (train.save_every > 0 writes them)")
        if ckpt is None and is_main:
            _say(progress, f"--resume: no checkpoint in {run_dir}; starting fresh")
        if ckpt is not None:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            check_resume(state, identity, cfg, ckpt)
            if is_main:
                _say(progress, f"resuming from {ckpt} (step {state['step']} of {cfg.steps})")
            if not using_deepspeed:
                from safetensors.torch import load_model

                load_model(model, str(ckpt / "model.safetensors"), strict=True)
            start_step = state["step"]
            history = state.get("history", [])
            if hooks.load_state_dict is not None:
                hook_state = dict(state.get("hooks") or {})
                if (ckpt / "hooks.safetensors").is_file():
                    from safetensors.torch import load_file

                    hook_state.update(load_file(str(ckpt / "hooks.safetensors")))

    if hooks.trainable_parameters is not None:
        params = hooks.trainable_parameters(model)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    # A hook may return groups {"params": [...], "lr_scale": s} (a slow backbone, a fast head).
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    if not any(len(list(g["params"])) for g in groups):
        raise LifecycleError("nothing to train: no parameter requires gradients")
    param_groups = []
    for group in groups:
        members = list(group["params"])
        scale = float(group.get("lr_scale", 1.0))
        param_groups += [{"params": [p for p in members if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                         {"params": [p for p in members if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    optimizer = torch.optim.AdamW(
        param_groups,
        lr=lr_at(start_step, cfg),
        betas=(cfg.beta1, cfg.beta2),
    )
    model.train()
    prepared_model, optimizer = prepare(accelerator, model, optimizer, say=lambda m: _say(progress and is_main, m))
    device = accelerator.device

    if ckpt is not None:
        if using_deepspeed:
            accelerator.load_state(str(ckpt / "accelerate"))
        else:
            optimizer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        rng_file = ckpt / f"rng-{accelerator.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        if hook_state is not None:
            hooks.load_state_dict(hook_state)

    trackers = bool(cfg.report_to) and is_main
    if cfg.report_to:
        # TensorBoard's hparams accept only scalars and strings.
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.model_dump().items()}
        accelerator.init_trackers("lifecycle", config=hparams)
    metrics = _MetricsLog(run_dir / "metrics.jsonl" if is_main else None, trackers)
    if is_main and start_step == 0 and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()

    def save_checkpoint(step: int) -> None:
        final = run_dir / "checkpoints" / f"step-{step}"
        tmp = run_dir / "checkpoints" / f".tmp-step-{step}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if using_deepspeed:
            accelerator.save_state(str(tmp / "accelerate"))
        else:
            if is_main:
                from safetensors.torch import save_model

                save_model(accelerator.unwrap_model(prepared_model), str(tmp / "model.safetensors"))
                torch.save(optimizer.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        hook_json: dict = {}
        if hooks.state_dict is not None and is_main:
            from safetensors.torch import save_file

            tensors, hook_json = _split_state(hooks.state_dict())
            if tensors:
                save_file(tensors, str(tmp / "hooks.safetensors"))
        accelerator.wait_for_everyone()
        if is_main:
            state = {"step": step, "tokens_seen": step * tokens_per_step, "identity": identity,
                     "schedule_steps": cfg.schedule_steps or cfg.steps, "history": history, "hooks": hook_json}
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            ckpts = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in ckpts[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    progress_bar = None
    task = None
    if is_main and progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress_bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        progress_bar.start()
        task = progress_bar.add_task(description, total=cfg.steps, completed=start_step, loss="-", tps="-")

    # An epoch's permutation costs ~30 ms per 400k blocks: build it once per epoch, not per micro-batch.
    orders: dict[int, torch.Tensor] = {}

    def _order(epoch: int) -> torch.Tensor:
        if epoch not in orders:
            for old in [e for e in orders if e < epoch - 1]:
                del orders[old]
            if hooks.sampler is not None:
                orders[epoch] = hooks.sampler(epoch)
            elif hasattr(data, "epoch_order"):
                orders[epoch] = data.epoch_order(cfg.seed, epoch)
            else:
                orders[epoch] = epoch_order(num_blocks, cfg.seed, epoch)
        return orders[epoch]

    started = time.perf_counter()
    stop = StopSignals().__enter__()
    window_start, window_tokens = time.perf_counter(), 0
    last_loss = None
    last_val = history[-1].get("val_loss") if history else None
    done = start_step
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            position = skip_blocks + step * global_batch
            step_loss_sum = torch.zeros((), device=device)  # summed on the device: one sync per step, not per micro-batch
            for micro in range(cfg.grad_accum):
                offset = position + (micro * world + accelerator.process_index) * cfg.micro_batch_size
                epoch, within = divmod(offset, num_blocks)
                order = _order(epoch)
                idx = torch.arange(within, within + cfg.micro_batch_size)
                # Blocks past this epoch's end come from the next epoch's permutation.
                wrap = idx >= num_blocks
                chosen = torch.where(wrap, _order(epoch + 1)[idx % num_blocks], order[idx % num_blocks]) if bool(wrap.any()) else order[idx]
                batch = {k: v.to(device) for k, v in data.train_batch(chosen).items()}
                with accelerator.accumulate(prepared_model):
                    if hooks.compute_loss is not None:
                        outputs = prepared_model(**{k: v for k, v in batch.items() if k != "labels"})
                        loss = hooks.compute_loss(prepared_model, batch, outputs, chosen, step)
                    else:
                        outputs = prepared_model(**batch)
                        loss = outputs.loss
                    if hooks.extra_loss is not None:
                        extra = hooks.extra_loss(prepared_model, batch, outputs)
                        if extra is not None:
                            loss = loss + extra
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if hooks.after_backward is not None:
                            _call_after_backward(hooks.after_backward, accelerator.unwrap_model(prepared_model), step)
                        if cfg.grad_clip > 0:
                            accelerator.clip_grad_norm_(prepared_model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss_sum += loss.detach().float() / cfg.grad_accum
            if world > 1:
                step_loss_sum = accelerator.reduce(step_loss_sum, reduction="mean")
            step_loss = step_loss_sum.item()
            if not math.isfinite(step_loss):
                raise LifecycleError(f"loss became {step_loss} at step {step + 1}; lower the learning rate or use fp32")
            if hooks.after_step is not None:
                hooks.after_step(accelerator.unwrap_model(prepared_model), step + 1)
            last_loss = step_loss
            window_tokens += tokens_per_step
            done = step + 1
            row: dict[str, Any] = {"step": done, "lr": lr, "train_loss": step_loss, "tokens": done * tokens_per_step}
            eval_now = (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps
            if eval_now:
                last_val = held_out_loss(prepared_model, data, cfg, device)
                row["val_loss"] = last_val
            if done % cfg.log_every == 0 or eval_now or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                row["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                window_start, window_tokens = time.perf_counter(), 0
                history.append(row)
                if is_main:
                    metrics.write(accelerator, row)
            if progress_bar is not None:
                fields = {"loss": number(step_loss, 3)}
                if "tokens_per_s" in row:
                    fields["tps"] = count(round(row["tokens_per_s"]))
                    if not progress_bar.console.is_terminal:
                        # Logs and CI see no live bar: print the logged rows instead.
                        val = f" val {number(row['val_loss'], 3)}" if row.get("val_loss") is not None else ""
                        progress_bar.console.print(
                            f"{description} {done}/{cfg.steps} loss {fields['loss']}{val} {fields['tps']} tok/s",
                            highlight=False)
                progress_bar.update(task, completed=done, **fields)
            if eval_now and hooks.should_stop is not None and last_val is not None and hooks.should_stop(row):
                break  # the method's stopping rule (e.g. a held-out plateau) ends training after this step
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                save_checkpoint(done)
            signum = stop.agreed(accelerator)
            if signum is not None and done < cfg.steps:
                if not (cfg.save_every and done % cfg.save_every == 0):
                    save_checkpoint(done)
                raise TrainingInterrupted(done, signum, str(run_dir / "checkpoints" / f"step-{done}"))
    finally:
        stop.__exit__()
        if progress_bar is not None:
            progress_bar.stop()
    if cfg.report_to:
        accelerator.end_training()

    final_model = gather_plain_model(accelerator, prepared_model, model, using_deepspeed)
    if hooks.export_model is not None:
        final_model = hooks.export_model(final_model)
    return TrainResult(
        model=final_model,
        steps=done,
        tokens_seen=done * tokens_per_step,
        final_train_loss=last_loss,
        final_val_loss=last_val,
        history=history,
        seconds=time.perf_counter() - started,
        is_main_process=is_main,
    )


__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "causal_lm_loss", "held_out_loss", "lr_at", "make_accelerator", "plot_loss_curve", "train"]
