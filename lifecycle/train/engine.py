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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.data.packing import PackedData, epoch_order
from lifecycle.errors import LifecycleError


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
class TrainHooks:
    """Ways a method changes training without writing its own loop.

    - ``extra_loss(model, batch, outputs) -> Tensor | None``: added to the LM loss (distillation,
      regularisers).
    - ``after_backward(model)``: gradients are complete and unclipped (projection, masking). Not
      available under DeepSpeed, which steps inside backward.
    - ``after_step(model, step)``: after the optimizer step (re-masking pruned weights, quantizing).
    - ``trainable_parameters(model) -> list``: which parameters the optimizer sees (default: all with
      ``requires_grad``).
    """

    extra_loss: Callable[[nn.Module, torch.Tensor, Any], torch.Tensor | None] | None = None
    after_backward: Callable[[nn.Module], None] | None = None
    after_step: Callable[[nn.Module, int], None] | None = None
    trainable_parameters: Callable[[nn.Module], list] | None = None


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


def make_accelerator(cfg: TrainConfig, deepspeed_config: str | dict | None = None, logging_dir: str | Path | None = None):
    """An Accelerator for this run; DeepSpeed when a ZeRO config is given; trackers from ``report_to``."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    kwargs: dict[str, Any] = {
        "gradient_accumulation_steps": cfg.grad_accum,
        "mixed_precision": "bf16" if cfg.precision == "bf16" else "no",
    }
    if cfg.report_to:
        kwargs["log_with"] = list(cfg.report_to)
        kwargs["project_dir"] = str(logging_dir or "runs/logs")
    if deepspeed_config is not None:
        ds = deepspeed_config
        if isinstance(ds, (str, Path)):
            ds = json.loads(Path(ds).read_text())
        ds = dict(ds)
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum
        ds["gradient_clipping"] = cfg.grad_clip
        ds.pop("train_batch_size", None)
        ds.setdefault("bf16", {})["enabled"] = cfg.precision == "bf16"
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
        if "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
            # Not started by a launcher: one process still needs the rendezvous variables, or
            # DeepSpeed tries MPI discovery and Accelerate never creates the process group.
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                               ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
                os.environ.setdefault(key, value)
    accelerator = Accelerator(**kwargs)
    if deepspeed_config is not None and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise LifecycleError(
            f"a DeepSpeed config was given but Accelerate set up {accelerator.distributed_type.value} instead "
            "(ACCELERATE_USE_CPU, which multi-process CPU runs need, turns DeepSpeed off): "
            "drop the DeepSpeed config, or run one process"
        )
    return accelerator


def _run_fingerprint(model: nn.Module, data: PackedData, cfg: TrainConfig, world: int) -> str:
    from lifecycle.model.card import options_hash

    return options_hash(
        {
            "model": model.config.to_diff_dict() if hasattr(model, "config") else str(type(model)),
            "data": data.fingerprint,
            "train": cfg.model_dump(exclude={"save_every", "keep_checkpoints", "log_every", "report_to"}),
            "world": world,
        }
    )


def _latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return ckpts[-1] if ckpts else None


def _rng_state() -> dict:
    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": np_state[2],
    }


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"), int(state["numpy_pos"]), 0, 0.0))


def _held_out_loss(model: nn.Module, data: PackedData, cfg: TrainConfig, device) -> float | None:
    if data.validation.shape[0] == 0:
        return None
    was_training = model.training
    model.eval()
    blocks = data.validation[: cfg.eval_blocks]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks.shape[0], cfg.micro_batch_size):
            batch = blocks[start:start + cfg.micro_batch_size].to(device)
            out = model(input_ids=batch, labels=batch)
            total += out.loss.float().item() * batch.shape[0]
            count += batch.shape[0]
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
    data: PackedData,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    hooks: TrainHooks | None = None,
    resume: bool = False,
    deepspeed_config: str | dict | None = None,
    accelerator=None,
    description: str = "training",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.steps`` optimizer steps; see the module docstring."""
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
    fingerprint = _run_fingerprint(model, data, cfg, world)
    global_batch = cfg.micro_batch_size * cfg.grad_accum * world
    tokens_per_step = global_batch * data.block_size
    num_blocks = data.train.shape[0]
    skip_blocks = cfg.skip_tokens // data.block_size

    # Resume: weights go into the plain model before prepare(); optimizer/RNG after.
    start_step, ckpt, history = 0, None, []
    if resume:
        ckpt = _latest_checkpoint(run_dir)
        if ckpt is not None:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            if state.get("fingerprint") != fingerprint:
                raise LifecycleError(
                    f"checkpoint {ckpt} belongs to another run (different model, data or settings); "
                    "use a new output folder or drop --resume"
                )
            if not using_deepspeed:
                from safetensors.torch import load_model

                load_model(model, str(ckpt / "model.safetensors"), strict=True)
            start_step = state["step"]
            history = state.get("history", [])

    if hooks.trainable_parameters is not None:
        params = hooks.trainable_parameters(model)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LifecycleError("nothing to train: no parameter requires gradients")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_at(start_step, cfg),
        betas=(cfg.beta1, cfg.beta2),
    )
    model.train()
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    if ckpt is not None:
        if using_deepspeed:
            accelerator.load_state(str(ckpt / "accelerate"))
        else:
            optimizer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        rng_file = ckpt / f"rng-{accelerator.process_index}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=True))

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
        torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if is_main:
            state = {"step": step, "tokens_seen": step * tokens_per_step, "fingerprint": fingerprint, "history": history}
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
            orders[epoch] = epoch_order(num_blocks, cfg.seed, epoch)
        return orders[epoch]

    started = time.perf_counter()
    window_start, window_tokens = time.perf_counter(), 0
    last_loss = None
    last_val = history[-1].get("val_loss") if history else None
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
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
                batch = data.train[chosen].to(device)
                with accelerator.accumulate(prepared_model):
                    outputs = prepared_model(input_ids=batch, labels=batch)
                    loss = outputs.loss
                    if hooks.extra_loss is not None:
                        extra = hooks.extra_loss(prepared_model, batch, outputs)
                        if extra is not None:
                            loss = loss + extra
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if hooks.after_backward is not None:
                            hooks.after_backward(accelerator.unwrap_model(prepared_model))
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
                last_val = _held_out_loss(prepared_model, data, cfg, device)
                row["val_loss"] = last_val
            if done % cfg.log_every == 0 or eval_now or done == cfg.steps:
                elapsed = time.perf_counter() - window_start
                row["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                window_start, window_tokens = time.perf_counter(), 0
                history.append(row)
                if is_main:
                    metrics.write(accelerator, row)
            if progress_bar is not None:
                fields = {"loss": f"{step_loss:.3f}"}
                if "tokens_per_s" in row:
                    fields["tps"] = f"{row['tokens_per_s']:.0f}"
                    if not progress_bar.console.is_terminal:
                        # Logs and CI see no live bar: print the logged rows instead.
                        val = f" val {row['val_loss']:.3f}" if row.get("val_loss") is not None else ""
                        progress_bar.console.print(
                            f"{description} {done}/{cfg.steps} loss {step_loss:.3f}{val} "
                            f"{row['tokens_per_s']:.0f} tok/s", highlight=False)
                progress_bar.update(task, completed=done, **fields)
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                save_checkpoint(done)
    finally:
        if progress_bar is not None:
            progress_bar.stop()
    if cfg.report_to:
        accelerator.end_training()

    final_model = _gather_plain_model(accelerator, prepared_model, model, using_deepspeed)
    return TrainResult(
        model=final_model,
        steps=cfg.steps,
        tokens_seen=cfg.steps * tokens_per_step,
        final_train_loss=last_loss,
        final_val_loss=last_val,
        history=history,
        seconds=time.perf_counter() - started,
        is_main_process=is_main,
    )


def _gather_plain_model(accelerator, prepared_model, original: nn.Module, using_deepspeed: bool) -> nn.Module:
    """Full weights in a plain module: under ZeRO-3 every rank joins the gather, the main one keeps it."""
    if not using_deepspeed:
        model = accelerator.unwrap_model(prepared_model)
        model.eval()
        return model
    state_dict = accelerator.get_state_dict(prepared_model)  # collective under ZeRO-3
    # Training is over. While a ZeRO-3 config is registered with transformers, every model it builds
    # or loads (this plain copy, the caller's save-and-reload check) comes out partitioned and empty.
    from transformers import AutoModelForCausalLM
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    model = AutoModelForCausalLM.from_config(original.config, dtype=torch.float32)
    if accelerator.is_main_process:
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
        bad = [k for k in missing if "lm_head" not in k] + list(unexpected)
        if bad:
            raise LifecycleError(f"DeepSpeed returned incomplete weights ({len(bad)} tensors missing)")
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
    model.eval()
    return model


def plot_loss_curve(history: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Train and held-out loss against tokens, as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    tokens = [r["tokens"] for r in history]
    ax.plot(tokens, [r["train_loss"] for r in history], label="train", alpha=0.7)
    val = [(r["tokens"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), marker="o", label="held-out")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
