"""What a report shows of one step, read from its lineage (and from its folder when that still exists).

Every reader returns None (or an empty value) when the step does not record the thing, so the report
leaves that section out rather than drawing an empty one. Lineages written before a record existed are
read from the files beside them: the loss curve from ``metrics.jsonl``, the pruning plan from
``prune_report.json``, the bit budget from ``quantize_report.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lifecycle.model.card import headline_scores
from lifecycle.report.collect import Step


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _find(data: Any, key: str) -> Any:
    """The first ``key`` in ``data``, breadth first (a top-level value wins over a nested one)."""
    level = [data]
    while level:
        for item in level:
            if isinstance(item, dict) and _number(item.get(key)) is not None:
                return item[key]
        level = [v for item in level if isinstance(item, dict) for v in item.values() if isinstance(v, dict)]
    return None


def _json_file(step: Step, name: str) -> dict:
    if step.folder is None or not (step.folder / name).is_file():
        return {}
    try:
        data = json.loads((step.folder / name).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


_CURVE_KEYS = ("step", "tokens", "train_loss", "val_loss")


def curve(step: Step) -> list[dict]:
    """Rows of ``step``, ``tokens``, ``train_loss``, ``val_loss`` (each may be None): the lineage's
    thinned curve, else the folder's whole ``metrics.jsonl``. Steps count on across the restarts of a
    step that trains several times (continual learning trains each task from step 1)."""
    recorded = step.lineage.get("curve")
    rows: list[dict] = []
    if isinstance(recorded, dict) and recorded.get("step"):
        columns = [recorded.get(k) or [None] * len(recorded["step"]) for k in _CURVE_KEYS]
        rows = [dict(zip(_CURVE_KEYS, values)) for values in zip(*columns)]
    elif step.folder is not None and (step.folder / "metrics.jsonl").is_file():
        for line in (step.folder / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append({k: row.get(k) for k in _CURVE_KEYS})
    offset, last = 0, None
    for row in rows:
        if _number(row["step"]) is None:
            continue
        if last is not None and row["step"] + offset <= last:
            offset = last
        row["step"] = last = row["step"] + offset
    return rows


def held_out_loss(step: Step) -> float | None:
    """The final held-out loss: as the metrics record it, else the curve's last held-out point."""
    found = _number(_find(step.metrics, "final_val_loss"))
    if found is not None:
        return found
    points = [r["val_loss"] for r in curve(step) if _number(r.get("val_loss")) is not None]
    return points[-1] if points else None


def train_loss(step: Step) -> float | None:
    return _number(_find(step.metrics, "final_train_loss"))


def seconds(step: Step) -> float | None:
    """The recipe's wall time for the step, else the training time the metrics record."""
    return step.seconds if _number(step.seconds) is not None else _number(_find(step.metrics, "seconds"))


def tokens_seen(step: Step) -> int | None:
    value = _number(step.lineage.get("tokens_seen"))
    return int(value) if value is not None else None


def size_on_disk(step: Step) -> int | None:
    """Bytes of the weight files, for a step whose folder exists."""
    if step.folder is None:
        return None
    sizes = [p.stat().st_size for p in step.folder.glob("*.safetensors")]
    return sum(sizes) if sizes else None


def parameters(step: Step) -> int | None:
    """Parameter count: as the metrics record it, else from the safetensors headers (packed BitNet
    weights hold 4 per byte). Tied weights are stored once and counted once."""
    after = step.metrics.get("params_after")
    if isinstance(after, dict) and _number(after.get("total")) is not None:
        return int(after["total"])
    if step.folder is None or not list(step.folder.glob("*.safetensors")):
        return None
    from lifecycle.model.files import read_safetensors_header

    config = _json_file(step, "config.json")
    packed = (config.get("quantization_config") or {}).get("quant_method") == "bitnet"
    total = 0
    try:
        for path in step.folder.glob("*.safetensors"):
            for header in read_safetensors_header(path).values():
                count = math.prod(header.shape)
                total += count * 4 if packed and header.dtype == "U8" else count
    except Exception:  # a count is a nicety; an unreadable file is the model loader's to report
        return None
    return total


def scores(step: Step) -> dict[str, float]:
    """lm-eval headline scores as ``"task metric"`` → value (no stderr, aliases or non-numbers)."""
    out: dict[str, float] = {}
    for task, metrics in headline_scores(step.lineage).items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            name, _, flt = str(key).partition(",")
            if name.endswith("_stderr") or name == "alias" or _number(value) is None:
                continue
            out[f"{task} {name}" + (f" ({flt})" if flt and flt != "none" else "")] = float(value)
    return out


def prune_plan(step: Step) -> dict | None:
    """``{"before": widths, "after": widths, "drop_layers": [...]}``; widths map ``intermediate_size``,
    ``num_key_value_heads``, ``num_attention_heads`` to a list per layer. ``before`` may be absent."""
    plan = step.lineage.get("prune_plan")
    if isinstance(plan, dict) and isinstance(plan.get("after"), dict):
        return plan
    if step.command != "prune":
        return None
    report = _json_file(step, "prune_report.json")
    shapes = report.get("layer_shapes")
    return {"before": report.get("layer_shapes_before"), "after": shapes, "drop_layers": []} if isinstance(shapes, dict) else None


def bit_budget(step: Step) -> list[dict] | None:
    """Rows of ``part``, ``params``, ``bits``, ``stored_bits`` (see
    :func:`lifecycle.methods.quantize.pipeline.bit_budget`)."""
    budget = step.metrics.get("bit_budget")
    if not isinstance(budget, list) and step.command == "quantize":
        budget = _json_file(step, "quantize_report.json").get("bit_budget")
    return budget if isinstance(budget, list) and budget else None


def accuracy_matrix(step: Step) -> dict | None:
    """A continual step's matrix: ``tasks``, ``rows`` (after training task i, accuracy on task j),
    ``zero_shot`` and the summary numbers (AA, BWT, FWT, forgetting) it recorded."""
    rows = step.metrics.get("accuracy_matrix")
    tasks = step.metrics.get("tasks")
    if not isinstance(rows, list) or not rows or not isinstance(tasks, list):
        return None
    summary = {k: step.metrics.get(k) for k in ("AA", "BWT", "FWT", "forgetting") if _number(step.metrics.get(k)) is not None}
    return {"tasks": [str(t) for t in tasks], "rows": rows, "zero_shot": step.metrics.get("zero_shot"), "summary": summary}


def merge_parents(step: Step) -> list[dict] | None:
    """A merge's parents with their weights and other per-model parameters, as the merge recorded them."""
    merge = step.lineage.get("merge")
    parents = merge.get("parents") if isinstance(merge, dict) else None
    if not isinstance(parents, list) or not parents:
        return None
    return [p if isinstance(p, dict) else {"model": str(p)} for p in parents]


def merge_settings(step: Step) -> dict:
    """The merge's other settings (method, base model, dtype, ...), scalars only."""
    merge = step.lineage.get("merge")
    if not isinstance(merge, dict):
        return {}
    return {k: v for k, v in merge.items() if k != "parents" and isinstance(v, (str, int, float)) and v != ""}


__all__ = ["accuracy_matrix", "bit_budget", "curve", "held_out_loss", "merge_parents", "merge_settings", "parameters",
           "prune_plan", "scores", "seconds", "size_on_disk", "tokens_seen", "train_loss"]
