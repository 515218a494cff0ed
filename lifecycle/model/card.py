"""Model cards that record where a checkpoint came from and how it scores.

Every checkpoint carries two files: ``lifecycle.json`` (the machine-readable lineage) and
``README.md`` (the Hub model card: YAML front matter with ``base_model``, ``tags`` and a
``model-index`` of lm-eval results, then a human-readable body). The card is always re-rendered
from the lineage, so the two never disagree.

Lineage fields (all optional): ``command``, ``method``, ``parents`` (list of model specs),
``base_model``, ``base_model_relation``, ``recipe`` (resolved options), ``recipe_hash``, ``data``,
``tokens_seen``, ``seed``, ``versions``, ``metrics``, ``eval_records``, ``eval``, ``eval_settings``,
``curve`` (the loss curve, thinned: :func:`lifecycle.finish.compact_curve`), ``prune_plan`` (per-layer
widths before and after pruning), ``merge`` (a merge's parents and weights), ``history`` (the parents'
lineage, newest first). ``lifecycle report`` draws all of these, for ancestors too.

Evaluations: every lm-eval run is kept, with its own settings, as one entry of ``eval_records``
(:func:`add_eval_record`). ``eval`` (task → metric → value) and ``eval_settings`` are the *headline*
derived from them: per task, the record that scored the most items (``n_samples``), the newer one
on a tie, so a ``--limit 3`` spot check never hides a 100-item result unless it is recorded with
``replace=True``. Lineages written before records existed (only ``eval``/``eval_settings``) still
render, and are converted to records the first time a new evaluation is added.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from lifecycle.display import number

LINEAGE_FILE = "lifecycle.json"

_HIGHER_IS_BETTER_HINT = ("perplexity", "bits_per_byte", "loss")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a result, for the card."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("lifecycle", "torch", "transformers", "accelerate", "peft", "lm_eval", "datasets", "deepspeed"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def options_hash(options: Any) -> str:
    """A short stable hash of a JSON-serialisable options dict."""
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# base_model_relation values the Hub accepts; anything else (e.g. "grow") stays out of the metadata.
HUB_RELATIONS = ("adapter", "merge", "quantized", "finetune")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _is_hub_id(spec: Any) -> bool:
    """``namespace/name`` as the Hub spells repo ids; local paths (absolute, ``./``, ``~``) are not."""
    return (
        isinstance(spec, str)
        and bool(_HUB_ID.match(spec))
        and ".." not in spec
        and "--" not in spec
        and not spec.endswith((".", "-"))
    )


def _json_default(obj: Any) -> Any:
    """numpy/torch scalars become numbers (not strings); anything else (Path, enum, ...) its str."""
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def _plain(value: Any) -> Any:
    """JSON-able copy of ``value`` so yaml.safe_dump and json never fail on it."""
    return json.loads(json.dumps(value, default=_json_default))


def _split_metric(key: str) -> tuple[str, str]:
    """lm-eval keys look like ``acc,none``: return (metric, filter suffix including the comma)."""
    name, comma, flt = str(key).partition(",")
    return name, comma + flt


def _is_stderr(key: str) -> bool:
    return _split_metric(key)[0].endswith("_stderr")


def _stderr_key(key: str) -> str:
    name, flt = _split_metric(key)
    return f"{name}_stderr{flt}"


def _metric_entry(task: str, key: str, value: float) -> dict:
    """model-index metric: lm-eval's default filter (``,none``) is dropped, others stay in the name."""
    metric, flt = _split_metric(key)
    label = f"{task} {metric}" + (f" ({flt[1:]})" if flt and flt != ",none" else "")
    return {"type": metric, "value": round(float(value), 6), "name": label}


