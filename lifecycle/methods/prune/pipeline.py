"""The prune pipeline every prune method runs in: resolve the target, calibrate, prune, recover, finalize.

A prune method is registered with :func:`lifecycle.methods.registry.register_method` (``"prune"``)
and called as ``run(ctx: PruneContext) -> dict``: it edits ``ctx.adapter`` in place until the model
has ``ctx.target`` parameters (or matches ``ctx.plan``) and returns its report (scores used, steps,
the plan it chose). Everything around it is shared here: the target and plan checks (before any
weight changes), calibration blocks, recovery training on the shared engine (optionally distilling
the unpruned model), and turning the pruned model into a checkpoint form that loads
(:mod:`lifecycle.model.pruned`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lifecycle.errors import LifecycleError
from lifecycle.finish import default_run_dir
from lifecycle.methods.prune.options import PruneOptions
from lifecycle.methods.registry import get_method

if TYPE_CHECKING:
    from lifecycle.train.engine import TrainConfig


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


def launched_world_size() -> int:
    """Processes in this launch (``WORLD_SIZE``, set by accelerate launch / torchrun; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def slice_config(train_cfg: TrainConfig, first: int, last: int, block_size: int, world: int) -> TrainConfig:
    """The engine config for recovery steps [first, last) of one LR schedule over several stages.

    The engine reads global batch ``micro × accum × world`` blocks per step from position
    ``skip_tokens``, so slice k must skip what slices 0..k-1 read on *all* processes; leaving
    ``world`` out made stages re-read each other's data under several processes.
    """
    tokens_per_step = train_cfg.micro_batch_size * train_cfg.grad_accum * world * block_size
    return train_cfg.model_copy(update={
        "steps": last - first,
        "step_offset": first,
        "schedule_steps": train_cfg.steps,
        "skip_tokens": train_cfg.skip_tokens + first * tokens_per_step,
    })


@dataclass
class PruneContext:
    """What a prune method receives: the model to edit, its calibration and target, and the options."""

    opts: PruneOptions
    adapter: Any  # lifecycle.model.adapter.DecoderAdapter
    calib: Any  # lifecycle.methods.prune.importance.Calibration
    target: int  # total parameters to reach
    plan: Any  # lifecycle.methods.prune.plan.Plan from a plan file, or None
    model_fp: str | None  # fingerprint of the unpruned model for the score cache (None: do not cache steps)
    attention_ratio: float | None
    ratio_origin: str
    train_slice: Callable[..., dict]  # train_slice(first_step, last_step, stage=k): recovery training
    log: Callable[[str], None] = print
    stages: int = 1  # Adapt-Accel stages, resolved (:func:`resolve_stages`)
    extra: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        from lifecycle.methods.prune.importance import model_fingerprint

        return self.model_fp or model_fingerprint(self.adapter.model)

    def scoring(self) -> dict[str, Any]:
        """Keyword arguments every scoring method takes: cache key, batch size, cache use, plan file."""
        return {"model_fp": self.fingerprint(), "batch_size": self.opts.calib_batch_size,
                "use_cache": self.opts.use_cache, "plan": self.plan}

    def widths(self) -> dict[str, int]:
        """Keyword arguments of the methods that choose MLP widths."""
        return {"channel_round": self.opts.channel_round, "min_channels": self.opts.min_channels}


def resolve_stages(opts: PruneOptions, start: int, target: int) -> int:
    """Adapt-Accel stages: the option, else (adapt with recovery training and a parameter target) the
    paper's ~5 % per stage (:func:`default_stage_count`), at most one stage per recovery step; else 1.

    Without recovery training there is nothing to interleave, so the default is one pruning run.
    """
    from lifecycle.methods.prune.adapt_pruner import default_stage_count

    if opts.stages is not None:
        return opts.stages
    if opts.registered_method.name != "adapt" or opts.plan is not None or opts.train.steps == 0:
        return 1
    return max(1, min(default_stage_count(start, target), opts.train.steps))


def recovery_hooks(opts: PruneOptions, teacher: Any) -> Any:
    """The engine hooks of recovery distillation in the chosen form (None without a teacher)."""
    if teacher is None:
        return None
    from lifecycle.train.distill import distillation_hooks, reference_kd_hooks

    if opts.distill_loss == "reference":
        return reference_kd_hooks(teacher, opts.distill, opts.temperature)
    return distillation_hooks(teacher, opts.distill, opts.temperature)


def _counts(adapter: Any) -> dict[str, int]:
    return {"total": adapter.num_parameters(), "non_embedding": adapter.num_parameters(include_embeddings=False)}


def prune_model(opts: PruneOptions, loaded: Any, *, log: Callable[[str], None] = print) -> tuple[Any, dict, dict, list[dict], Any]:
    """Prune (and recover) an already loaded model; returns (model, report, plan, history, data).

    Usable from Python: benchmarks prune one loaded model several ways with it.
    """
    from lifecycle.methods.prune.importance import build_calibration, model_fingerprint
    from lifecycle.methods.prune.plan import (
        Costs,
        check_reachable,
        current_plan,
        fmt_params,
        load_plan_file,
        resolve_target,
    )
    from lifecycle.methods.prune.taylor_uniform import kv_keep_for, taylor_layers
    from lifecycle.model.adapter import adapter_for
    from lifecycle.model.pruned import finalize, layer_shapes, source_family

    method = get_method("prune", opts.method)
    model, tokenizer = loaded.model, loaded.tokenizer
    adapter = adapter_for(model)
    source_family(model.config)
    before = _counts(adapter)
    shapes_before = layer_shapes(model).as_dict()  # the model is pruned in place
    plan = load_plan_file(opts.plan, adapter) if opts.plan else None
    if plan is not None:
        target = Costs.of(adapter).params_after(current_plan(adapter), plan)
    else:
        target = resolve_target(adapter, target_params=opts.target_params, ratio=opts.ratio)
        if opts.method != "depth":
            check_reachable(adapter, target, opts.min_channels)
    ratio_origin = "--ratio" if opts.ratio is not None else "--target-params"
    if method.name == "taylor-uniform" and plan is None:
        # Validate the layer range and the GQA arithmetic before spending time on calibration.
        kv_keep_for(adapter, target, taylor_layers(adapter, opts.prune_layers, uniform=opts.uniform), opts.attention_ratio,
                    ratio_origin)
    stages = resolve_stages(opts, before["total"], target)
    calib = build_calibration(tokenizer, opts.calib_data or opts.data, samples=opts.calibration_samples,
                              length=opts.calib_length, seed=opts.train.seed)
    log(f"calibration: {calib.samples} × {calib.length} tokens from {calib.source}")
    if stages > 1:
        log(f"Adapt-Accel: {stages} stages ({opts.stage_sparsity} sparsity per stage)")

    data = None
    if opts.train.steps > 0:
        from lifecycle.data import pack

        data = pack(opts.data, tokenizer, opts.block_size, val_fraction=opts.val_fraction,
                    max_train_tokens=opts.max_train_tokens)
    teacher = None
    if opts.distill > 0:
        from lifecycle.train.distill import frozen_copy

        teacher = frozen_copy(model)

    model_fp = model_fingerprint(model) if (opts.use_cache and stages == 1) else None
    run_dir = default_run_dir(opts.output)
    history: list[dict] = []
    train_summary: dict[str, Any] = {}

    def train_slice(first: int, last: int, stage: int | None = None) -> dict[str, Any]:
        from lifecycle.train.engine import train

        cfg = slice_config(opts.train, first, last, data.block_size, launched_world_size())
        tokens_before = cfg.skip_tokens - opts.train.skip_tokens  # read by earlier slices, all processes
        hooks = recovery_hooks(opts, teacher)
        result = train(adapter.model, data, cfg, run_dir / (f"stage-{stage}" if stage else "recovery"), hooks=hooks,
                       description=f"recovery{f' stage {stage}' if stage else ''}")
        for row in result.history:
            history.append({**row, "step": row["step"] + first, "tokens": row["tokens"] + tokens_before,
                            **({"stage": stage} if stage else {})})
        train_summary["tokens_seen"] = train_summary.get("tokens_seen", 0) + result.tokens_seen
        train_summary["seconds"] = round(train_summary.get("seconds", 0.0) + result.seconds, 1)
        train_summary["final_train_loss"] = result.final_train_loss
        train_summary["final_val_loss"] = result.final_val_loss
        return {"train_loss": result.final_train_loss, "val_loss": result.final_val_loss, "params": adapter.num_parameters()}

    ctx = PruneContext(opts=opts, adapter=adapter, calib=calib, target=target, plan=plan, model_fp=model_fp,
                       attention_ratio=opts.attention_ratio, ratio_origin=ratio_origin, train_slice=train_slice, log=log,
                       stages=stages)
    started = time.perf_counter()
    with PeakMemory() as mem:
        method_report = method.run(ctx)
    prune_seconds = time.perf_counter() - started - float(train_summary.get("seconds", 0.0))
    pruned_counts = _counts(adapter)
    log(f"pruned: {fmt_params(before['total'])} → {fmt_params(pruned_counts['total'])} parameters "
        f"({pruned_counts['non_embedding'] / before['non_embedding']:.1%} of the decoder) in {prune_seconds:.1f} s")

    if stages == 1 and opts.train.steps > 0:
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
        "layer_shapes_before": shapes_before,
        "layer_shapes": layer_shapes(done.model).as_dict(),
        "calibration": calib.describe(),
        "pruning_seconds": round(prune_seconds, 1),
        "memory": mem.describe(),
        "adapt_accel_stages": stages,
        "recovery": {**train_summary, "steps": opts.train.steps, "distill": opts.distill,
                     **({"distill_loss": opts.distill_loss, "distill_temperature": opts.temperature} if opts.distill else {})}
        if opts.train.steps else None,
        **method_report,
    }
    return done.model, report, plan_json, history, data


__all__ = ["PeakMemory", "PruneContext", "PruneOptions", "launched_world_size", "prune_model", "recovery_hooks",
           "resolve_stages", "slice_config"]
