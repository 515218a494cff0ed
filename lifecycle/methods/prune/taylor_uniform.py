"""Baseline: uniform per-layer first-order Taylor pruning (LLM-Pruner style).

Ma et al. 2023, "LLM-Pruner: On the Structural Pruning of Large Language Models" (NeurIPS 2023,
arXiv:2305.11627), reference code horseee/LLM-Pruner ``hf_prune.py --block_wise --pruner_type taylor
--taylor param_first``: one calibration pass, Taylor salience ``Σ|W ⊙ ∇W|`` per coupled group
(:mod:`lifecycle.methods.prune.importance`), and the *same* pruning ratio in every layer, applied to
KV groups (with their query heads) and to MLP channels.

Differences from the reference, on purpose:

* every layer is pruned (LLM-Pruner's scripts skip the first 4 and last 2 of 32 layers), so the result
  has uniform shapes and loads as a vanilla config;
* GQA: the attention ratio must remove whole KV groups in every layer (``ratio · K`` an integer);
  otherwise a one-line error names the nearest valid ratios. ``attention_ratio`` may differ from the
  MLP ratio; the MLP ratio is then solved so the total lands on the parameter target.
"""

from __future__ import annotations

from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.methods.prune.importance import Calibration, TaylorScores, scores_with_cache, taylor_scores
from lifecycle.methods.prune.plan import Costs, LayerPlan, Plan, apply_plan, current_plan, fmt_params, round_channels
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import DecoderAdapter

_EPS = 1e-6


def gqa_keep(adapter: DecoderAdapter, attention_ratio: float, *, origin: str = "--attention-ratio") -> list[int]:
    """KV groups each layer keeps at ``attention_ratio``; a one-line error unless whole groups result."""
    if not 0 <= attention_ratio < 1:
        raise LifecycleError(f"{origin} must be in [0, 1), got {attention_ratio}")
    keep = []
    for i in range(len(adapter.layers)):
        shape = adapter.attention_shape(i)
        removed = attention_ratio * shape.num_kv_heads
        if abs(removed - round(removed)) > 1e-3:
            valid = [k / shape.num_kv_heads for k in range(shape.num_kv_heads)]
            nearest = min(valid, key=lambda v: abs(v - attention_ratio))
            listed = ", ".join(f"{v:.3f}" for v in valid)
            raise LifecycleError(
                f"{origin} {attention_ratio:g} would remove {removed:.2f} of the {shape.num_kv_heads} KV groups in layer {i}, "
                f"but GQA prunes whole groups (each KV head with its {shape.group_size} query heads): nearest valid ratio "
                f"{nearest:.3f}; valid attention ratios are {listed} (set --attention-ratio, the MLP takes the rest of the target)"
            )
        keep.append(shape.num_kv_heads - int(round(removed)))
    return keep


def solve_uniform_plan(
    adapter: DecoderAdapter,
    target: int,
    kv_keep: list[int],
    *,
    channel_round: int,
    min_channels: int,
) -> Plan:
    """Every layer keeps ``kv_keep`` groups and the same share of its MLP channels, chosen so the
    total is as close to ``target`` as the channel rounding allows (bisection on the share)."""
    now = current_plan(adapter)
    costs = Costs.of(adapter)

    def plan_at(share_removed: float) -> Plan:
        return Plan([
            LayerPlan(k, round_channels(cur.channels * (1 - share_removed), channel_round, cur.channels, min_channels))
            for k, cur in zip(kv_keep, now.layers)
        ])

    attention_only = costs.params_after(now, plan_at(0.0))
    if attention_only < target:
        raise LifecycleError(
            f"removing {now.layers[0].kv_groups - kv_keep[0]} KV group(s) per layer already leaves {fmt_params(attention_only)} "
            f"parameters, below the target {fmt_params(target)}: lower --attention-ratio"
        )
    smallest = costs.params_after(now, plan_at(1.0))
    if smallest > target:
        raise LifecycleError(
            f"target {fmt_params(target)} is out of reach with this attention ratio (at least {fmt_params(smallest)} "
            "parameters remain): raise --attention-ratio or the target"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):  # params_after is non-increasing in the share removed
        mid = (lo + hi) / 2
        if costs.params_after(now, plan_at(mid)) > target:
            lo = mid
        else:
            hi = mid
    candidates = [plan_at(lo), plan_at(hi)]
    return min(candidates, key=lambda p: abs(costs.params_after(now, p) - target))


def cached_taylor(adapter: DecoderAdapter, calib: Calibration, model_fp: str, *, batch_size: int, use_cache: bool) -> tuple[TaylorScores, bool]:
    tensors, hit = scores_with_cache(
        "taylor", model_fp, calib, {"scorer": "taylor-param_first"},
        lambda: taylor_scores(adapter, calib, batch_size=batch_size).to_tensors("taylor"),
        use_cache=use_cache,
    )
    scores = TaylorScores.from_tensors(tensors, "taylor")
    assert scores is not None
    return scores, hit


def prune_taylor_uniform(
    adapter: DecoderAdapter,
    calib: Calibration,
    target: int,
    *,
    model_fp: str,
    attention_ratio: float | None,
    ratio_origin: str,
    channel_round: int = 8,
    min_channels: int = 8,
    batch_size: int = 16,
    use_cache: bool = True,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """One-shot uniform Taylor pruning to ``target`` parameters (or to an explicit ``plan``)."""
    costs = Costs.of(adapter)
    if plan is None:
        rho = attention_ratio if attention_ratio is not None else (costs.total - target) / costs.non_embedding
        kv_keep = gqa_keep(adapter, rho, origin=ratio_origin if attention_ratio is None else "--attention-ratio")
        plan = solve_uniform_plan(adapter, target, kv_keep, channel_round=channel_round, min_channels=min_channels)
    scores, hit = cached_taylor(adapter, calib, model_fp, batch_size=batch_size, use_cache=use_cache)
    apply_plan(adapter, plan, scores.kv_groups, scores.channels)
    return {
        "scores_cached": hit,
        "calibration_loss": scores.loss,
        "plan": plan.to_json(),
        "steps": [{"step": 1, "params": adapter.num_parameters(), "loss": scores.loss}],
    }


__all__ = ["cached_taylor", "gqa_keep", "prune_taylor_uniform", "solve_uniform_plan"]


@register_method("prune", "taylor-uniform", paper="Ma et al. 2023, LLM-Pruner (arXiv:2305.11627)",
                 summary="first-order Taylor, the same share in every layer", aliases=("taylor", "taylor_uniform", "llm-pruner"))
def prune_taylor_uniform_method(ctx: Any) -> dict:
    """The ``prune`` method ``taylor-uniform`` (a PruneContext in, the report out)."""
    return prune_taylor_uniform(ctx.adapter, ctx.calib, ctx.target, attention_ratio=ctx.attention_ratio, ratio_origin=ctx.ratio_origin,
                                **ctx.scoring(), **ctx.widths())