def _is_score(value: Any) -> bool:
    """A finite number (bools and NaN are not scores the Hub can show)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_lineage(
    *,
    command: str,
    method: str | None = None,
    parents: list[str] | None = None,
    parent_lineages: list[dict] | None = None,
    options: dict | None = None,
    seed: int | None = None,
    data: Any = None,
    tokens_seen: int | None = None,
    relation: str | None = None,
) -> dict:
    """Lineage for a new checkpoint; parents' own lineage goes into ``history``.

    Parents that exist on disk are recorded as absolute paths, so that a relative folder such as
    ``runs/base`` is never mistaken for the Hub id ``runs/base`` when the card is rendered.
    """
    parents = [_resolve_parent(p) for p in (parents or [])]
    history: list[dict] = []
    for parent_lineage in parent_lineages or []:
        if parent_lineage:
            entry = {k: v for k, v in parent_lineage.items() if k != "history"}
            history.append(entry)
            history.extend(parent_lineage.get("history", []))
    base = None
    for parent_lineage in parent_lineages or []:
        if parent_lineage and parent_lineage.get("base_model"):
            base = parent_lineage["base_model"]
            break
    if base is None and parents:
        base = parents[0]
    return {
        "command": command,
        "method": method,
        "parents": parents,
        "base_model": base,
        "base_model_relation": relation,
        "options": options or {},
        "recipe_hash": options_hash(options or {}),
        "seed": seed,
        "data": data,
        "tokens_seen": tokens_seen,
        "versions": package_versions(),
        "eval": {},
        "history": history,
    }


def _resolve_parent(spec: Any) -> str:
    text = str(spec)
    try:
        local = Path(text).expanduser()
        if local.exists():
            return str(local.resolve())
    except OSError:
        pass
    return text


def read_lineage(folder: str | Path) -> dict:
    """The checkpoint's ``lifecycle.json``, or ``{}`` for folders made elsewhere."""
    path = Path(folder) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _hub_bases(lineage: dict) -> list[str]:
    """The Hub ids for ``base_model``: the lineage's base, or for a merge every model it came from.

    A merge lists its parents that are Hub ids, and for local parents the Hub models they descend from
    (their ancestors' ``base_model``), so the Hub's model tree shows every side of the merge; the Hub
    takes a list there. Any other command has one base.
    """
    if lineage.get("base_model_relation") != "merge":
        base = lineage.get("base_model")
        return [base] if _is_hub_id(base) else []
    found = [*(lineage.get("parents") or []), lineage.get("base_model")]
    found += [entry.get("base_model") for entry in lineage.get("history") or [] if isinstance(entry, dict)]
    return list(dict.fromkeys(spec for spec in found if _is_hub_id(spec)))


def _front_matter(lineage: dict) -> dict:
    tags = ["lifecycle"]
    if lineage.get("command"):
        tags.append(f"lifecycle-{lineage['command']}")
    if lineage.get("method"):
        tags.append(str(lineage["method"]))
    meta: dict[str, Any] = {"library_name": "transformers", "tags": tags}
    base = _hub_bases(lineage)
    # Only Hub ids make sense as base_model on the Hub; local paths are kept in the body.
    if base:
        meta["base_model"] = base if len(base) > 1 else base[0]
        if lineage.get("base_model_relation") in HUB_RELATIONS:
            meta["base_model_relation"] = lineage["base_model_relation"]
    results = []
    for task, metrics in headline_scores(lineage).items():
        if not isinstance(metrics, dict):
            continue
        entries = [
            _metric_entry(str(task), str(metric), value)
            for metric, value in metrics.items()
            if not _is_stderr(metric) and _is_score(value)
        ]
        if entries:  # one result per task, all its metrics together
            results.append({"task": {"type": "text-generation"}, "dataset": {"name": str(task), "type": str(task)}, "metrics": entries})
    if results:
        meta["model-index"] = [{"name": lineage.get("name") or "lifecycle-model", "results": results}]
    return meta


