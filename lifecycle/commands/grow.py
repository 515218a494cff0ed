"""``lifecycle grow``: make a model deeper by G_stack stacking or layer-wise frozen-substrate growth.

Two starting points, like ``lifecycle train``:

* ``model``: a trained (small) checkpoint. G_stack stacks it and trains on for ``train.steps``;
  layer-wise growth freezes its embedding and layers and adds new layers stage by stage.
* ``config``: a *target* config and a token budget; the whole procedure runs from scratch. For
  G_stack: a small model of ``target/g`` layers is trained for ``d`` tokens (``growth_tokens``, or the
  paper's formula), stacked to the target depth, and trained on the rest of the budget. The budget
  defaults to ``train.steps`` steps of the target, so ``lifecycle train --config X train.steps=S`` is
  the from-scratch baseline for exactly the same number of tokens. For layer-wise growth: the first
  block is trained on the frozen substrate, then a block is added per stage.

``plan: true`` (``--plan``) prints the G_stack growth plan (d, the small model, the expected saving)
and writes nothing. The output checkpoint's lineage records the source, the method, the layer map
and every token seen, the small model's included; ``small/`` (G_stack from scratch) and
``stages/stage-N/`` (layer-wise) inside the output are checkpoints of the intermediate models.

The methods are registered in :mod:`lifecycle.methods.grow`; planning is :mod:`lifecycle.methods.grow.planner`.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.commands import register
from lifecycle.errors import LifecycleError
from lifecycle.methods.grow.options import GrowOptions, LayerwiseOptions
from lifecycle.methods.grow.planner import GrowthSetup, pack_data, print_plan, resolve_growth

# Older names, kept for code that imported them from here.
_resolve, _pack, _Setup = resolve_growth, pack_data, GrowthSetup


def preflight_grow(opts: GrowOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf

    if not opts.plan:
        pf.check_output(opts.output, overwrite=opts.overwrite)
    info = pf.check_start(opts, pending_models=pending_models)
    if info is not None:
        layers = getattr(info.config, "num_hidden_layers", None)
        if layers is not None and opts.target_layers is not None and opts.target_layers <= layers:
            raise LifecycleError(f"target_layers {opts.target_layers} must exceed the source's {layers} layers (growing "
                                 "makes a model deeper)")
        if layers is not None and opts.method == "gstack":  # the layer map against the source, before loading it
            from lifecycle.methods.grow.gstack import layer_order

            layer_order(int(layers), target_layers=opts.target_layers, factor=opts.factor, order=opts.order,
                        layer_map=opts.layer_map)
    pf.check_eval(opts.eval)


@register("grow", GrowOptions, help="Grow a model deeper: G_stack layer stacking or layer-wise growth on a frozen substrate.",
          preflight=preflight_grow)
def run_grow(opts: GrowOptions) -> Path | None:
    from lifecycle.model.io import prepare_output_dir

    if opts.plan and opts.method != "gstack":
        raise LifecycleError("--plan prints the G_stack growth plan; use it with method gstack")
    if not opts.plan and Path(opts.output).expanduser().exists() and not opts.overwrite:
        raise LifecycleError(f"output folder {Path(opts.output).expanduser().resolve()} exists (pass --overwrite to replace it)")
    s = resolve_growth(opts)  # every input check (source, layer map, plan budget) happens here, before any write
    if opts.plan:
        if s.plan is None:  # pragma: no cover - _resolve always plans for gstack
            raise LifecycleError("no plan")
        print_plan(s.plan)
        return None
    out = prepare_output_dir(opts.output, opts.overwrite)
    return opts.registered_method.run(opts, s, out)


__all__ = ["GrowOptions", "LayerwiseOptions", "run_grow"]
