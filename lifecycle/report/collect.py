"""Collect the lineage of a checkpoint (or of every checkpoint of a recipe run) as a graph of steps.

Each checkpoint's ``lifecycle.json`` names its ``parents`` (absolute folders, Hub ids, ``smollm2``)
and embeds every ancestor's lineage in ``history`` (flattened, newest first). A parent whose folder is
still there is read from it (its card may have newer scores); a parent whose folder is gone is found
in ``history`` by the output folder its options recorded; anything else (a Hub model, a folder made
elsewhere) becomes an *external* step with no lineage. Steps are identified by their folder, so an
ancestor reached twice (both experts of a merge come from one base) is one node of the graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.model.card import LINEAGE_FILE
from lifecycle.recipe import STATE_FILE as RECIPE_STATE_FILE


@dataclass
class Step:
    """One model of the lineage graph: a checkpoint on disk, one known from a descendant's card, or an
    external model (``kind`` is ``"folder"``, ``"embedded"`` or ``"external"``)."""

    key: str
    name: str
    kind: str
    lineage: dict = field(default_factory=dict)
    folder: Path | None = None
    parents: list[str] = field(default_factory=list)  # keys of the parent steps
    seconds: float | None = None  # the recipe's wall time for the step, when it ran in a recipe

    @property
    def command(self) -> str:
        return str(self.lineage.get("command") or ("model" if self.kind == "external" else "?"))

    @property
    def method(self) -> str | None:
        return self.lineage.get("method")

    @property
    def metrics(self) -> dict:
        metrics = self.lineage.get("metrics")
        return metrics if isinstance(metrics, dict) else {}


@dataclass
class Lineage:
    """The steps of a report, parents before children, and the checkpoints it was asked about."""

    steps: list[Step]
    targets: list[str]  # keys of the checkpoints named by the input (the run's steps, or the one checkpoint)
    source: Path  # the folder the report was asked for
    run_name: str | None = None  # the recipe's output folder name, for a run

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    @property
    def finals(self) -> list[str]:
        """The targets no other step was made from: the run's end products, highlighted in the report."""
        used = {p for s in self.steps for p in s.parents}
        return [k for k in self.targets if k not in used] or self.targets


def _read(folder: Path) -> dict:
    try:
        data = json.loads((folder / LINEAGE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LifecycleError(f"{folder / LINEAGE_FILE} is not valid JSON ({exc}); the report needs every card readable") from None
    if not isinstance(data, dict):
        raise LifecycleError(f"{folder / LINEAGE_FILE} is not a lineage (a JSON object)")
    return data


def _is_checkpoint(folder: Path) -> bool:
    return (folder / LINEAGE_FILE).is_file()


def recipe_steps(run: Path) -> dict[Path, tuple[str, float | None]]:
    """Checkpoint folder → (recipe step name, seconds the step took), from a run folder's state file;
    empty when ``run`` is not a recipe run."""
    state_file = run / RECIPE_STATE_FILE
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        state = {}
    steps: dict[Path, tuple[str, float | None]] = {}
    for name, entry in state.items() if isinstance(state, dict) else []:
        output = entry.get("output") if isinstance(entry, dict) else None
        if output and _is_checkpoint(Path(output)):
            steps[Path(output).resolve()] = (str(name), entry.get("seconds"))
    return steps


def find_checkpoints(path: str | Path) -> tuple[list[Path], dict[Path, tuple[str, float | None]], Path]:
    """The checkpoints a report covers: ``path`` itself when it is one, else a recipe run's step outputs
    (in recipe order), else the checkpoints one or two folders below it.

    Returns (folders, recipe step name and seconds per folder, the resolved input). A missing path or
    a folder with no ``lifecycle.json`` is a :class:`LifecycleError`, raised before anything is written.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise LifecycleError(f"{path}: no such file or folder")
    if not root.is_dir():
        raise LifecycleError(f"{path} is a file; give a checkpoint folder (with {LINEAGE_FILE}) or a recipe run folder")
    root = root.resolve()
    if _is_checkpoint(root):
        return [root], {}, root
    steps = recipe_steps(root)
    if steps:
        return list(steps), steps, root
    for pattern in ("*/" + LINEAGE_FILE, "*/*/" + LINEAGE_FILE):
        found = sorted(p.parent for p in root.glob(pattern) if not p.parent.name.startswith("."))
        if found:
            return found, {}, root
    raise LifecycleError(f"{path}: no {LINEAGE_FILE} in this folder or the folders below it; "
                         "give a checkpoint written by lifecycle or a recipe run folder")


def _output_of(entry: dict) -> str | None:
    options = entry.get("options")
    output = options.get("output") if isinstance(options, dict) else None
    return str(output) if output else None


def _same_folder(spec: str, output: str) -> bool:
    """``output`` as its command recorded it (maybe relative to a working directory we do not know)
    names the folder ``spec`` (absolute when it existed)."""
    a, b = Path(spec).parts, Path(output).parts
    b = tuple(p for p in b if p not in (".", ""))
    return bool(b) and len(b) <= len(a) and a[len(a) - len(b):] == b


class _Builder:
    def __init__(self, known: dict[Path, tuple[str, float | None]]):
        self.recipe_steps = known
        self.runs_read: set[Path] = set()
        self.steps: dict[str, Step] = {}

    def folder(self, folder: Path) -> str:
        key = str(folder)
        if key in self.steps:
            return key
        lineage = _read(folder)
        if folder.parent not in self.runs_read:  # a checkpoint of a recipe run: its step name and time
            self.runs_read.add(folder.parent)
            self.recipe_steps = {**recipe_steps(folder.parent), **self.recipe_steps}
        name, seconds = self.recipe_steps.get(folder, (folder.name, None))
        step = Step(key=key, name=name, kind="folder", lineage=lineage, folder=folder, seconds=seconds)
        self.steps[key] = step  # before the parents: a lineage that names itself cannot recurse forever
        history = [h for h in lineage.get("history") or [] if isinstance(h, dict)]
        step.parents = [self.parent(str(p), history) for p in lineage.get("parents") or []]
        self._reinsert(key)
        return key

    def parent(self, spec: str, history: list[dict]) -> str:
        local = Path(spec).expanduser()
        if local.is_absolute() and local.is_dir() and _is_checkpoint(local):
            return self.folder(local.resolve())
        if spec in self.steps:
            return spec
        entry = next((h for h in history if _output_of(h) and _same_folder(spec, _output_of(h) or "")), None)
        if entry is None:
            self.steps[spec] = Step(key=spec, name=Path(spec).name if local.is_absolute() else spec, kind="external")
            return spec
        step = Step(key=spec, name=local.name or spec, kind="embedded", lineage=entry)
        self.steps[spec] = step
        step.parents = [self.parent(str(p), history) for p in entry.get("parents") or []]
        self._reinsert(spec)
        return spec

    def _reinsert(self, key: str) -> None:
        """Move a step after its parents (dicts keep insertion order): parents first, for tables and plots."""
        self.steps[key] = self.steps.pop(key)


def collect(path: str | Path) -> Lineage:
    """The lineage graph of a checkpoint folder or of every checkpoint in a recipe run folder."""
    folders, recipe_steps, root = find_checkpoints(path)
    builder = _Builder(recipe_steps)
    targets = [builder.folder(f) for f in folders]
    run_name = None if _is_checkpoint(root) else root.name
    return Lineage(steps=list(builder.steps.values()), targets=targets, source=root, run_name=run_name)


__all__ = ["Lineage", "RECIPE_STATE_FILE", "Step", "collect", "find_checkpoints", "recipe_steps"]
