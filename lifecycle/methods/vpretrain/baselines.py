"""The arms V-Pretraining is compared with (Ke & Fanti 2026, §5 ablations), at the same learner budget.

- ``ntp``: plain next-token prediction (the engine's own LM loss; ``α = 0``).
- ``uniform-topk``: a fixed share ``α`` of the target spread uniformly over ``C_t``.
- ``self-topk``: a fixed share ``α`` on the learner's own detached top-K distribution (self-distillation).
The paper gives no ``α`` for the two smoothing baselines; 0.1 is a choice (docs/vpretrain.md).
"""

from __future__ import annotations

from lifecycle.methods.registry import register_method
from lifecycle.methods.vpretrain.options import FixedTargetOptions
from lifecycle.methods.vpretrain.pipeline import VPretrainContext
from lifecycle.methods.vpretrain.training import Schedule, VPretrainHooks

PAPER = "Ke & Fanti 2026 (arXiv:2601.22108), ablation baselines"


@register_method("vpretrain", "ntp", aliases=("next-token",), paper=PAPER,
                 summary="plain next-token prediction at the same budget (alpha = 0)")
def ntp(ctx: VPretrainContext) -> None:
    return None


def _fixed(ctx: VPretrainContext, mode: str) -> VPretrainHooks:
    group: FixedTargetOptions = ctx.opts.method_options
    return VPretrainHooks(mode=mode, k=group.k, schedule=Schedule(), fixed_alpha=group.alpha, seed=ctx.opts.train.seed)


@register_method("vpretrain", "uniform-topk", paper=PAPER, options=FixedTargetOptions,
                 summary="fixed-alpha uniform smoothing over the learner's top-K")
def uniform_topk(ctx: VPretrainContext) -> VPretrainHooks:
    return _fixed(ctx, "uniform")


@register_method("vpretrain", "self-topk", paper=PAPER, options=FixedTargetOptions,
                 summary="fixed-alpha self-distillation on the learner's own top-K")
def self_topk(ctx: VPretrainContext) -> VPretrainHooks:
    return _fixed(ctx, "self")
