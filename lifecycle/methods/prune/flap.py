"""Baseline: FLAP-style fluctuation pruning with bias compensation, retraining-free.

An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (AAAI 2024,
arXiv:2312.11983); reference code CASIA-IVA-Lab/FLAP (``--prune_method flap --metrics WIFV
--structure AL-AM``). Steps, and where they are here:

1. Fluctuation metric WIFV (Eq. 4): for input channel ``j`` of ``o_proj`` / ``down_proj``,
   ``S_j = Var_tokens(x_j) · ‖W[:, j]‖²`` on calibration text (:func:`flap_statistics`).
   As in the reference, the attention metric is squared before it is reduced per head.
2. Adaptive structure search, AL-AM (Sec. 3.2): scores are standardised per layer (z-score over the
   layer's channels), attention channels are averaged per head, then heads and MLP channels of all
   layers compete in one pool, each weighted by the parameters it holds; the best are kept until the
   parameter target is reached (:func:`flap_plan`).
3. Bias compensation (Eq. 7): the removed inputs are replaced by their calibration mean, folded into
   the output bias ``b = W[:, removed] · mean_x[removed]`` (:func:`lifecycle.methods.prune.surgery._compensate`).

Adaptations, stated plainly:

* **GQA**: FLAP is MHA-only (q/k/v share one mask). Here the unit is a KV group with its query heads;
  its score is the mean of its query heads' scores and its weight is the group's real parameter count
  (FLAP hard-codes 512/3 channels per head for head_dim 128).
* **Bias slots**: Llama has only all-or-nothing ``attention_bias``/``mlp_bias``; Qwen2 has q/k/v biases
  but none on ``o_proj``; Mistral has none. Compensation biases are therefore stored in lifecycle's
  per-layer checkpoint form (``o_proj_bias``/``down_proj_bias`` in the config), which loads with
  ``import lifecycle`` or ``trust_remote_code=True``. ``bias_compensation=False`` skips it (plain
  shapes only; with uniform shapes the result is then a vanilla checkpoint).
* Every layer keeps at least one KV group and ``min_channels`` channels (FLAP may empty a layer).
"""

from __future__ import annotations

from typing import Any

import torch

from lifecycle.methods.prune.importance import Calibration, FlapStats, flap_statistics, scores_with_cache
from lifecycle.methods.prune.plan import Costs, LayerPlan, Plan, apply_plan, current_plan, round_channels
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import DecoderAdapter


def cached_flap(adapter: DecoderAdapter, calib: Calibration, model_fp: str, *, batch_size: int, use_cache: bool) -> tuple[FlapStats, bool]:
    tensors, hit = scores_with_cache(
        "flap", model_fp, calib, {"scorer": "flap-mean-var"},
        lambda: flap_statistics(adapter, calib, batch_size=batch_size).to_tensors(),
        use_cache=use_cache,
    )
    stats = FlapStats.from_tensors(tensors, len(adapter.layers))
    assert stats is not None
    return stats, hit


def _standardize(x: torch.Tensor) -> torch.Tensor:
    std = x.std()
    return (x - x.mean()) / std if float(std) > 0 else torch.zeros_like(x)


def wifv_scores(adapter: DecoderAdapter, stats: FlapStats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Standardised WIFV per KV group and per MLP channel, comparable across layers."""
    kv_scores, ch_scores = [], []
    for i, layer in enumerate(adapter.layers):
        shape = adapter.attention_shape(i)
        w_o = adapter.attention_projections(layer)["o"].weight.detach().double().cpu()
        attn = (stats.attn_var[i].double() * w_o.pow(2).sum(0)) ** 2  # squared, as the reference does
        per_head = _standardize(attn).view(shape.num_heads, shape.head_dim).mean(1)
        kv_scores.append(per_head.view(shape.num_kv_heads, shape.group_size).mean(1))
        w_down = adapter.mlp_projections(layer)["down"].weight.detach().double().cpu()
        ch_scores.append(_standardize(stats.mlp_var[i].double() * w_down.pow(2).sum(0)))
    return kv_scores, ch_scores


def flap_plan(
    adapter: DecoderAdapter,
    target: int,
    kv_scores: list[torch.Tensor],
    ch_scores: list[torch.Tensor],
    *,
    channel_round: int,
    min_channels: int,
) -> Plan:
    """AL-AM: one pool of all groups and channels, best first, kept until the target is spent."""
    now = current_plan(adapter)
    costs = Costs.of(adapter)
    kept_kv = [1] * len(now.layers)  # every layer keeps its best group and best channels
    kept_ch = [min(min_channels, cur.channels) for cur in now.layers]
    budget = target - costs.params_after(now, Plan([LayerPlan(k, c) for k, c in zip(kept_kv, kept_ch)]))
    pool: list[tuple[float, int, int, int]] = []  # (score, kind 0=kv 1=channel, layer, params)
    for i in range(len(now.layers)):
        kv_sorted = torch.sort(kv_scores[i], descending=True, stable=True).values.tolist()
        ch_sorted = torch.sort(ch_scores[i], descending=True, stable=True).values.tolist()
        pool += [(s, 0, i, costs.group[i]) for s in kv_sorted[1:]]
        pool += [(s, 1, i, costs.channel[i]) for s in ch_sorted[kept_ch[i]:]]
    pool.sort(key=lambda item: (-item[0], item[1], item[2]))
    for score, kind, layer, params in pool:
        if budget - params < -params / 2:  # stop where the total is closest to the target
            break
        budget -= params
        if kind == 0:
            kept_kv[layer] += 1
        else:
            kept_ch[layer] += 1
    return Plan([
        LayerPlan(k, round_channels(c, channel_round, cur.channels, min(min_channels, cur.channels)))
        for k, c, cur in zip(kept_kv, kept_ch, now.layers)
    ])


def prune_flap(
    adapter: DecoderAdapter,
    calib: Calibration,
    target: int,
    *,
    model_fp: str,
    plan: Plan | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    bias_compensation: bool = True,
    channel_round: int = 8,
    min_channels: int = 8,
) -> dict[str, Any]:
    stats, hit = cached_flap(adapter, calib, model_fp, batch_size=batch_size, use_cache=use_cache)
    kv_scores, ch_scores = wifv_scores(adapter, stats)
    if plan is None:
        plan = flap_plan(adapter, target, kv_scores, ch_scores, channel_round=channel_round, min_channels=min_channels)
    apply_plan(
        adapter, plan, kv_scores, ch_scores,
        attn_means=stats.attn_mean if bias_compensation else None,
        mlp_means=stats.mlp_mean if bias_compensation else None,
    )
    return {
        "scores_cached": hit,
        "bias_compensation": bias_compensation,
        "plan": plan.to_json(),
        "steps": [{"step": 1, "params": adapter.num_parameters()}],
    }


@register_method("prune", "flap", paper="An et al. 2024, FLAP (AAAI 2024, arXiv:2312.11983)",
                 summary="fluctuation metric, global structure search, bias compensation; retraining-free")
def prune_flap_method(ctx: Any) -> dict:
    """The ``prune`` method ``flap`` (a PruneContext in, the report out)."""
    return prune_flap(ctx.adapter, ctx.calib, ctx.target, bias_compensation=ctx.opts.bias_compensation, **ctx.scoring(), **ctx.widths())
