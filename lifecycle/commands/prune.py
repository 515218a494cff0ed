"""``lifecycle prune``: structured pruning (Adapt-Pruner and baselines) into checkpoints that load.

Methods (``--method``, registered in :mod:`lifecycle.methods.prune`; ``lifecycle ls`` lists them):

* ``adapt`` — Adapt-Pruner (Pan et al. 2025, arXiv:2502.03460): layer-adaptive sparsity from
  ``−cos(h_in, h_out)``, Taylor importance recomputed every step; with recovery training Adapt-Accel
  (``stages``, by default ~5 % of the model per stage), pruning interleaved with training on one LR schedule (:mod:`lifecycle.methods.prune.adapt_pruner`).
* ``taylor-uniform`` — LLM-Pruner-style one-shot Taylor, the same ratio in every layer.
* ``flap`` — FLAP-style fluctuation metric with bias compensation, global structure search.
* ``depth`` — drop the layers with the lowest ``1 − cos``.

This module only loads the model, calls :func:`lifecycle.methods.prune.pipeline.prune_model` and
finishes the output; the pipeline checks every request before any weight changes, and the output is
written only at the end, atomically, after a reload check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lifecycle.commands import register
from lifecycle.errors import LifecycleError, TrainingInterrupted
from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
from lifecycle.methods.prune.options import PruneOptions


def preflight_prune(opts: PruneOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf

    pf.check_output(opts.output, overwrite=opts.overwrite)
    pf.check_data(opts.data)
    pf.check_data(opts.calib_data, what="calib_data")
    if opts.plan is not None and not Path(opts.plan).expanduser().is_file():
        raise LifecycleError(f"plan file not found: {opts.plan}")
    if not pending_models:
        info = pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
        pf.check_positions(opts.calib_length, info.max_positions, option="calib_length")
        if opts.train.steps > 0:
            pf.check_positions(opts.block_size, info.max_positions, option="block_size")
    pf.check_eval(opts.eval)


@register("prune", PruneOptions, help="Structured pruning (Adapt-Pruner, uniform Taylor, FLAP, depth) to loadable checkpoints.",
          preflight=preflight_prune)
def run_prune(opts: PruneOptions) -> Path:
    from lifecycle.model.io import prepare_output_dir

    prepare_output_dir(opts.output, opts.overwrite)
    run_dir = default_run_dir(opts.output)
    leave_run_dir = run_dir.exists()
    try:
        out = _prune_and_save(opts)
    except TrainingInterrupted as exc:  # recovery stopped cleanly, but a prune run does not resume
        if not leave_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainingInterrupted(exc.step, exc.signum, None, resumable=False) from None
    except BaseException:
        if not leave_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    # Recovery logs live in the run folder while training; pruning is not resumable, so the finished
    # checkpoint (metrics.jsonl, loss.png) is the record, with tracker logs where there are any.
    if not leave_run_dir:
        tidy_run_dir(run_dir, opts.run_folder, resumable=False)
    return out


def _prune_and_save(opts: PruneOptions) -> Path:
    from lifecycle.methods.prune.pipeline import prune_model
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model

    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    model, report, plan_json, history, data = prune_model(opts, loaded)
    lineage = new_lineage(
        command="prune",
        method=f"prune-{opts.method}" + ("-accel" if report.get("adapt_accel_stages", 1) > 1 else ""),
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
    # Per-layer widths before and after, in the lineage rather than only in prune_plan.json, so that a
    # descendant's card still carries the plan when this folder is gone (`lifecycle report` draws it).
    lineage["prune_plan"] = {"before": report["layer_shapes_before"], "after": report["layer_shapes"],
                             "drop_layers": list(plan_json.get("drop_layers") or [])}
    return finish_run(model, loaded.tokenizer, opts.output, lineage, overwrite=opts.overwrite, eval_after=opts.eval,
                      history=history, extra_files={"prune_plan.json": plan_json, "prune_report.json": report},
                      plot_title=f"prune ({opts.method}): recovery")


__all__ = ["PruneOptions", "run_prune"]
