"""The lm-eval task files lifecycle runs: its own offline tasks, rendered with absolute data paths,
and the user's own task folders (``--include-path``), with name checks before any model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir, shared_data_dir

TEMPLATE_DIR = Path(__file__).resolve().parent / "tasks"
_DATA_PLACEHOLDER = "@EVAL_DATA@"
_WIKITEXT_PLACEHOLDER = "@WIKITEXT_JSONL@"
_WIKITEXT_SOURCE = "wikitext2_raw_test.txt"
_WIKITEXT_FORMAT = "v1"  # bump when the splitting below changes, so cached conversions are redone
_DATA_FILE_RE = re.compile(r'\w+:\s*"' + re.escape(_DATA_PLACEHOLDER) + r'/([^"]+)"')  # any split's file



# --------------------------------------------------------------------------------------------------
# tasks


def local_task_names() -> list[str]:
    """Names of the tasks defined by lifecycle (one template per task in ``tasks/``)."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def parse_task_list(tasks: str | Iterable[str]) -> list[str]:
    """``"arc_easy, lambada"`` or ``["arc_easy", "lambada,copa"]`` -> unique names, order kept."""
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def _default_eval_dir() -> Path:
    return shared_data_dir() / "eval"


def _split_wikitext(text: str) -> list[dict[str, str]]:
    """One document per top-level ``= Title =`` header; second-level ``= = x = =`` headers stay inside."""
    header = re.compile(r"^ ?= [^=].* = ?$")
    docs: list[dict[str, str]] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if header.match(line.rstrip("\n")) and current:
            docs.append(current)
            current = []
        current.append(line)
    if current:
        docs.append(current)
    out = []
    for lines in docs:
        page = "".join(lines)
        if page.strip():
            out.append({"title": lines[0].strip().strip("=").strip(), "page": page})
    return out


def wikitext_jsonl(source: Path) -> Path:
    """Convert the raw WikiText file to one-article-per-line jsonl in the cache (keyed by content hash)."""
    data = source.read_bytes()
    key = hashlib.sha256(data + _WIKITEXT_FORMAT.encode()).hexdigest()[:16]
    target = cache_dir() / "eval" / f"{source.stem}-{key}.jsonl"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            for doc in _split_wikitext(data.decode("utf-8")):
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    return target


def _yaml_string(value: str) -> str:
    # The placeholders sit inside double-quoted YAML strings; JSON escaping is valid there.
    return json.dumps(value)[1:-1]


