"""Baseline: uniform per-layer Taylor pruning (LLM-Pruner style).

Ma et al. 2023, "LLM-Pruner: On the Structural Pruning of Large Language Models" (NeurIPS 2023,
arXiv:2305.11627), reference code horseee/LLM-Pruner ``hf_prune.py --block_wise --pruner_type taylor
--taylor param_first``: one calibration pass, Taylor salience per coupled group
(:mod:`lifecycle.methods.prune.importance`; ``taylor`` picks ``param_first`` ``Σ|W ⊙ ∇W|``, the
default of ``hf_prune.py``, or the second-order ``param_second`` / ``param_mix``), and the *same*
pruning ratio in every pruned layer, applied to KV groups (with their query heads) and MLP channels.

**Layer range.** The recipe prunes only layers ``[4, 30)`` of LLaMA-7B's 32 (``--block_*_layer_start 4
--block_*_layer_end 30``): the first four and the last two are left whole. The default here scales
that to ``L`` layers: ``[⌊4L/32 + ½⌋, L − ⌊2L/32 + ½⌋)`` (round half up), e.g. ``[4, 28)`` of 30
layers, ``[3, 22)`` of 24, every layer of a 3-layer model; ``prune_layers="START:END"`` sets it and
``"all"`` prunes every layer (as ``--uniform`` does, so that the shapes stay uniform and the
checkpoint loads as a vanilla config). With a range the removal is spread over the pruned layers only:
their share is ``(P − P*) / (their parameters)``.

Difference from the reference, on purpose: GQA — the attention ratio must remove whole KV groups in
every pruned layer (``ratio · K`` an integer); otherwise a one-line error names the nearest valid
ratios. ``attention_ratio`` may differ from the MLP ratio; the MLP ratio is then solved so the total
lands on the parameter target.
"""

from __future__ import annotations

import math
from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.methods.prune.importance import TAYLOR_ORDERS, Calibration, TaylorScores, scores_with_cache, taylor_scores
from lifecycle.methods.prune.plan import Costs, LayerPlan, Plan, apply_plan, current_plan, fmt_params, round_channels
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import DecoderAdapter

_EPS = 1e-6


def recipe_layer_range(layers: int) -> tuple[int, int]:
    """LLM-Pruner's ``[4, 30)`` of 32 layers scaled to ``layers`` (round half up); all if that is empty."""
    start = int(math.floor(4 * layers / 32 + 0.5))
    end = layers - int(math.floor(2 * layers / 32 + 0.5))
    return (start, end) if start < end else (0, layers)


def taylor_layers(adapter: DecoderAdapter, spec: str | None, *, uniform: bool = False) -> list[int]:
    """The layers uniform Taylor prunes: ``"START:END"`` (half-open), ``"all"``, or by default the
    recipe's range (every layer with ``uniform``, which asks for uniform shapes)."""
    n = len(adapter.layers)
    if spec is None:
        start, end = (0, n) if uniform else recipe_layer_range(n)
        return list(range(start, end))
    if spec.strip().lower() == "all":
        return list(range(n))
    try:
        start_s, end_s = spec.split(":")
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise LifecycleError(f"prune_layers must be START:END (e.g. 4:28) or all, got {spec!r}") from None
    if not 0 <= start < end <= n:
        raise LifecycleError(f"prune_layers {spec} is not a range of the model's {n} layers (0 ≤ START < END ≤ {n})")
    if uniform and (start, end) != (0, n):
        raise LifecycleError(f"--uniform needs every layer pruned (prune_layers=all), not {spec}")
    return list(range(start, end))


def removal_share(adapter: DecoderAdapter, target: int, layers: list[int]) -> float:
    """Share of the pruned layers' parameters that must go to reach ``target`` (their uniform ratio);
    with every layer pruned, the share of the decoder (the ``--ratio`` itself)."""
    costs = Costs.of(adapter)
    whole = len(layers) == len(adapter.layers)
    share = (costs.total - target) / max(1, costs.non_embedding if whole else sum(costs.layer[i] for i in layers))
    if share >= 1:
        raise LifecycleError(
            f"target {fmt_params(target)} would remove {share:.0%} of layers {layers[0]}–{layers[-1]}, the only ones "
            "uniform Taylor prunes: widen prune_layers (e.g. prune_layers=all) or use a larger target"
        )
    return share


def kv_keep_for(adapter: DecoderAdapter, target: int, layers: list[int], attention_ratio: float | None,
                ratio_origin: str) -> list[int]:
    """KV groups per layer: ``attention_ratio``, or by default the target's share of the pruned layers."""
    if attention_ratio is not None:
        return gqa_keep(adapter, attention_ratio, origin="--attention-ratio", layers=layers)
    rho = removal_share(adapter, target, layers)
    origin = ratio_origin if len(layers) == len(adapter.layers) else (
        f"{ratio_origin} (as a share of the pruned layers {layers[0]}–{layers[-1]})")
    return gqa_keep(adapter, rho, origin=origin, layers=layers)


