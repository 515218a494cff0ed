"""Pieces every command shares: options groups, loading the input model, finishing an output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lifecycle.commands import CommandOptions
from lifecycle.train.engine import TrainConfig, TrainResult, plot_loss_curve


class EvalAfter(CommandOptions):
    """lm-eval tasks to score the output with (written into its model card)."""

    tasks: list[str] = Field(default_factory=list)
    limit: int | float | None = 100
    batch_size: int = 8
    max_length: int = 1024

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value


class OutputOptions(CommandOptions):
    output: str = Field(..., description="folder to write the checkpoint to")
    overwrite: bool = False


def split_csv(value: Any) -> Any:
    return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value


def finish_run(
    model,
    tokenizer,
    output: str | Path,
    lineage: dict,
    *,
    overwrite: bool,
    eval_after: EvalAfter | None = None,
    result: TrainResult | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Evaluate (optional), write the checkpoint atomically with its card, loss curve and metrics."""
    from lifecycle.model.io import save_checkpoint

    scores: dict = {}
    settings: dict | None = None
    if eval_after is not None and eval_after.tasks:
        from lifecycle.eval.harness import evaluate

        report = evaluate(
            model,
            tokenizer,
            eval_after.tasks,
            limit=eval_after.limit,
            batch_size=eval_after.batch_size,
            max_length=eval_after.max_length,
        )
        report.print_table()
        scores, settings = report.scores, report.settings
    lineage = dict(lineage)
    if scores:
        lineage["eval"] = scores
        lineage["eval_settings"] = settings
    if result is not None:
        lineage["metrics"] = {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "final_train_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "seconds": round(result.seconds, 1),
        }

    def extra(tmp: Path) -> None:
        if result is not None and result.history:
            with open(tmp / "metrics.jsonl", "w") as fh:
                for row in result.history:
                    fh.write(json.dumps(row) + "\n")
            plot_loss_curve(result.history, tmp / "loss.png", title=f"{lineage.get('command')}: {Path(output).name}")
        if scores:
            (tmp / "eval_results.json").write_text(json.dumps({"scores": scores, "settings": settings}, indent=2, default=str))

    return save_checkpoint(model, tokenizer, output, lineage=lineage, overwrite=overwrite, write_extra=extra)


def default_run_dir(output: str | Path) -> Path:
    """Resumable training state lives beside the output, so the output itself is only ever complete."""
    out = Path(output).expanduser().resolve()
    return out.parent / f".{out.name}.run"


__all__ = ["EvalAfter", "OutputOptions", "TrainConfig", "default_run_dir", "finish_run", "split_csv"]