def render_tasks(dest: str | Path, eval_dir: str | Path | None = None) -> Path:
    """Write every local task YAML into ``dest`` with absolute data paths; returns ``dest``.

    ``eval_dir`` is the folder holding the benchmark files (default: ``<shared data>/eval``). The
    WikiText article split is written to the cache only when its source file exists.
    """
    eval_path = Path(eval_dir).expanduser().resolve() if eval_dir else _default_eval_dir()
    if not eval_path.is_dir():
        raise LifecycleError(f"benchmark folder not found: {eval_path}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wikitext_source = eval_path / _WIKITEXT_SOURCE
    wikitext = str(wikitext_jsonl(wikitext_source)) if wikitext_source.is_file() else str(wikitext_source)
    for template in sorted(TEMPLATE_DIR.glob("*.yaml")):
        lines = []
        for line in template.read_text().splitlines(keepends=True):
            if not line.lstrip().startswith("#"):  # comments keep naming the placeholders
                line = line.replace(_DATA_PLACEHOLDER, _yaml_string(str(eval_path)))
                line = line.replace(_WIKITEXT_PLACEHOLDER, _yaml_string(wikitext))
            lines.append(line)
        (dest / template.name).write_text("".join(lines))
    return dest


@contextlib.contextmanager
def rendered_tasks(eval_dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary include folder with the rendered local tasks, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-eval-tasks-") as tmp:
        yield render_tasks(tmp, eval_dir)


def _group_members(template: str) -> list[str]:
    """The task names a local group template lists (``group: x`` with ``task: [a, b]``), else []."""
    doc = yaml.safe_load(template) if re.search(r"^group:", template, re.M) else None
    tasks = doc.get("task") if isinstance(doc, dict) else None
    return [t for t in tasks if isinstance(t, str)] if isinstance(tasks, list) else []


def _check_data_files(names: list[str], eval_dir: Path) -> None:
    for name in names:
        template = (TEMPLATE_DIR / f"{name}.yaml").read_text()
        members = [m for m in _group_members(template) if (TEMPLATE_DIR / f"{m}.yaml").is_file()]
        if members:  # a group needs its members' files
            _check_data_files(members, eval_dir)
            continue
        needed = _DATA_FILE_RE.findall(template)
        if _WIKITEXT_PLACEHOLDER in template:
            needed.append(_WIKITEXT_SOURCE)
        for file in needed:
            if not (eval_dir / file).is_file():
                raise LifecycleError(f"task {name}: data file {eval_dir / file} not found")


def _mentioned_in_builtin_tasks(name: str) -> bool:
    """Cheap pre-check (~1 s) before indexing lm-eval's 14k builtin YAMLs (~7 s) for a name."""
    import lm_eval.tasks

    needle = name.encode()
    root = Path(lm_eval.tasks.__file__).parent
    for path in root.rglob("*.yaml"):
        try:
            if needle in path.read_bytes():
                return True
        except OSError:
            continue
    return False


def _unknown_task_error(unknown: list[str]) -> LifecycleError:
    return LifecycleError(
        f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
        f"local tasks: {', '.join(local_task_names())} (or any lm-eval task name when online)"
    )


class _TaglessLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs without running their ``!function`` tags."""


_TaglessLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def user_task_names(include_path: str | Path) -> list[str]:
    """Task and group names defined by the lm-eval YAMLs under ``include_path`` (lm-eval's --include_path)."""
    root = Path(include_path).expanduser()
    if not root.is_dir():
        raise LifecycleError(f"include path {root} is not a folder of lm-eval task YAMLs")
    names: set[str] = set()
    for path in sorted(root.rglob("*.yaml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaglessLoader)
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise LifecycleError(f"task file {path} cannot be read: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            continue
        for key in ("task", "group", "tag"):
            value = doc.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    names.add(item)
    if not names:
        raise LifecycleError(f"include path {root} defines no lm-eval task (no YAML with a 'task:' key)")
    return sorted(names)


def check_task_names(tasks: str | Iterable[str], include_path: str | Path | None = None) -> list[str]:
    """Fail fast (before a model is loaded) on names that are neither local, the user's, nor lm-eval's."""
    names = parse_task_list(tasks)
    if not names:
        raise LifecycleError("no tasks given; local tasks: " + ", ".join(local_task_names()))
    known = set(local_task_names()) | (set(user_task_names(include_path)) if include_path else set())
    unknown = [n for n in names if n not in known and not _mentioned_in_builtin_tasks(n)]
    if unknown:
        raise _unknown_task_error(unknown)
    return names


def task_manager_for(names: list[str], include_dir: Path, include_path: str | Path | None = None) -> Any:
    """A TaskManager that knows ``names``: local and user tasks only (fast), or with lm-eval's index.

    Local tasks shadow builtin ones of the same name (``arc_easy`` is always ours) because lm-eval
    indexes ``include_path`` after its defaults; the user's folder comes last, so it shadows both.
    """
    from lm_eval.tasks import TaskManager

    paths = [str(include_dir)]
    local = set(local_task_names())
    if include_path:
        paths.append(str(Path(include_path).expanduser().resolve()))
        local |= set(user_task_names(include_path))
    others = [n for n in names if n not in local]
    if not others:
        return TaskManager(include_path=paths, include_defaults=False)
    manager = TaskManager(include_path=paths, include_defaults=True)
    unknown = [n for n in others if n not in manager.all_tasks]
    if unknown:
        raise _unknown_task_error(unknown)
    return manager
