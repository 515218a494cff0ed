"""Adapt-Pruner and Adapt-Accel: layer-adaptive structured pruning, optionally interleaved with training.

Pan et al. 2025, "Adapt-Pruner: Adaptive Structural Pruning for Efficient Small Language Model
Training" (arXiv:2502.03460); reference code research4pan/AdaptPruner (``utils/hf_prune.py
--block_wise --adpative_prune``, ``MetaPruner.adaptive_update_prune_distribution``, and the stage loop
of ``experiments/iterative_Prune_Train_*.sh``). The algorithm, and where each step is implemented:

1. **Structures** (Sec. 3.2): in every decoder layer, whole KV groups with their query heads (rooted at
   ``k_proj``, ``head_dim`` consecutive channels; RoPE untouched) and MLP channels (``gate``/``up``
   rows with the ``down`` column). Hidden size is not pruned. (:mod:`.surgery`)
2. **Channel importance** (Sec. 3.2): first-order Taylor ``Σ |W ⊙ ∇W|`` over each coupled group on
   calibration text, recomputed at every step on the current, already-pruned model. As in
   ``hf_prune.py`` (``get_examples`` inside the step loop), every step draws *fresh* calibration blocks
   (512 × 64 tokens by default, the scripts' ``--num_examples 512 --taylor_seq_len 64``), seeded so a
   run is repeatable. (:func:`taylor_scores`, :meth:`Calibration.draw`)
3. **Layer importance** (Sec. 3.1): ``I_l = −mean cos(h_in, h_out)``, centred and divided by
   ``max|·|`` → ``Î_l``. (:func:`normalize_layer_importance`)
4. **Adaptive sparsity.** The paper (Sec. 3.1) assigns each layer a sparsity around the mean target
   sparsity, lowered in proportion to its normalised importance, ``s_l = s̄ − A·Î_l`` (our reading of
   the section; we do not cite an equation number, since we have not verified it). The code does it
   as an *accumulating* update, once per pruning step (``adaptive_update_prune_distribution``):
   ``s_l ← clip(s_l + Δ − A·Î_l, 0, 0.99)``, with ``Δ`` = ``pruning_ratio / iterative_steps`` (1.0 / 50
   in the scripts, so 2 % of the width the pruner started from) and ``A`` = 0.02. Unrolled (before
   clipping), after ``t`` steps ``s_l = tΔ − A·Σ_τ Î_l(τ)``: the paper's form with the importance
   summed over the steps, so the skew between layers grows with the number of steps. We follow the
   code. Layer ``l`` keeps ``⌈K_l(1 − s_l)⌉`` of its ``K_l`` KV groups (at least one) and
   ``M_l(1 − s_l)`` of its ``M_l`` channels (rounded), choosing the highest-Taylor ones.
   (:meth:`AdaptPruner.step_plan`)
5. **Stop** when the parameter count reaches the target. Unlike the reference (which stops after the
   first step that undershoots, by up to one whole step), the last step is scaled down by bisection so
   the result lands within one structure of the target. (:meth:`AdaptPruner.prune_to`)
6. **Adapt-Accel** (Sec. 3.3): ``N`` stages; stage ``k`` prunes to ``P₀ − (P₀ − P*)·k/N`` parameters
   (steps 2–5) and then trains on the ``k``-th slice of the data, with one LR schedule and one global
   step counter across all stages and optional logit distillation from the unpruned model.
   (:func:`run_adapt_accel`; the shared engine continues the schedule through ``step_offset``)

   *Per-stage reset* (``stage_sparsity="reset"``, the default): the reference script re-runs
   ``hf_prune.py`` on the trained checkpoint at every stage, so each stage starts from ``s_l = 0``
   and ``K_l``, ``M_l`` and ``Δ`` are relative to the widths at the *start of that stage*.
   ``stage_sparsity="carry"`` keeps one trajectory instead: ``s_l`` and the original widths carry
   across stages, so the stages only insert training between the steps of one long pruning run (the
   shape is then what one-shot pruning with the same scores would give, and a layer's importance
   history keeps skewing its sparsity across stages). It was this project's first implementation and
   is kept to compare the two.

   *Stage count*: when none is given, ``N = max(1, round(ln(P*/P₀) / ln(1 − 0.05)))`` — the number
   of stages that removes on average (geometric mean) about 5 % of the current model per stage, the
   paper's "∼5 % at a time". (:func:`default_stage_count`; the scripts' 376.1M → 143.1M MobileLLM run
   gives 19 where the script uses 20, and 494.0M → 376.1M Qwen2.5 gives 5, as the script.)

For one-shot runs (one stage) the per-step scores are cached: their trajectory does not depend on the
target (only the stopping point does), so pruning the same model to another size replays them and
only calibrates beyond the cached steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.prune.importance import Calibration, ScoreCache, TaylorScores, normalize_layer_importance, taylor_scores
from lifecycle.methods.prune.plan import Costs, LayerPlan, Plan, apply_plan, current_plan, fmt_params, round_channels
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import DecoderAdapter


STAGE_SPARSITY = ("reset", "carry")
STEP_SHARE = 0.05  # the paper's "∼5 %" of the model removed per Adapt-Accel stage


def default_stage_count(start: int, target: int, share: float = STEP_SHARE) -> int:
    """Adapt-Accel stages when none are given: ``round(ln(P*/P₀) / ln(1 − share))``, at least 1.

    That is the stage count whose stages remove, on average (geometric mean), ``share`` of the model
    they start from.
    """
    if target >= start:
        return 1
    return max(1, int(round(math.log(target / start) / math.log(1 - share))))


@dataclass(frozen=True)
class AdaptSettings:
    """Knobs of Adapt-Pruner, with the reference scripts' values as defaults."""

    step_fraction: float = 0.02  # Δ: mean sparsity added per step (reference: ratio 1.0 / 50 steps)
    amplitude: float = 0.02  # A: how strongly layer importance skews the per-layer sparsity
    max_sparsity: float = 0.99  # clip of s_l (reference: 0.99)
    channel_round: int = 8  # MLP widths rounded to a multiple of this
    min_channels: int = 8  # no layer keeps fewer MLP channels
    uniform: bool = False  # A = 0: every layer shares one sparsity → vanilla (uniform) shapes
    stage_sparsity: str = "reset"  # Adapt-Accel: "reset" s_l and widths each stage (reference) or "carry" them
    fresh_calibration: bool = True  # new calibration blocks at every step (reference) or one set throughout

    def validate(self) -> None:
        if not 0 < self.step_fraction <= 0.5:
            raise LifecycleError(f"step fraction Δ must be in (0, 0.5], got {self.step_fraction}")
        if self.amplitude < 0:
            raise LifecycleError(f"amplitude A must be ≥ 0, got {self.amplitude}")
        if not 0 < self.max_sparsity < 1:
            raise LifecycleError(f"max sparsity must be in (0, 1), got {self.max_sparsity}")
        if self.stage_sparsity not in STAGE_SPARSITY:
            raise LifecycleError(f"stage_sparsity must be one of {', '.join(STAGE_SPARSITY)}, got {self.stage_sparsity!r}")