def _cell(text: str) -> str:
    """Keep a value inside its markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_model_card(lineage: dict) -> str:
    """The README.md text: Hub front matter (tags, base_model, model-index) and a readable body."""
    front = yaml.safe_dump(_front_matter(lineage), sort_keys=False).strip()
    lines = [f"---\n{front}\n---", ""]
    title = lineage.get("name") or f"lifecycle {lineage.get('command') or 'model'}"
    lines.append(f"# {title}\n")
    what = lineage.get("method") or lineage.get("command") or "unknown"
    lines.append(f"Made with lifecycle `{lineage.get('command', '?')}` ({what}).\n")
    lines.append("## Lineage\n")
    lines.append("| field | value |\n|---|---|")
    for key in ("parents", "base_model", "recipe_hash", "seed", "tokens_seen", "data", "merge"):
        value = lineage.get(key)
        if value not in (None, [], {}, ""):
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"| {key} | `{_cell(shown)}` |")
    for step, entry in enumerate(lineage.get("history", []), start=1):
        lines.append(f"| ancestor {step} | `{entry.get('command')}` ({entry.get('method') or '-'}) from {entry.get('parents')} |")
    lines.extend(_eval_section(lineage))
    if lineage.get("metrics"):
        lines.append("\n## Training metrics\n")
        lines.append("```json\n" + json.dumps(lineage["metrics"], indent=2, default=str) + "\n```")
    lines.append("\n## Options\n")
    lines.append("```yaml\n" + yaml.safe_dump(_plain(lineage.get("options") or {}), sort_keys=True).strip() + "\n```")
    if lineage.get("versions"):
        lines.append("\n## Versions\n")
        lines.append(", ".join(f"{k} {v}" for k, v in lineage["versions"].items()))
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, lineage: dict) -> None:
    _write_atomic(Path(folder) / "README.md", render_model_card(lineage))


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask has to set one)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    """Write via a unique temp file in the same folder + rename: readers never see half a file,
    and two writers never share a temp name.

    mkstemp creates its file 0600; the result gets the replaced file's mode instead, or for a new
    file what a plain ``open(path, "w")`` would give (0666 less the umask).
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


write_text_atomic = _write_atomic


# --------------------------------------------------------------------------------------------------
# evaluation records and the headline derived from them

# Always present in a record (None when unknown), in this order; any other settings follow.
EVAL_RECORD_FIELDS = ("date", "tasks", "limit", "n_samples", "num_fewshot", "batch_size", "max_length", "lm_eval_version")
_RECORD_META = ("scores", "replace", "legacy")


def utc_now() -> str:
    """The record date: UTC, to the second, ISO 8601 (``2026-01-31T12:00:00Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_eval_record(
    scores: dict[str, dict[str, float]], settings: dict | None = None, *, replace: bool = False, date: str | None = None
) -> dict:
    """One evaluation as stored in ``eval_records``: its settings, the UTC date and its scores."""
    scores = _plain(scores or {})
    settings = _plain(settings or {})
    record: dict[str, Any] = {key: settings.get(key) for key in EVAL_RECORD_FIELDS}
    record["date"] = date or settings.get("date") or utc_now()
    record["tasks"] = list(settings.get("tasks") or scores)
    record["n_samples"] = dict(settings.get("n_samples") or {})
    for key, value in settings.items():
        if key not in record and key not in _RECORD_META:
            record[key] = value
    if replace:
        record["replace"] = True
    record["scores"] = scores
    return record


def _legacy_records(lineage: dict) -> list[dict]:
    """Records for a lineage that only has ``eval``/``eval_settings`` (written before records, or by
    ``finish_run``): the settings apply to the tasks they name, the other tasks get a record of their own."""
    scores = lineage.get("eval")
    if not isinstance(scores, dict) or not scores:
        return []
    settings = lineage.get("eval_settings") if isinstance(lineage.get("eval_settings"), dict) else {}
    named = set(settings.get("tasks") or []) | set(settings.get("n_samples") or {})
    covered = {t: m for t, m in scores.items() if not named or t in named} if settings else {}
    others = {t: m for t, m in scores.items() if t not in covered}
    records = []
    if others:
        records.append({**make_eval_record(others), "date": None, "legacy": True})
    if covered:
        record = make_eval_record(covered, {**settings, "tasks": list(covered)})
        records.append({**record, "date": settings.get("date"), "legacy": True})
    return records


def eval_records(lineage: dict) -> list[dict]:
    """The lineage's evaluations, oldest first (legacy ``eval`` keys converted, see :func:`_legacy_records`)."""
    records = lineage.get("eval_records")
    if isinstance(records, list) and records:
        return [r for r in records if isinstance(r, dict) and isinstance(r.get("scores"), dict)]
    return _legacy_records(lineage)