def gqa_keep(adapter: DecoderAdapter, attention_ratio: float, *, origin: str = "--attention-ratio",
             layers: list[int] | None = None) -> list[int]:
    """KV groups each layer keeps at ``attention_ratio`` (layers outside ``layers`` keep all); a
    one-line error unless whole groups result."""
    if not 0 <= attention_ratio < 1:
        raise LifecycleError(f"{origin} must be in [0, 1), got {attention_ratio}")
    pruned = set(range(len(adapter.layers)) if layers is None else layers)
    keep = []
    for i in range(len(adapter.layers)):
        shape = adapter.attention_shape(i)
        if i not in pruned:
            keep.append(shape.num_kv_heads)
            continue
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
    layers: list[int] | None = None,
) -> Plan:
    """Every pruned layer keeps ``kv_keep`` groups and the same share of its MLP channels, chosen so
    the total is as close to ``target`` as the channel rounding allows (bisection on the share);
    layers outside ``layers`` stay whole."""
    now = current_plan(adapter)
    costs = Costs.of(adapter)
    pruned = set(range(len(now.layers)) if layers is None else layers)

    def plan_at(share_removed: float) -> Plan:
        return Plan([
            LayerPlan(k, round_channels(cur.channels * (1 - share_removed), channel_round, cur.channels, min_channels))
            if i in pruned else LayerPlan(cur.kv_groups, cur.channels)
            for i, (k, cur) in enumerate(zip(kv_keep, now.layers))
        ])

    attention_only = costs.params_after(now, plan_at(0.0))
    if attention_only < target:
        first = min(pruned)
        raise LifecycleError(
            f"removing {now.layers[first].kv_groups - kv_keep[first]} KV group(s) per pruned layer already leaves {fmt_params(attention_only)} "
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


def cached_taylor(adapter: DecoderAdapter, calib: Calibration, model_fp: str, *, batch_size: int, use_cache: bool,
                  order: str = "param_first") -> tuple[TaylorScores, bool]:
    if order not in TAYLOR_ORDERS:
        raise LifecycleError(f"unknown Taylor order {order!r}; choose one of {', '.join(TAYLOR_ORDERS)}")
    tensors, hit = scores_with_cache(
        "taylor", model_fp, calib, {"scorer": f"taylor-{order}"},
        lambda: taylor_scores(adapter, calib, batch_size=batch_size, order=order).to_tensors("taylor"),
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
    layers: list[int] | None = None,
    order: str = "param_first",
) -> dict[str, Any]:
    """One-shot uniform Taylor pruning of ``layers`` (default: all) to ``target`` parameters (or to an
    explicit ``plan``), scored by the Taylor ``order``."""
    if layers is None:
        layers = list(range(len(adapter.layers)))
    if plan is None:
        kv_keep = kv_keep_for(adapter, target, layers, attention_ratio, ratio_origin)
        plan = solve_uniform_plan(adapter, target, kv_keep, channel_round=channel_round, min_channels=min_channels,
                                  layers=layers)
    scores, hit = cached_taylor(adapter, calib, model_fp, batch_size=batch_size, use_cache=use_cache, order=order)
    apply_plan(adapter, plan, scores.kv_groups, scores.channels)
    return {
        "scores_cached": hit,
        "taylor": order,
        "pruned_layers": [layers[0], layers[-1] + 1],
        "calibration_loss": scores.loss,
        "plan": plan.to_json(),
        "steps": [{"step": 1, "params": adapter.num_parameters(), "loss": scores.loss}],
    }


__all__ = ["cached_taylor", "gqa_keep", "kv_keep_for", "prune_taylor_uniform", "recipe_layer_range", "removal_share", "solve_uniform_plan",
           "taylor_layers"]


@register_method("prune", "taylor-uniform", paper="Ma et al. 2023, LLM-Pruner (arXiv:2305.11627)",
                 summary="Taylor (param_first / param_mix), the same share in every layer of the recipe's range", aliases=("taylor", "taylor_uniform", "llm-pruner"))
def prune_taylor_uniform_method(ctx: Any) -> dict:
    """The ``prune`` method ``taylor-uniform`` (a PruneContext in, the report out)."""
    layers = taylor_layers(ctx.adapter, ctx.opts.prune_layers, uniform=ctx.opts.uniform)
    return prune_taylor_uniform(ctx.adapter, ctx.calib, ctx.target, attention_ratio=ctx.attention_ratio, ratio_origin=ctx.ratio_origin,
                                layers=layers, order=ctx.opts.taylor, **ctx.scoring(), **ctx.widths())
