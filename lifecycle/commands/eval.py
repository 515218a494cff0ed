"""``lifecycle eval``: score a model with lm-eval on the project's offline benchmark tasks.

The model is loaded once through :func:`lifecycle.model.io.load_model` (folder, Hub id, GGUF file or
``smollm2``) and scored in memory. For a lifecycle checkpoint the run is added to its lineage and
card, and the folder's ``eval_results.json`` is rewritten to agree with the card; ``--output`` writes
the same file (additionally) there. Every output location is checked before the model is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lifecycle.commands import register
from lifecycle.eval.harness import DEFAULT_BATCH_SIZE, DEFAULT_BOOTSTRAP_ITERS, DEFAULT_MAX_LENGTH, EVAL_RESULTS_FILE, EvalReport, check_task_names, check_writable_output, evaluate, evaluate_folder, local_task_names, manages_card, parse_task_list, record_scores, score_and_record
from lifecycle.model.card import LINEAGE_FILE
from lifecycle.options import CommandOptions

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


class EvalOptions(CommandOptions):
    """Options of ``lifecycle eval`` (also a recipe step)."""

    model: str = Field(..., description="model: folder, Hub id, .gguf file, or smollm2")
    tasks: list[str] = Field(..., min_length=1, description="tasks, e.g. arc_easy,lambada (local names: " + ", ".join(local_task_names()) + ")")
    limit: int | float | None = Field(None, gt=0, description="first N items per task, or a fraction (< 1) of each")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=16, description="context window for scoring (rolling perplexity windows)")
    num_fewshot: int | None = Field(None, ge=0)
    bootstrap_iters: int = Field(DEFAULT_BOOTSTRAP_ITERS, ge=0, description="0 = no stderr at all")
    include_path: str | None = Field(None, description="folder of your own lm-eval task YAMLs, as lm-eval's --include_path")
    output: str | None = Field(None, description="results JSON path, or a folder for <folder>/eval_results.json; a checkpoint's own eval_results.json is updated too (default: <model folder>/eval_results.json)")
    write_card: bool = Field(True, description="add the run to a lifecycle checkpoint's lineage, card and eval_results.json (false: the checkpoint folder is left unchanged)")
    replace_scores: bool = Field(False, description="make this run the card's headline for its tasks even if an earlier run scored more items")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("tasks", "limit", mode="before")
    @classmethod
    def _tasks_and_limit(cls, value: Any, info: Any) -> Any:
        if info.field_name == "tasks":
            return parse_task_list(value) if isinstance(value, (str, list, tuple)) else value
        # "100" and 100.0 are item counts; 0.1 is a fraction of each task; 2.5 is neither.
        from lifecycle.options import check_limit

        return check_limit(value)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: Any) -> Any:
        return _DTYPES.get(str(value).lower().removeprefix("torch."), value)


def _local_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    return path.resolve() if path.is_dir() else None


def _default_output(spec: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec).stem if spec.endswith(".gguf") else spec).strip("_")
    return Path.cwd() / f"eval_results_{slug or 'model'}.json"


def _plan_outputs(opts: EvalOptions, folder: Path | None) -> tuple[bool, Path | None]:
    """(whether the checkpoint's lineage/card/eval_results.json are updated, the other results file
    to write or None), each location checked for writability before anything slow happens.

    A lifecycle checkpoint's ``eval_results.json`` always agrees with its card: it is rewritten with
    the card, and with ``write_card=false`` it is left alone like the card (results then go to
    ``--output`` or ``./eval_results_<model>.json``).
    """
    updates_card = folder is not None and opts.write_card and manages_card(folder)
    if updates_card:
        assert folder is not None
        check_writable_output(folder / EVAL_RESULTS_FILE,
                              hint="to leave the model folder unchanged, pass -o PATH and write_card=false")
    if opts.output:
        return updates_card, check_writable_output(opts.output)
    if updates_card:
        return True, None
    if folder is not None and not (folder / LINEAGE_FILE).is_file():
        return False, check_writable_output(folder / EVAL_RESULTS_FILE, hint="pass -o PATH")
    return False, check_writable_output(_default_output(opts.model))


def preflight_eval(opts: EvalOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf

    check_task_names(opts.tasks, opts.include_path)
    if not pending_models:
        _plan_outputs(opts, _local_folder(opts.model))
        pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)


@register("eval", EvalOptions, help="Score a model with lm-eval (offline tasks: arc_easy, lambada, wikitext, ...).", preflight=preflight_eval,
          paper="EleutherAI lm-evaluation-harness (Biderman et al. 2024, arXiv:2405.14782)")
def run_eval(opts: EvalOptions) -> Path:
    """Load, score, print a table, write the results JSON and (for checkpoints) update the card.

    Returns the model folder when the model is a local folder (so a recipe's next step can take it
    as ``model: previous``), otherwise the results JSON it wrote.
    """
    folder = _local_folder(opts.model)
    updates_card, out = _plan_outputs(opts, folder)  # before the (slow) model load and evaluation
    check_task_names(opts.tasks, opts.include_path)

    import torch
    from rich.console import Console

    from lifecycle.model.io import load_model

    console = Console()
    loaded = load_model(
        opts.model,
        dtype=getattr(torch, opts.dtype),
        allow_pickle=opts.allow_pickle,
        trust_remote_code=opts.trust_remote_code,
    )
    report: EvalReport = evaluate(
        loaded.model, loaded.tokenizer, opts.tasks, limit=opts.limit, batch_size=opts.batch_size,
        max_length=opts.max_length, num_fewshot=opts.num_fewshot, bootstrap_iters=opts.bootstrap_iters,
        include_path=opts.include_path,
    )
    report.settings["model"] = loaded.source
    report.settings["dtype"] = opts.dtype
    report.print_table(console, title=f"lm-eval: {opts.model}")
    if updates_card:
        assert folder is not None
        record_scores(folder, report, replace=opts.replace_scores, copies=[out] if out is not None else [])
        console.print(f"results: {folder / EVAL_RESULTS_FILE}" + (f" and {out}" if out is not None else ""))
        console.print(f"model card updated: {folder / 'README.md'}")
    else:
        assert out is not None
        report.to_json(out)
        console.print(f"results: {out}")
        if folder is not None and (folder / LINEAGE_FILE).is_file():
            console.print(f"write_card=false: {folder} left unchanged")
        elif folder is not None and opts.write_card:
            console.print(f"{folder} has its own README.md and no lifecycle.json: card left unchanged")
    if folder is not None:
        return folder
    assert out is not None
    return out


__all__ = ["EvalOptions", "check_writable_output", "run_eval", "evaluate", "evaluate_folder", "score_and_record"]