def _items(record: dict, task: str) -> int | float:
    n = (record.get("n_samples") or {}).get(task)
    return n if _is_score(n) else -1  # an unknown count loses to any known one


def headline_records(records: list[dict]) -> dict[str, int]:
    """Task → index of the record whose scores are the headline: the most items scored, the newer
    record on a tie; a record with ``replace`` takes the headline of its tasks whatever it scored."""
    best: dict[str, int] = {}
    for index, record in enumerate(records):
        for task in record.get("scores") or {}:
            if task not in best or record.get("replace") or _items(record, task) >= _items(records[best[task]], task):
                best[task] = index
    return best


def _headline(lineage: dict) -> dict[str, tuple[Any, dict]]:
    """Task → (metrics, record they come from); tasks of ``eval`` that no record holds come last."""
    records = eval_records(lineage)
    best = headline_records(records)
    out = {task: (records[i]["scores"][task], records[i]) for task, i in best.items()}
    scores = lineage.get("eval")
    if isinstance(scores, dict):
        for task, metrics in scores.items():
            out.setdefault(task, (metrics, {}))
    return out


def headline_scores(lineage: dict) -> dict[str, Any]:
    """The scores the card shows: task → metrics from each task's headline record."""
    return {task: metrics for task, (metrics, _) in _headline(lineage).items()}


def headline_settings(records: list[dict]) -> dict:
    """``eval_settings``: the headline record's settings when one record holds every headline (the usual
    case); otherwise ``tasks``, ``n_samples`` per task, and each other setting as one value where the
    headline records agree, or as ``{task: value}`` where they differ."""
    best = headline_records(records)
    if not best:
        return {}
    chosen = {task: records[i] for task, i in best.items()}
    if len(set(best.values())) == 1:
        record = next(iter(chosen.values()))
        return {k: v for k, v in record.items() if k not in _RECORD_META}
    settings: dict[str, Any] = {"tasks": list(chosen)}
    settings["n_samples"] = {t: (r.get("n_samples") or {}).get(t) for t, r in chosen.items()}
    keys: list[str] = []
    for record in chosen.values():
        keys.extend(k for k in record if k not in keys and k not in _RECORD_META and k not in ("tasks", "n_samples"))
    for key in keys:
        if key == "task_versions":
            settings[key] = {t: (r.get(key) or {}).get(t) for t, r in chosen.items()}
            continue
        values = {t: r.get(key) for t, r in chosen.items()}
        distinct = {json.dumps(v, sort_keys=True, default=str) for v in values.values()}
        settings[key] = next(iter(values.values())) if len(distinct) == 1 else values
    return settings


def add_eval_record(
    lineage: dict, scores: dict[str, dict[str, float]], settings: dict | None = None, replace: bool = False,
    *, date: str | None = None,
) -> dict:
    """A copy of ``lineage`` with this evaluation appended to ``eval_records`` and the headline keys
    (``eval``, ``eval_settings``) recomputed from all records.

    ``settings`` is what :func:`lifecycle.eval.evaluate` returns as ``report.settings`` (tasks, limit,
    n_samples, num_fewshot, batch_size, max_length, lm_eval_version, ...). ``replace=True`` makes these
    scores the headline of their tasks even if an earlier run scored more items. Commands that write a
    new checkpoint call this on its lineage instead of setting ``eval``/``eval_settings`` themselves.
    """
    out = dict(lineage)
    records = [dict(r) for r in eval_records(lineage)]
    records.append(make_eval_record(scores, settings, replace=replace, date=date))
    out["eval_records"] = records
    best = headline_records(records)
    out["eval"] = {task: records[i]["scores"][task] for task, i in best.items()}
    out["eval_settings"] = headline_settings(records)
    return out


