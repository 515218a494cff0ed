"""``lifecycle eval``: score a model with lm-eval on the project's offline benchmark tasks.

The model is loaded once through :func:`lifecycle.model.io.load_model` (folder, Hub id, GGUF file or
``smollm2``) and scored in memory. Results go to ``eval_results.json`` in the model folder (or
``--output``); for lifecycle checkpoints the scores are also merged into the model card.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lifecycle.commands import register
from lifecycle.eval.harness import DEFAULT_BATCH_SIZE, DEFAULT_BOOTSTRAP_ITERS, DEFAULT_MAX_LENGTH, EVAL_RESULTS_FILE, EvalReport, check_task_names, evaluate, evaluate_folder, local_task_names, parse_task_list, record_scores, score_and_record
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
    output: str | None = Field(None, description="results JSON path (default: <model folder>/eval_results.json)")
    write_card: bool = Field(True, description="merge the scores into a lifecycle checkpoint's model card")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        return parse_task_list(value) if isinstance(value, (str, list, tuple)) else value

    @field_validator("limit", mode="before")
    @classmethod
    def _parse_limit(cls, value: Any) -> Any:
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


def preflight_eval(opts: EvalOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf

    check_task_names(opts.tasks, opts.include_path)
    if not pending_models:
        pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)


@register("eval", EvalOptions, help="Score a model with lm-eval (offline tasks: arc_easy, lambada, wikitext, ...).", preflight=preflight_eval)
def run_eval(opts: EvalOptions) -> Path:
    """Load, score, print a table, write the results JSON and (for checkpoints) update the card.

    Returns the model folder when the model is a local folder (so a recipe's next step can take it
    as ``model: previous``), otherwise the results JSON it wrote.
    """
    import torch
    from rich.console import Console

    from lifecycle.model.io import load_model

    console = Console()
    check_task_names(opts.tasks, opts.include_path)  # before the (slow) model load
    folder = _local_folder(opts.model)
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
    if opts.output:
        out = Path(opts.output).expanduser()
    elif folder is not None:
        out = folder / EVAL_RESULTS_FILE
    else:
        out = _default_output(opts.model)
    report.to_json(out)
    console.print(f"results: {out}")
    if folder is not None and opts.write_card:
        if record_scores(folder, report):
            console.print(f"model card updated: {folder / 'README.md'}")
        else:
            console.print(f"{folder} has its own README.md and no lifecycle.json: card left unchanged")
    return folder if folder is not None else out


__all__ = ["EvalOptions", "run_eval", "evaluate", "evaluate_folder", "score_and_record"]
