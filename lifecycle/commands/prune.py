"""``lifecycle prune``: structured pruning (Adapt-Pruner and baselines) into checkpoints that load.

Methods (``--method``):

* ``adapt`` — Adapt-Pruner (Pan et al. 2025, arXiv:2502.03460): layer-adaptive sparsity from
  ``−cos(h_in, h_out)``, Taylor importance recomputed every step; with ``stages > 1`` Adapt-Accel,
  pruning interleaved with training on one LR schedule (:mod:`lifecycle.methods.prune.adapt_pruner`).
* ``taylor-uniform`` — LLM-Pruner-style one-shot Taylor, the same ratio in every layer.
* ``flap`` — FLAP-style fluctuation metric with bias compensation, global structure search.
* ``depth`` — drop the layers with the lowest ``1 − cos``.

All methods use the same calibration blocks (``calib_*`` options, recorded in the model card) and, when
``train.steps > 0``, the same recovery training through the shared engine (optionally distilling the
unpruned model's logits). Targets: ``target_params`` (total, e.g. ``95M``), ``ratio`` (share of the
decoder's non-embedding parameters to remove) or ``plan`` (a per-layer width file). Every request is
checked before any weight changes; the output is written only at the end, atomically, after a reload
check (see :mod:`lifecycle.model.pruned` for the two checkpoint forms).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.commands import CommandOptions, register
from lifecycle.commands.common import EvalAfter, default_run_dir
from lifecycle.errors import LifecycleError
from lifecycle.train.engine import TrainConfig

Method = Literal["adapt", "taylor-uniform", "flap", "depth"]


def _default_recovery() -> TrainConfig:
    # Recovery fine-tunes a pretrained model: a small LR and the WSD schedule Adapt-Accel uses.
    return TrainConfig(steps=0, lr=1e-4, warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1,
                       micro_batch_size=8, eval_every=0, weight_decay=0.0)


class PruneOptions(CommandOptions):
    model: str = Field(..., description="model to prune: folder, Hub id, .gguf, smollm2")
    output: str = Field(..., description="folder for the pruned checkpoint")
    overwrite: bool = False
    method: Method = "adapt"
    target_params: int | float | str | None = Field(None, description="total parameters to reach, e.g. 95M")
    ratio: float | None = Field(None, gt=0, lt=1, description="share of the decoder (non-embedding) parameters to remove")
    plan: str | None = Field(None, description="per-layer plan file (YAML/JSON): num_key_value_heads, intermediate_size, drop_layers")
    uniform: bool = Field(False, description="same width in every layer (a vanilla config); adapt: A = 0")
    attention_ratio: float | None = Field(None, ge=0, lt=1, description="taylor-uniform: share of KV groups removed in every layer")
    # calibration (the same blocks for every method)
    calib_data: str | None = Field(None, description="calibration data spec (default: data)")
    calib_samples: int = Field(128, ge=1)
    calib_length: int = Field(64, ge=2)
    calib_batch_size: int = Field(16, ge=1)
    use_cache: bool = Field(True, description="reuse cached importance scores for the same model and calibration")
    # Adapt-Pruner
    step_fraction: float = Field(0.02, gt=0, le=0.5, description="Adapt-Pruner Δ: mean sparsity added per step")
    amplitude: float = Field(0.02, ge=0, description="Adapt-Pruner A: layer-importance amplitude")
    max_sparsity: float = Field(0.99, gt=0, lt=1)
    stages: int = Field(1, ge=1, description="Adapt-Accel stages (prune, then train a slice); 1 = prune then recover")
    channel_round: int = Field(8, ge=1, description="MLP widths are multiples of this")
    min_channels: int = Field(8, ge=1, description="fewest MLP channels a layer keeps")
    bias_compensation: bool = Field(True, description="flap: fold removed inputs' means into output biases")
    per_layer_checkpoint: bool = Field(False, description="always write the per-layer form, even for uniform shapes")
    # recovery training
    data: str = Field("wikitext", description="recovery training data (and default calibration data)")
    block_size: int = Field(128, ge=8)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)
    train: TrainConfig = Field(default_factory=_default_recovery)
    distill: float = Field(0.0, ge=0, description="weight of the logit-distillation loss from the unpruned model")
    distill_temperature: float = Field(1.0, gt=0)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: EvalAfter = Field(default_factory=EvalAfter)

    @field_validator("method", mode="before")
    @classmethod
    def _method_alias(cls, value: Any) -> Any:
        aliases = {"adapt-pruner": "adapt", "adapt_pruner": "adapt", "taylor": "taylor-uniform",
                   "taylor_uniform": "taylor-uniform", "llm-pruner": "taylor-uniform"}
        return aliases.get(str(value).lower(), str(value).lower()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_target(self) -> "PruneOptions":
        given = [name for name in ("target_params", "ratio", "plan") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of target_params, ratio or plan" + (f" (got {', '.join(given)})" if given else ""))
        if self.stages > 1 and self.method != "adapt":
            raise ValueError("stages > 1 (Adapt-Accel) needs method adapt")
        if self.stages > 1 and self.plan is not None:
            raise ValueError("stages > 1 needs a parameter target, not a plan file")
        if self.stages > 1 and self.train.steps < self.stages:
            raise ValueError(f"Adapt-Accel with {self.stages} stages needs train.steps >= {self.stages}")
        if self.attention_ratio is not None and self.method != "taylor-uniform":
            raise ValueError("attention_ratio applies to method taylor-uniform (the other methods choose head counts themselves)")
        if self.uniform and self.method == "flap":
            raise ValueError("uniform shapes need method adapt or taylor-uniform (FLAP's search is global)")
        if self.distill > 0 and self.train.steps == 0:
            raise ValueError("distill needs recovery training (train.steps > 0)")
        return self


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled from /proc every 20 ms)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # not Linux: fall back to the lifetime maximum
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.rss())

    def describe(self) -> dict[str, float]:
        return {"rss_before_mib": round(self.start / 2**20, 1), "peak_rss_mib": round(self.peak / 2**20, 1)}


def distillation_hook(teacher, weight: float, temperature: float):
    """``TrainHooks.extra_loss``: ``weight · T² · KL(teacher ‖ student)`` per token on the batch logits
    (Hinton et al. 2015; Adapt-Accel's ``--use_distill`` distils from the unpruned model)."""
    import torch
    import torch.nn.functional as F

    def extra_loss(model, batch, outputs):
        with torch.no_grad():
            target = teacher(input_ids=batch).logits.float() / temperature
        student = outputs.logits.float() / temperature
        kl = F.kl_div(
            F.log_softmax(student.reshape(-1, student.shape[-1]), dim=-1),
            F.log_softmax(target.reshape(-1, target.shape[-1]), dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return weight * temperature**2 * kl

    return extra_loss


def _counts(adapter) -> dict[str, int]:
    return {"total": adapter.num_parameters(), "non_embedding": adapter.num_parameters(include_embeddings=False)}


def _save_pruned(
    opts: PruneOptions,
    model,
    tokenizer,
    lineage: dict,
    report: dict,
    plan_json: dict,
    history: list[dict],
) -> Path:
    """Evaluate (optional) and write the checkpoint atomically with its plan, report and card."""
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import plot_loss_curve

    scores: dict = {}
    settings: dict | None = None
    if opts.eval.tasks:
        from lifecycle.eval.harness import evaluate

        ev = evaluate(model, tokenizer, opts.eval.tasks, limit=opts.eval.limit, batch_size=opts.eval.batch_size,
                      max_length=opts.eval.max_length)
        ev.print_table()
        scores, settings = ev.scores, ev.settings
        lineage["eval"] = scores
        lineage["eval_settings"] = settings

    def extra(tmp: Path) -> None:
        (tmp / "prune_plan.json").write_text(json.dumps(plan_json, indent=2))
        (tmp / "prune_report.json").write_text(json.dumps(report, indent=2, default=str))
        if history:
            with open(tmp / "metrics.jsonl", "w") as fh:
                for row in history:
                    fh.write(json.dumps(row) + "\n")
            plot_loss_curve(history, tmp / "loss.png", title=f"prune ({opts.method}): recovery")
        if scores:
            (tmp / "eval_results.json").write_text(json.dumps({"scores": scores, "settings": settings}, indent=2, default=str))

    return save_checkpoint(model, tokenizer, opts.output, lineage=lineage, overwrite=opts.overwrite, write_extra=extra)


def prune_model(opts: PruneOptions, loaded, *, log=print) -> tuple[Any, dict, dict, list[dict], Any]:
    """Prune (and recover) an already loaded model; returns (model, report, plan, history, data).

    Split from :func:`run_prune` so benchmarks can prune one loaded model several ways.
    """
    from lifecycle.methods.prune import adapt_pruner, depth, flap, taylor_uniform
    from lifecycle.methods.prune.importance import build_calibration, model_fingerprint
    from lifecycle.methods.prune.plan import (
        Costs,
        apply_plan,
        check_reachable,
        current_plan,
        fmt_params,
        load_plan_file,
        resolve_target,
    )
    from lifecycle.model.adapter import adapter_for
    from lifecycle.model.pruned import finalize, layer_shapes, source_family

    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model)
    source_family(model.config)
    before = _counts(adapter)
    plan = load_plan_file(opts.plan, adapter) if opts.plan else None
    if plan is not None:
        target = Costs.of(adapter).params_after(current_plan(adapter), plan)
    else:
        target = resolve_target(adapter, target_params=opts.target_params, ratio=opts.ratio)
        if opts.method != "depth":
            check_reachable(adapter, target, opts.min_channels)
    ratio_origin = "--ratio" if opts.ratio is not None else "--target-params"
    if opts.method == "taylor-uniform" and plan is None:
        # Validate the GQA arithmetic before spending time on calibration.
        costs_now = adapter.num_parameters(), adapter.num_parameters(include_embeddings=False)
        rho = opts.attention_ratio if opts.attention_ratio is not None else (costs_now[0] - target) / costs_now[1]
        taylor_uniform.gqa_keep(adapter, rho, origin=ratio_origin if opts.attention_ratio is None else "--attention-ratio")
    calib = build_calibration(tokenizer, opts.calib_data or opts.data, samples=opts.calib_samples,
                              length=opts.calib_length, seed=opts.train.seed)
    log(f"calibration: {calib.samples} × {calib.length} tokens from {calib.source}")

    data = None
    if opts.train.steps > 0:
        from lifecycle.data import pack

        data = pack(opts.data, tokenizer, opts.block_size, val_fraction=opts.val_fraction,
                    max_train_tokens=opts.max_train_tokens)
    teacher = None
    if opts.distill > 0:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    model_fp = model_fingerprint(model) if (opts.use_cache and opts.stages == 1) else None
    run_dir = default_run_dir(opts.output)
    history: list[dict] = []
    train_summary: dict[str, Any] = {}

    def train_slice(first: int, last: int, stage: int | None = None) -> dict[str, Any]:
        from lifecycle.train.engine import TrainHooks, train

        cfg = opts.train.model_copy(update={
            "steps": last - first,
            "step_offset": first,
            "schedule_steps": opts.train.steps,
            # this slice's own blocks of the stream: the engine reads position skip + step * batch
            "skip_tokens": opts.train.skip_tokens + first * opts.train.micro_batch_size * opts.train.grad_accum * data.block_size,
        })
        hooks = TrainHooks(extra_loss=distillation_hook(teacher, opts.distill, opts.distill_temperature)) if teacher is not None else None
        result = train(adapter.model, data, cfg, run_dir / (f"stage-{stage}" if stage else "recovery"), hooks=hooks,
                       description=f"recovery{f' stage {stage}' if stage else ''}")
        for row in result.history:
            history.append({**row, "step": row["step"] + first, "tokens": row["tokens"] + first * cfg.micro_batch_size * cfg.grad_accum * data.block_size,
                            **({"stage": stage} if stage else {})})
        train_summary["tokens_seen"] = train_summary.get("tokens_seen", 0) + result.tokens_seen
        train_summary["seconds"] = round(train_summary.get("seconds", 0.0) + result.seconds, 1)
        train_summary["final_train_loss"] = result.final_train_loss
        train_summary["final_val_loss"] = result.final_val_loss
        return {"train_loss": result.final_train_loss, "val_loss": result.final_val_loss, "params": adapter.num_parameters()}

    started = time.perf_counter()
    method_report: dict[str, Any]
    with PeakMemory() as mem:
        if opts.method == "adapt":
            settings = adapt_pruner.AdaptSettings(
                step_fraction=opts.step_fraction, amplitude=opts.amplitude, max_sparsity=opts.max_sparsity,
                channel_round=opts.channel_round, min_channels=opts.min_channels, uniform=opts.uniform,
            )
            if plan is not None:  # an explicit plan: Taylor picks which groups/channels fill it
                scores, hit = taylor_uniform.cached_taylor(adapter, calib, model_fp or model_fingerprint(model),
                                                           batch_size=opts.calib_batch_size, use_cache=opts.use_cache)
                apply_plan(adapter, plan, scores.kv_groups, scores.channels)
                method_report = {"scores_cached": hit, "steps": [], "plan_file": opts.plan}
            else:
                pruner = adapt_pruner.AdaptPruner(adapter, calib, settings, batch_size=opts.calib_batch_size,
                                                  model_fp=model_fp, log=log)
                if opts.stages > 1:
                    stages = adapt_pruner.run_adapt_accel(
                        pruner, target, opts.stages, lambda k, a, b: train_slice(a, b, stage=k), opts.train.steps)
                    method_report = {"stages": stages, "steps": pruner.history}
                else:
                    pruner.prune_to(target)
                    pruner.save_cache()
                    method_report = {"steps": pruner.history, "cached_steps_used": pruner.cached_steps_used,
                                     "scores_cached": pruner.cached_steps_used > 0}
                method_report["settings"] = {k: v for k, v in settings.__dict__.items()}
        elif opts.method == "taylor-uniform":
            method_report = taylor_uniform.prune_taylor_uniform(
                adapter, calib, target, model_fp=model_fp or model_fingerprint(model), attention_ratio=opts.attention_ratio,
                ratio_origin=ratio_origin, channel_round=opts.channel_round, min_channels=opts.min_channels,
                batch_size=opts.calib_batch_size, use_cache=opts.use_cache, plan=plan)
        elif opts.method == "flap":
            method_report = flap.prune_flap(
                adapter, calib, target, model_fp=model_fp or model_fingerprint(model), bias_compensation=opts.bias_compensation,
                channel_round=opts.channel_round, min_channels=opts.min_channels, batch_size=opts.calib_batch_size,
                use_cache=opts.use_cache, plan=plan)
        else:
            method_report = depth.prune_depth(adapter, calib, target, model_fp=model_fp or model_fingerprint(model),
                                              batch_size=opts.calib_batch_size, use_cache=opts.use_cache, plan=plan)
    prune_seconds = time.perf_counter() - started - float(train_summary.get("seconds", 0.0))
    pruned_counts = _counts(adapter)
    log(f"pruned: {fmt_params(before['total'])} → {fmt_params(pruned_counts['total'])} parameters "
        f"({pruned_counts['non_embedding'] / before['non_embedding']:.1%} of the decoder) in {prune_seconds:.1f} s")

    if opts.stages == 1 and opts.train.steps > 0:
        train_slice(0, opts.train.steps)
    final_plan = current_plan(adapter)
    done = finalize(adapter.model, per_layer=True if opts.per_layer_checkpoint else None)
    if opts.uniform and done.kind != "vanilla":
        raise LifecycleError(f"--uniform could not produce a vanilla checkpoint: {done.reason}")
    plan_json = method_report.get("plan") or final_plan.to_json()
    if not plan_json.get("drop_layers"):
        plan_json["num_attention_heads"] = done.shapes.heads  # whole GQA groups: heads = groups × group size
    report = {
        "method": opts.method,
        "target_params": target,
        "params_before": before,
        "params_after": _counts(adapter_for(done.model)),
        "decoder_kept": round(pruned_counts["non_embedding"] / before["non_embedding"], 4),
        "checkpoint_form": done.kind,
        "checkpoint_form_reason": done.reason,
        "layer_shapes": layer_shapes(done.model).as_dict(),
        "calibration": calib.describe(),
        "pruning_seconds": round(prune_seconds, 1),
        "memory": mem.describe(),
        "recovery": {**train_summary, "steps": opts.train.steps, "distill": opts.distill} if opts.train.steps else None,
        **method_report,
    }
    return done.model, report, plan_json, history, data


@register("prune", PruneOptions, help="Structured pruning (Adapt-Pruner, uniform Taylor, FLAP, depth) to loadable checkpoints.")
def run_prune(opts: PruneOptions) -> Path:
    from lifecycle.model.io import prepare_output_dir

    prepare_output_dir(opts.output, opts.overwrite)
    run_dir = default_run_dir(opts.output)
    leave_run_dir = run_dir.exists()
    try:
        return _prune_and_save(opts)
    finally:
        # Recovery logs live in the run folder while training; pruning is not resumable, so the
        # finished checkpoint (metrics.jsonl, loss.png) is the record and the folder goes.
        if not leave_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def _prune_and_save(opts: PruneOptions) -> Path:
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model

    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    model, report, plan_json, history, data = prune_model(opts, loaded)
    lineage = new_lineage(
        command="prune",
        method=f"prune-{opts.method}" + ("-accel" if opts.stages > 1 else ""),
        parents=[loaded.source],
        parent_lineages=[loaded.lineage],
        options=opts.model_dump(mode="json"),
        seed=opts.train.seed,
        data={"calibration": report["calibration"], **({"recovery": data.describe()} if data is not None else {})},
        tokens_seen=(report.get("recovery") or {}).get("tokens_seen"),
    )
    lineage["metrics"] = {
        "params_before": report["params_before"],
        "params_after": report["params_after"],
        "decoder_kept": report["decoder_kept"],
        "checkpoint_form": report["checkpoint_form"],
        "pruning_seconds": report["pruning_seconds"],
        "peak_rss_mib": report["memory"]["peak_rss_mib"],
        **({"recovery": report["recovery"]} if report.get("recovery") else {}),
    }
    out = _save_pruned(opts, model, loaded.tokenizer, lineage, report, plan_json, history)
    return out