class AdaptPruner:
    """Holds the per-layer sparsity ``s_l`` and the widths it is relative to, across steps; with
    ``stage_sparsity="carry"`` also across Adapt-Accel stages (:meth:`start_stage` resets them)."""

    def __init__(
        self,
        adapter: DecoderAdapter,
        calib: Calibration,
        settings: AdaptSettings,
        *,
        batch_size: int = 16,
        model_fp: str | None = None,
        log: Callable[[str], None] | None = None,
    ):
        settings.validate()
        self.adapter = adapter
        self.calib = calib
        self.settings = settings
        self.batch_size = batch_size
        self.log = log or (lambda message: None)
        self.start_stage()
        self.steps_done = 0  # global: numbers the calibration draws across stages
        self.history: list[dict[str, Any]] = []
        # Replayable trajectory (one-shot runs only: training between steps changes the weights).
        self.cache = None
        self.trajectory: dict[str, torch.Tensor] = {}
        self.cached_steps_used = 0
        if model_fp is not None:
            key = {**asdict(settings), "pool": calib.pool_fingerprint if settings.fresh_calibration else None}
            self.cache = ScoreCache("adapt", model_fp, calib.fingerprint, key)
            loaded = self.cache.load()
            if loaded is not None:
                self.trajectory = loaded[0]
        self._new_steps = False

    def start_stage(self) -> None:
        """Sparsity 0, widths relative to the model as it is now (the reference re-runs its pruner)."""
        start = current_plan(self.adapter)
        self.kv0 = [p.kv_groups for p in start.layers]
        self.m0 = [p.channels for p in start.layers]
        self.sparsity = torch.zeros(len(self.kv0), dtype=torch.float64)

    # -- one step --------------------------------------------------------------------------------
    def step_calibration(self) -> Calibration:
        """The blocks of the next step: a fresh draw per step (reference), or always the first."""
        return self.calib.draw(self.steps_done) if self.settings.fresh_calibration else self.calib

    def _scores(self) -> TaylorScores:
        prefix = f"s{self.steps_done + 1}"
        cached = TaylorScores.from_tensors(self.trajectory, prefix)
        if cached is not None:
            self.cached_steps_used += 1
            return cached
        scores = taylor_scores(self.adapter, self.step_calibration(), batch_size=self.batch_size)
        if self.cache is not None:
            self.trajectory.update(scores.to_tensors(prefix))
            self._new_steps = True
        return scores

    def step_plan(self, sparsity: torch.Tensor, now: Plan) -> Plan:
        """Widths for per-layer sparsity ``s_l``, relative to the widths this pruning run (stage) started from; never grows a layer."""
        cfg = self.settings
        layers = []
        for i, cur in enumerate(now.layers):
            s = float(sparsity[i])
            kv = max(1, math.ceil(self.kv0[i] * (1 - s) - 1e-9))
            ch = round_channels(self.m0[i] * (1 - s), cfg.channel_round, self.m0[i], min(cfg.min_channels, self.m0[i]))
            layers.append(LayerPlan(min(cur.kv_groups, kv), min(cur.channels, ch)))
        return Plan(layers)

    def prune_to(self, target: int) -> list[dict[str, Any]]:
        """Adaptive steps until the model has at most ``target`` parameters (see module docstring, 2–5)."""
        cfg = self.settings
        steps: list[dict[str, Any]] = []
        stalled = 0
        while self.adapter.num_parameters() > target:
            started = time.perf_counter()
            scores = self._scores()
            imp = torch.zeros_like(self.sparsity) if cfg.uniform else normalize_layer_importance(scores.layer_importance)
            proposed = (self.sparsity + cfg.step_fraction - cfg.amplitude * imp).clamp(0.0, cfg.max_sparsity)
            now = current_plan(self.adapter)
            costs = Costs.of(self.adapter)
            plan = self.step_plan(proposed, now)
            used = proposed
            if costs.params_after(now, plan) < target:
                # Scale this last step down: the smallest fraction f of it that reaches the target.
                lo, hi = 0.0, 1.0
                for _ in range(40):
                    mid = (lo + hi) / 2
                    trial = self.sparsity + mid * (proposed - self.sparsity)
                    if costs.params_after(now, self.step_plan(trial, now)) > target:
                        lo = mid
                    else:
                        hi = mid
                used = self.sparsity + hi * (proposed - self.sparsity)
                plan = self.step_plan(used, now)
            before = costs.total
            calib_fp = self.step_calibration().fingerprint
            apply_plan(self.adapter, plan, scores.kv_groups, scores.channels)
            self.sparsity = used
            self.steps_done += 1
            after = self.adapter.num_parameters()
            stalled = stalled + 1 if after >= before else 0
            row = {
                "step": self.steps_done,
                "params": after,
                "calibration_loss": round(scores.loss, 5),
                "calibration": calib_fp,
                "mean_sparsity": round(float(self.sparsity.mean()), 5),
                "layer_importance": [round(float(v), 4) for v in imp],
                "kv_groups": [p.kv_groups for p in current_plan(self.adapter).layers],
                "channels": [p.channels for p in current_plan(self.adapter).layers],
                "seconds": round(time.perf_counter() - started, 2),
            }
            steps.append(row)
            self.history.append(row)
            self.log(f"adapt step {self.steps_done}: {fmt_params(after)} params, loss {scores.loss:.3f}, mean sparsity {row['mean_sparsity']:.3f}")
            if stalled >= int(2 / cfg.step_fraction) + 2:
                raise LifecycleError(
                    f"Adapt-Pruner cannot go below {fmt_params(after)} parameters (every layer is at its minimum width); "
                    f"target {fmt_params(target)} is out of reach"
                )
        return steps

    def save_cache(self) -> None:
        if self.cache is not None and self._new_steps:
            self.cache.save(self.trajectory, {"kind": "adapt-trajectory", "steps": self.steps_done,
                                              "calibration": self.calib.describe(), "settings": asdict(self.settings)})


