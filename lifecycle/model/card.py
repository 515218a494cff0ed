"""Model cards that record where a checkpoint came from and how it scores.

Every checkpoint carries two files: ``lifecycle.json`` (the machine-readable lineage) and
``README.md`` (the Hub model card: YAML front matter with ``base_model``, ``tags`` and a
``model-index`` of lm-eval results, then a human-readable body). The card is always re-rendered
from the lineage, so the two never disagree.

Lineage fields (all optional): ``command``, ``method``, ``parents`` (list of model specs),
``base_model``, ``base_model_relation``, ``recipe`` (resolved options), ``recipe_hash``, ``data``,
``tokens_seen``, ``seed``, ``versions``, ``metrics``, ``eval`` (task → metric → value), ``history``
(the parents' lineage, newest first).
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
from pathlib import Path
from typing import Any

import yaml

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


def _front_matter(lineage: dict) -> dict:
    tags = ["lifecycle"]
    if lineage.get("command"):
        tags.append(f"lifecycle-{lineage['command']}")
    if lineage.get("method"):
        tags.append(str(lineage["method"]))
    meta: dict[str, Any] = {"library_name": "transformers", "tags": tags}
    base = lineage.get("base_model")
    # Only Hub ids make sense as base_model on the Hub; local paths are kept in the body.
    if _is_hub_id(base):
        meta["base_model"] = base
        if lineage.get("base_model_relation") in HUB_RELATIONS:
            meta["base_model_relation"] = lineage["base_model_relation"]
    results = []
    for task, metrics in (lineage.get("eval") or {}).items():
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
    for key in ("parents", "base_model", "recipe_hash", "seed", "tokens_seen", "data"):
        value = lineage.get(key)
        if value not in (None, [], {}, ""):
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"| {key} | `{_cell(shown)}` |")
    for step, entry in enumerate(lineage.get("history", []), start=1):
        lines.append(f"| ancestor {step} | `{entry.get('command')}` ({entry.get('method') or '-'}) from {entry.get('parents')} |")
    if lineage.get("eval"):
        lines.append("\n## Evaluation (lm-eval)\n")
        lines.append("| task | metric | value |\n|---|---|---|")
        for task, metrics in lineage["eval"].items():
            if not isinstance(metrics, dict):
                continue
            for metric, value in metrics.items():
                if _is_stderr(metric) or metric == "alias":
                    continue
                err = metrics.get(_stderr_key(metric))
                shown = f"{value:.4f}" if _is_score(value) else _cell(str(value))
                if _is_score(err):
                    shown += f" ± {err:.4f}"
                lines.append(f"| {task} | {metric} | {shown} |")
        if lineage.get("eval_settings"):
            lines.append(f"\nSettings: `{json.dumps(lineage['eval_settings'], default=str)}`")
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


def record_eval(folder: str | Path, scores: dict[str, dict[str, float]], settings: dict | None = None) -> None:
    """Merge lm-eval scores into a checkpoint's lineage and re-render its card (atomic per file).

    Scores are merged per task: a task evaluated again replaces its old numbers, other tasks stay.
    Both texts are rendered before either file is replaced, so a rendering error leaves both as they were.
    """
    folder = Path(folder)
    lineage = read_lineage(folder)
    lineage["eval"] = {**(lineage.get("eval") or {}), **_plain(scores)}
    if settings:
        lineage["eval_settings"] = _plain(settings)
    lineage_text = json.dumps(lineage, indent=2, default=str)
    card_text = render_model_card(lineage)
    _write_atomic(folder / LINEAGE_FILE, lineage_text)
    _write_atomic(folder / "README.md", card_text)