def _shown(value: Any) -> str:
    return "-" if value in (None, "", [], {}) else _cell(str(value))


def _eval_section(lineage: dict) -> list[str]:
    """Card body: headline scores with the item count and date they come from, then every run."""
    headline = _headline(lineage)
    if not headline:
        return []
    has_records = isinstance(lineage.get("eval_records"), list) and bool(lineage["eval_records"])
    legacy_settings = lineage.get("eval_settings") if isinstance(lineage.get("eval_settings"), dict) else {}
    lines = ["\n## Evaluation (lm-eval)\n", "| task | metric | value | items | date (UTC) |\n|---|---|---|---|---|"]
    for task, (metrics, record) in headline.items():
        if not isinstance(metrics, dict):
            continue
        if not record and not has_records:  # old lineage: the one settings block
            record = legacy_settings
        n = (record.get("n_samples") or {}).get(task) if isinstance(record.get("n_samples"), dict) else None
        date = record.get("date")
        for metric, value in metrics.items():
            if _is_stderr(metric) or metric == "alias":
                continue
            err = metrics.get(_stderr_key(metric))
            shown = number(value) if _is_score(value) else _cell(str(value))
            if _is_score(err):
                shown += f" ± {number(err)}"
            lines.append(f"| {task} | {metric} | {shown} | {_shown(n)} | {_shown(date)} |")
    if has_records:
        records = eval_records(lineage)
        best = headline_records(records)
        lines.append("\nEvery evaluation of this checkpoint, oldest first; the headline of each task is its run with the most "
                     "items (the newer one on a tie, or one recorded with `replace`).\n")
        lines.append("| date (UTC) | items | limit | num_fewshot | batch_size | max_length | lm-eval | headline for |\n"
                     "|---|---|---|---|---|---|---|---|")
        for index, record in enumerate(records):
            n = record.get("n_samples") if isinstance(record.get("n_samples"), dict) else {}
            items = ", ".join(f"{t} {n.get(t) if n.get(t) is not None else '?'}" for t in record["scores"])
            heads = ", ".join(t for t, i in best.items() if i == index) or "-"
            if record.get("replace"):
                heads += " (replace)"
            lines.append(
                f"| {_shown(record.get('date'))} | {_shown(items)} | {_shown(record.get('limit'))} | "
                f"{_shown(record.get('num_fewshot'))} | {_shown(record.get('batch_size'))} | "
                f"{_shown(record.get('max_length'))} | {_shown(record.get('lm_eval_version'))} | {_cell(heads)} |"
            )
    elif legacy_settings:
        lines.append(f"\nSettings: `{json.dumps(legacy_settings, default=str)}`")
    return lines


def record_eval(
    folder: str | Path,
    scores: dict[str, dict[str, float]],
    settings: dict | None = None,
    *,
    replace: bool = False,
    extra: Callable[[dict], dict[str, str]] | None = None,
) -> dict:
    """Add one evaluation to a checkpoint's lineage and re-render its card (atomic per file).

    The run becomes a new entry of ``eval_records`` (see :func:`add_eval_record`); each task's
    headline is recomputed, so a re-evaluation on as many items or more replaces that task's numbers,
    a smaller one does not (unless ``replace``), and other tasks stay. ``extra(lineage)`` returns more
    files (name → text) to write into the folder from the new lineage, e.g. ``eval_results.json``.
    Every text is rendered before any file is replaced, so a rendering error leaves all as they were.
    Returns the new lineage.
    """
    folder = Path(folder)
    lineage = add_eval_record(read_lineage(folder), scores, settings, replace=replace)
    texts = {LINEAGE_FILE: json.dumps(lineage, indent=2, default=str), "README.md": render_model_card(lineage)}
    if extra is not None:
        texts.update(extra(lineage))
    for name, text in texts.items():
        _write_atomic(folder / name, text)
    return lineage