def stage_targets(start: int, target: int, stages: int) -> list[int]:
    """Adapt-Accel's stage ``k`` target: ``P₀ − (P₀ − P*)·k/N`` (the last one is exactly ``P*``)."""
    return [int(round(start - (start - target) * k / stages)) for k in range(1, stages + 1)]


def stage_step_bounds(total_steps: int, stages: int) -> list[tuple[int, int]]:
    """[start, end) optimizer steps of each stage; one global counter across stages."""
    edges = [int(round(total_steps * k / stages)) for k in range(stages + 1)]
    return [(edges[k], edges[k + 1]) for k in range(stages)]


def run_adapt_accel(
    pruner: AdaptPruner,
    target: int,
    stages: int,
    train_stage: Callable[[int, int, int], dict[str, Any]],
    total_steps: int,
) -> list[dict[str, Any]]:
    """Interleave pruning and training (module docstring, step 6).

    ``train_stage(stage, first_step, last_step)`` trains the model in place for global steps
    ``[first_step, last_step)``; it is given the global positions so the caller can continue one LR
    schedule and take the stage's own slice of the data. With ``stage_sparsity="reset"`` every stage
    starts from ``s_l = 0`` relative to its own starting widths (module docstring, step 6).
    """
    if stages < 1:
        raise LifecycleError(f"stages must be at least 1, got {stages}")
    start = pruner.adapter.num_parameters()
    report = []
    for k, (stage_target, (first, last)) in enumerate(zip(stage_targets(start, target, stages), stage_step_bounds(total_steps, stages)), 1):
        t0 = time.perf_counter()
        if pruner.settings.stage_sparsity == "reset":
            pruner.start_stage()
        steps = pruner.prune_to(stage_target)
        prune_seconds = time.perf_counter() - t0
        trained = train_stage(k, first, last) if last > first else {}
        report.append({
            "stage": k,
            "target": stage_target,
            "params": pruner.adapter.num_parameters(),
            "prune_steps": len(steps),
            "prune_seconds": round(prune_seconds, 2),
            "train_steps": [first, last],
            **trained,
        })
    return report


