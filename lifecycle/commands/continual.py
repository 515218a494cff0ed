"""``lifecycle continual``: train a sequence of tasks without forgetting the earlier ones.

Methods (``--method``, registered in :mod:`lifecycle.methods.continual`; ``lifecycle ls`` lists them):
``osft`` (SVD-constrained full fine-tuning), ``olora``, and the baselines ``seq-ft``, ``seq-lora``,
``l2``, ``ewc``, ``replay``, ``slca``, ``multitask``. This module checks the inputs (the preflight), calls
:func:`lifecycle.methods.continual.pipeline.run_sequence` and finishes the output: the final model
with the accuracy matrix (``continual_report.json``, ``accuracy_matrix.png``) and the per-task
checkpoints under ``tasks/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lifecycle.commands import register
from lifecycle.errors import LifecycleError
from lifecycle.methods.continual.options import ContinualOptions


def preflight_continual(opts: ContinualOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf
    from lifecycle.finish import default_run_dir
    from lifecycle.methods.continual.pipeline import check_state, read_state, run_identity
    from lifecycle.methods.continual.tasks import check_distinct_names, check_test_labels, resolve_task

    pf.check_output(opts.output, overwrite=opts.overwrite)
    tasks = [resolve_task(t) for t in opts.tasks]
    check_distinct_names(tasks)
    for task in tasks:
        check_test_labels(task, opts.limit)
    pf.check_eval(opts.eval)
    if opts.resume:
        state = read_state(default_run_dir(opts.output))
        if state is not None:
            check_state(state, run_identity(opts), default_run_dir(opts.output))
    if pending_models:
        return
    info = pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    pf.check_positions(opts.max_length, info.max_positions, option="max_length")
    group = opts.method_options
    if opts.method == "osft" and group is not None and group.preserved_rank is not None and info.config is not None:
        _check_rank_on_config(info.config, group.preserved_rank)


def _check_rank_on_config(config, rank: int) -> None:
    """A fixed preserved rank every target matrix can hold, from a weightless (meta) model."""
    import torch
    from transformers import AutoModelForCausalLM

    from lifecycle.methods.continual.osft import check_preserved_rank

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - the method checks the loaded model again
        return
    check_preserved_rank(skeleton, rank)


@register("continual", ContinualOptions, help="Continual learning over a task sequence (OSFT, O-LoRA, baselines) with the accuracy matrix.",
          preflight=preflight_continual)
def run_continual(opts: ContinualOptions) -> Path:
    from rich.console import Console

    from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
    from lifecycle.methods.continual import metrics
    from lifecycle.methods.continual.pipeline import HEATMAP_FILE, REPORT_FILE, column_headers, run_sequence
    from lifecycle.methods.continual.tasks import check_labels_distinct, resolve_task
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model, prepare_output_dir

    prepare_output_dir(opts.output, opts.overwrite)
    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    for task in (resolve_task(t) for t in opts.tasks):
        check_labels_distinct(task, loaded.tokenizer)
    console = Console(stderr=True)
    result = run_sequence(opts, loaded, log=lambda m: console.print(m, highlight=False, markup=False), console=console)
    report = result.report
    lineage = new_lineage(command="continual", method=f"continual-{opts.method}", parents=[loaded.source],
                          parent_lineages=[loaded.lineage], options=opts.model_dump(mode="json"), seed=opts.train.seed,
                          data={"tasks": report["tasks"]})
    lineage["metrics"] = {k: report[k] for k in ("method", "tasks", "column_metrics", "accuracy_matrix", "zero_shot", "AA",
                                                 "BWT", "FWT", "forgetting")}
    title = f"{opts.method}: " + " → ".join(report["tasks"])
    headers = column_headers([resolve_task(t) for t in opts.tasks])

    def write_extra(tmp: Path) -> None:
        metrics.heatmap_png(headers, report["accuracy_matrix"], tmp / HEATMAP_FILE, title, joint=report["joint"])
        (tmp / "tasks").mkdir()
        for folder in result.task_dirs:
            shutil.move(str(folder), str(tmp / "tasks" / folder.name))

    out = finish_run(result.model, result.tokenizer, opts.output, lineage, overwrite=opts.overwrite, eval_after=opts.eval,
                     history=result.history, extra_files={REPORT_FILE: report}, write_extra=write_extra, plot_title=title)
    Console().print(metrics.matrix_table(headers, report["accuracy_matrix"], report["zero_shot"], title,
                                         joint=report["joint"]))
    summary = ", ".join(f"{k} {report[k]:+.3f}" if k != "AA" else f"AA {report[k]:.3f}"
                        for k in ("AA", "BWT", "FWT") if report.get(k) is not None)
    Console().print(summary or "no summary (one stage)")
    tidy_run_dir(default_run_dir(opts.output), opts.run_folder, resumable=False)
    if not out.exists():
        raise LifecycleError(f"output {out} was not written")
    return out


__all__ = ["ContinualOptions", "preflight_continual", "run_continual"]
