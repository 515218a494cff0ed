"""Baseline: depth pruning — drop the decoder layers that change their input least.

Layer score ``1 − mean_tokens cos(h_in, h_out)`` on calibration text (the block-importance metric
of Minitron, Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation", arXiv:2407.14679, Sec. 2.2; also ShortGPT's Block Influence, Men et al. 2024,
arXiv:2403.03853, Eq. 2). Scores are computed once on the unpruned model (one-shot) and the
lowest-scoring layers are removed until the parameter count is closest to the target. Dropping a
layer re-indexes ``self_attn.layer_idx`` and the per-layer config fields
(:meth:`DecoderAdapter.set_layers`), so the KV cache and Qwen2's ``layer_types`` stay consistent.
"""

from __future__ import annotations

from typing import Any

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.prune.importance import Calibration, layer_cosine, scores_with_cache
from lifecycle.methods.prune.plan import Costs, Plan, current_plan, fmt_params
from lifecycle.methods.prune.surgery import drop_layers
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import DecoderAdapter


def depth_scores(adapter: DecoderAdapter, calib: Calibration, model_fp: str, *, batch_size: int, use_cache: bool) -> tuple[torch.Tensor, bool]:
    """``1 − cos`` per layer (cached like every other score)."""
    tensors, hit = scores_with_cache(
        "cosine", model_fp, calib, {"scorer": "layer-cosine"},
        lambda: {"cos": layer_cosine(adapter, calib, batch_size=batch_size)},
        use_cache=use_cache,
    )
    return 1.0 - tensors["cos"].double(), hit


def choose_layers(scores: torch.Tensor, costs: Costs, target: int) -> list[int]:
    """Least important layers first; as many as bring the total closest to ``target``."""
    order = torch.sort(scores, stable=True).indices.tolist()
    best_k, best_gap = 0, abs(costs.total - target)
    removed = 0
    for k in range(1, len(order)):  # at least one layer stays
        removed += costs.layer[order[k - 1]]
        gap = abs(costs.total - removed - target)
        if gap < best_gap:
            best_k, best_gap = k, gap
    if best_k == 0:
        raise LifecycleError(
            f"the target is within half a layer of the model size ({fmt_params(costs.layer[0])} per layer): depth pruning "
            "removes whole layers; use a smaller target or width pruning"
        )
    return sorted(order[:best_k])


def prune_depth(
    adapter: DecoderAdapter,
    calib: Calibration,
    target: int,
    *,
    model_fp: str,
    batch_size: int = 16,
    use_cache: bool = True,
    plan: Plan | None = None,
) -> dict[str, Any]:
    costs = Costs.of(adapter)
    scores, hit = depth_scores(adapter, calib, model_fp, batch_size=batch_size, use_cache=use_cache)
    drop = list(plan.drop) if plan is not None and plan.drop else choose_layers(scores, costs, target)
    final = current_plan(adapter)
    final.drop = drop
    drop_layers(adapter, drop)
    return {
        "scores_cached": hit,
        "layer_scores_1_minus_cos": [round(float(s), 6) for s in scores],
        "dropped_layers": drop,
        "steps": [{"step": 1, "params": adapter.num_parameters()}],
        "plan": final.to_json(),
    }


@register_method("prune", "depth", paper="Men et al. 2024, ShortGPT (arXiv:2403.03853); Muralidharan et al. 2024, Minitron",
                 summary="drop the layers whose output is closest to their input")
def prune_depth_method(ctx: Any) -> dict:
    """The ``prune`` method ``depth`` (a PruneContext in, the report out)."""
    return prune_depth(ctx.adapter, ctx.calib, ctx.target, **ctx.scoring())
