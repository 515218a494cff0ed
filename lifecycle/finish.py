"""How every command ends: score the output, then write it atomically with its card and records.

:func:`finish_run` is the one exit of every command that writes a model: optional lm-eval scoring
(scores into the lineage and ``eval_results.json``), training metrics, the loss curve (thinned into the
lineage, whole in ``metrics.jsonl`` and ``loss.png``), any files the method adds (a pruning plan, an
accuracy matrix), then :func:`lifecycle.model.io.save_checkpoint`: temp folder → reload check → rename.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from lifecycle.options import EvalAfter


def default_run_dir(output: str | Path) -> Path:
    """Resumable training state lives beside the output, so the output itself is only ever complete."""
    out = Path(output).expanduser().resolve()
    return out.parent / f".{out.name}.run"


def finished_already(opts: Any) -> bool:
    """``--resume`` on a finished output: a no-op that says so, when its settings are these.

    ``opts`` is a command's options model with ``output``. A finished output with other settings
    (beyond a longer ``train.steps``, which resume extends) is refused rather than overwritten.
    """
    from lifecycle.errors import LifecycleError
    from lifecycle.model.card import LINEAGE_FILE
    from lifecycle.train.resume import differences

    out = Path(opts.output).expanduser().resolve()
    lineage_file = out / LINEAGE_FILE
    if not lineage_file.is_file():
        return False
    saved = json.loads(lineage_file.read_text()).get("options") or {}
    ignore = {"resume", "resume_strict", "overwrite"}
    now = {k: v for k, v in opts.model_dump(mode="json").items() if k not in ignore}
    saved = {k: v for k, v in saved.items() if k not in ignore}
    diff = differences(saved, now)
    if not diff:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(f"already finished: {out} has these settings; nothing to do", highlight=False)
        return True
    if all(d.startswith(("train.steps:", "train.schedule_steps:")) for d in diff):
        return False  # extending the run: the engine resumes from its last checkpoint if the schedule allows
    raise LifecycleError(f"{out} is a finished run with other settings ({'; '.join(diff)}); "
                         "--overwrite replaces it, or use a new output folder")


def _write_extra_files(folder: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content, indent=2, default=str))


# A card keeps at most this many points of its loss curve: enough for a readable plot, and small enough
# that a descendant's card, which embeds every ancestor's lineage, stays a few kilobytes per ancestor.
CURVE_POINTS = 200


def compact_curve(rows: list[dict], points: int = CURVE_POINTS) -> dict[str, list]:
    """The loss curve as ``{"step", "tokens", "train_loss", "val_loss"}`` columns for the lineage.

    ``metrics.jsonl`` holds every logged row, but only while the folder exists; the lineage is what a
    descendant embeds, so ``lifecycle report`` can still draw an ancestor's curve after its folder is
    gone. Train-loss rows are thinned evenly to ``points`` (the last one always kept); every held-out
    evaluation is kept, as there are few. Losses are rounded to 5 significant digits.
    """
    def num(value: Any) -> float | None:
        return float(f"{value:.5g}") if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    train = [r for r in rows if num(r.get("train_loss")) is not None]
    stride = max(1, -(-len(train) // points))
    keep = {id(r) for r in train[::stride]} | ({id(train[-1])} if train else set())
    kept = [r for r in rows if id(r) in keep or num(r.get("val_loss")) is not None]
    return {
        "step": [r.get("step") for r in kept],
        "tokens": [r.get("tokens") for r in kept],
        "train_loss": [num(r.get("train_loss")) if id(r) in keep else None for r in kept],
        "val_loss": [num(r.get("val_loss")) for r in kept],
    }


def finish_run(
    model: Any,
    tokenizer: Any,
    output: str | Path,
    lineage: dict,
    *,
    overwrite: bool,
    eval_after: EvalAfter | None = None,
    result: Any = None,
    history: list[dict] | None = None,
    extra_files: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    plot_title: str | None = None,
) -> Path:
    """Evaluate (optional), write the checkpoint atomically with its card, loss curve and metrics.

    ``result`` is a :class:`~lifecycle.train.engine.TrainResult` (its metrics go into the lineage and
    its history into ``metrics.jsonl`` / ``loss.png``); ``history`` gives rows without a result.
    ``extra_files`` maps file names to text, bytes or JSON-able values; ``write_extra(folder)`` writes
    anything else into the temporary folder before the reload check.
    """
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import plot_loss_curve

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
            include_path=eval_after.include_path,
        )
        report.print_table()
        scores, settings = report.scores, report.settings
    lineage = dict(lineage)
    if scores:
        from lifecycle.model.card import add_eval_record

        lineage = add_eval_record(lineage, scores, settings)
    if result is not None:
        lineage.setdefault("metrics", {}).update({
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "final_train_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "seconds": round(result.seconds, 1),
        })
    rows = history if history is not None else (result.history if result is not None else [])
    if rows:
        lineage["curve"] = compact_curve(rows)

    def extra(tmp: Path) -> None:
        if rows:
            with open(tmp / "metrics.jsonl", "w") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
            plot_loss_curve(rows, tmp / "loss.png", title=plot_title or f"{lineage.get('command')}: {Path(output).name}")
        if scores:  # the same headline as the card (lifecycle.eval.harness.results_document)
            document = {"scores": lineage.get("eval", {}), "settings": lineage.get("eval_settings", {}),
                        "records": lineage.get("eval_records", [])}
            (tmp / "eval_results.json").write_text(json.dumps(document, indent=2, default=str))
        if extra_files:
            _write_extra_files(tmp, extra_files)
        if write_extra is not None:
            write_extra(tmp)

    return save_checkpoint(model, tokenizer, output, lineage=lineage, overwrite=overwrite, write_extra=extra)


__all__ = ["CURVE_POINTS", "compact_curve", "default_run_dir", "finish_run"]
