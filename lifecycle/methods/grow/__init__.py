"""Growth methods: make a model deeper, reusing what a smaller one has learned.

- :mod:`~lifecycle.methods.grow.gstack`: G_stack depthwise stacking (Du et al. 2024) and its
  growth-timing guideline.
- :mod:`~lifecycle.methods.grow.layerwise`: layer-wise growth on a frozen embedding substrate
  (Bochkov 2025).

``lifecycle grow`` (:mod:`lifecycle.commands.grow`) runs either on the shared training engine.
"""

from lifecycle.methods.grow.gstack import (
    DEFAULT_FACTOR,
    GrowthPlan,
    GStackRun,
    flops_budget,
    growth_plan,
    growth_tokens,
    layer_order,
    parse_layer_map,
    run_gstack,
    stack_layers,
)
from lifecycle.methods.grow.layerwise import (
    LayerwiseRun,
    StageReport,
    add_layers,
    freeze_substrate,
    grow_layerwise,
    hashed_embedding,
    set_trainable,
    stage_flops_per_token,
)

__all__ = [
    "DEFAULT_FACTOR",
    "GStackRun",
    "GrowthPlan",
    "LayerwiseRun",
    "StageReport",
    "add_layers",
    "flops_budget",
    "freeze_substrate",
    "grow_layerwise",
    "growth_plan",
    "growth_tokens",
    "hashed_embedding",
    "layer_order",
    "parse_layer_map",
    "run_gstack",
    "set_trainable",
    "stack_layers",
    "stage_flops_per_token",
]
