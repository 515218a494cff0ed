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


def tidy_run_dir(run_dir: str | Path, mode: str = "tidy", *, resumable: bool) -> None:
    """The run folder of a finished output, as ``run_folder`` (``--keep-run`` / ``--clean``) says.

    ``keep``: left as the run left it. ``clean``: removed. ``tidy`` (the default) keeps only what
    resuming and auditing need: the newest complete ``checkpoints/step-N`` of each training run in it,
    when ``resumable`` (the command can extend a finished run with a longer ``train.steps``), and
    tracker logs (``logs/``, from ``train.report_to``); metrics rows, older checkpoints, intermediate
    models and method state are in the output or no longer needed. An emptied folder is removed.
    """
    import shutil

    run_dir = Path(run_dir)
    if mode == "keep" or not run_dir.is_dir():
        return
    if mode == "clean":
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    keep: set[Path] = {logs for logs in run_dir.rglob("logs") if logs.is_dir() and any(logs.iterdir())}
    if resumable:
        for folder in run_dir.rglob("checkpoints"):
            steps = [p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()]
            if steps:
                keep.add(max(steps, key=lambda p: int(p.name.split("-")[1])))

    def prune(folder: Path) -> None:
        for child in folder.iterdir():
            if child in keep:
                continue
            if child.is_dir() and not child.is_symlink() and any(k.is_relative_to(child) for k in keep):
                prune(child)
            elif child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    if keep:
        prune(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


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
    ignore = {"resume", "resume_strict", "overwrite", "run_folder"}  # none of these changes the result
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


def _find_number(tree: Any, key: str) -> float | None:
    """``tree[key]``, else the first ``key`` found in a nested dict (prune's ``recovery``, quantize's ``training``)."""
    if not isinstance(tree, dict):
        return None
    value = tree.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    for child in tree.values():
        found = _find_number(child, key)
        if found is not None:
            return found
    return None


def summary_lines(output: str | Path, seconds: float | None = None) -> list[str]:
    """What a finished command wrote, read back from the folder so every command says it alike:
    the path, command and method, parameters and bytes on disk, tokens seen, the final held-out loss,
    continual metrics and the card's headline lm-eval scores, each only where there is one.

    ``output`` may also be a file (``lifecycle eval`` of a Hub model writes only its results JSON).
    """
    from lifecycle.display import count, duration, number, short_count, size
    from lifecycle.model.card import headline_scores, read_lineage

    out = Path(output).expanduser()
    took = f" in {duration(seconds)}" if seconds is not None else ""
    if not out.is_dir():
        return [f"wrote {out}{took}"]
    try:
        lineage = read_lineage(out)
    except (OSError, ValueError):
        lineage = {}
    what = " ".join(str(p) for p in (lineage.get("command"), lineage.get("method")) if p)
    lines = [f"wrote {out}" + (f" ({what})" if what else "") + took]
    rows: list[tuple[str, str]] = []
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    try:
        from lifecycle.model.inspect import inspect_model

        params = inspect_model(str(out), check_architecture=False).num_parameters
    except Exception:  # noqa: BLE001 - an adapter folder, an unusual layout: the summary goes on without it
        params = None
    rows.append(("parameters", (f"{short_count(params)} ({count(params)}), " if params else "") + f"{size(disk)} on disk"))
    if lineage.get("tokens_seen"):
        rows.append(("tokens seen", count(lineage["tokens_seen"])))
    metrics = lineage.get("metrics") or {}
    val = _find_number(metrics, "final_val_loss")
    if val is not None:
        train_loss = _find_number(metrics, "final_train_loss")
        rows.append(("held-out loss", number(val, 3) + (f" (train {number(train_loss, 3)})" if train_loss is not None else "")))
    continual = [f"{k} {number(metrics[k], 3)}" for k in ("AA", "BWT", "FWT") if isinstance(metrics.get(k), (int, float))]
    if continual:
        rows.append(("continual", ", ".join(continual)))
    scores = []
    for task, task_scores in headline_scores(lineage).items():
        for metric, value in (task_scores.items() if isinstance(task_scores, dict) else []):
            if metric.endswith("_stderr") or metric == "alias" or not isinstance(value, (int, float)):
                continue
            err = task_scores.get(f"{metric}_stderr")
            scores.append(f"{task} {metric} {number(value, 3)}" + (f" ± {number(err, 3)}" if isinstance(err, (int, float)) else ""))
    if scores:
        rows.append(("scores", "; ".join(scores)))
    width = max(len(label) for label, _ in rows)
    return lines + [f"  {label.ljust(width)}  {text}" for label, text in rows]


def print_summary(output: str | Path, seconds: float | None = None, console: Any = None) -> None:
    """The last thing every command prints (main process only): :func:`summary_lines` on stdout."""
    from lifecycle.display import is_main_process

    if not is_main_process():
        return
    if console is None:
        from rich.console import Console

        console = Console(soft_wrap=True)
    for line in summary_lines(output, seconds):
        console.print(line, markup=False, highlight=False)


__all__ = ["CURVE_POINTS", "compact_curve", "default_run_dir", "finish_run", "print_summary", "summary_lines", "tidy_run_dir"]