@register_method("prune", "adapt", paper="Pan et al. 2025, Adapt-Pruner (arXiv:2502.03460)",
                 summary="layer-adaptive sparsity from layer cosine, Taylor channels; Adapt-Accel (prune/train stages) with recovery",
                 aliases=("adapt-pruner", "adapt_pruner"))
def prune_adapt(ctx: Any) -> dict:
    """The ``prune`` method ``adapt`` (:class:`lifecycle.methods.prune.pipeline.PruneContext` in, report out)."""
    from lifecycle.methods.prune.plan import apply_plan
    from lifecycle.methods.prune.taylor_uniform import cached_taylor

    opts = ctx.opts
    settings = AdaptSettings(step_fraction=opts.step_fraction, amplitude=opts.amplitude, max_sparsity=opts.max_sparsity,
                             channel_round=opts.channel_round, min_channels=opts.min_channels, uniform=opts.uniform,
                             stage_sparsity=opts.stage_sparsity, fresh_calibration=opts.calib_fresh)
    if ctx.plan is not None:  # an explicit plan: Taylor picks which groups/channels fill it
        scores, hit = cached_taylor(ctx.adapter, ctx.calib, ctx.fingerprint(), batch_size=opts.calib_batch_size,
                                    use_cache=opts.use_cache)
        apply_plan(ctx.adapter, ctx.plan, scores.kv_groups, scores.channels)
        report: dict[str, Any] = {"scores_cached": hit, "steps": [], "plan_file": opts.plan}
    else:
        pruner = AdaptPruner(ctx.adapter, ctx.calib, settings, batch_size=opts.calib_batch_size, model_fp=ctx.model_fp,
                             log=ctx.log)
        if ctx.stages > 1:
            stages = run_adapt_accel(pruner, ctx.target, ctx.stages, lambda k, a, b: ctx.train_slice(a, b, stage=k),
                                     opts.train.steps)
            report = {"stages": stages, "steps": pruner.history}
        else:
            pruner.prune_to(ctx.target)
            pruner.save_cache()
            report = {"steps": pruner.history, "cached_steps_used": pruner.cached_steps_used,
                      "scores_cached": pruner.cached_steps_used > 0}
    report["settings"] = dict(settings.__dict__)
    return report
