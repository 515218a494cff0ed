"""Continual-learning tasks: where a task's files are, its label set, and scoring it through lm-eval.

A task is a folder with ``train.jsonl`` and ``test.jsonl`` (one ``{"sentence", "label"}`` row per line,
or any prompt/completion field pair :mod:`lifecycle.data.supervised` reads), ``labels.json`` (the label
set) and optionally ``instruction.txt``; or the name of such a folder in ``shared/data/continual``
(the O-LoRA collection). Training uses :func:`lifecycle.data.supervised.load_supervised` on the folder;
scoring renders one lm-eval ``multiple_choice`` task per folder into a temporary include folder, with
the same prompt (``{instruction}\\n{sentence}\\nAnswer:``), the label texts as the choices and the
same ``" "`` delimiter the training completion starts with, and reads ``acc`` (summed log-likelihood
of each label text; the whole label is scored, not its first token).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from lifecycle.errors import LifecycleError

TASK_PREFIX = "continual_"


@dataclass(frozen=True)
class ContinualTask:
    """One task of a sequence: its name, folder, label set, instruction and fields."""

    name: str
    folder: Path
    labels: tuple[str, ...]
    instruction: str | None
    prompt_field: str
    label_field: str

    @property
    def train_file(self) -> Path:
        return self.folder / "train.jsonl"

    @property
    def test_file(self) -> Path:
        return self.folder / "test.jsonl"

    @property
    def eval_name(self) -> str:
        return TASK_PREFIX + re.sub(r"\W", "_", self.name)

    def prompt_template(self) -> str:
        # the template load_supervised uses for a task folder, so training and scoring see one prompt
        from lifecycle.data.supervised import INSTRUCTION_TEMPLATE, TASK_TEMPLATE

        return INSTRUCTION_TEMPLATE if self.instruction else TASK_TEMPLATE


def _first_row(path: Path) -> dict:
    from lifecycle.data.sources import iter_jsonl

    first = next(iter_jsonl(path, path.read_bytes()), None)
    if first is None:
        raise LifecycleError(f"{path} has no examples (the file is empty)")
    return first[1]


def resolve_task(spec: str) -> ContinualTask:
    """A task folder (or a name in ``shared/data/continual``) checked for what training and scoring need."""
    from lifecycle.data.supervised import FIELD_PAIRS
    from lifecycle.paths import shared_data_dir

    path = Path(spec).expanduser()
    if not path.is_dir():
        shared = shared_data_dir(required=False)
        candidate = shared / "continual" / spec if shared is not None and re.fullmatch(r"[\w-]+", spec) else None
        if candidate is None or not candidate.is_dir():
            known = sorted(p.name for p in (shared / "continual").iterdir() if p.is_dir()) if shared else []
            raise LifecycleError(f"unknown continual task '{spec}': not a task folder"
                                 + (f" nor one of shared/data/continual ({', '.join(known)})" if known else ""))
        path = candidate
    name = path.name
    for split in ("train", "test"):
        if not (path / f"{split}.jsonl").is_file():
            raise LifecycleError(f"task {name}: {path / f'{split}.jsonl'} not found (a task needs train and test data)")
    labels_file = path / "labels.json"
    if not labels_file.is_file():
        raise LifecycleError(f"task {name}: no label set ({labels_file} not found); scoring is multiple choice over it")
    try:
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LifecycleError(f"task {name}: {labels_file} is not valid JSON") from None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        raise LifecycleError(f"task {name}: {labels_file} must be a list of at least two non-empty label texts")
    if len(set(labels)) != len(labels):
        raise LifecycleError(f"task {name}: {labels_file} lists a label twice")
    row = _first_row(path / "test.jsonl")
    fields = next(((p, c) for p, c in FIELD_PAIRS if p in row and c in row), None)
    if fields is None:
        raise LifecycleError(f"task {name}: {path / 'test.jsonl'} rows have none of the field pairs "
                             f"{', '.join('/'.join(f) for f in FIELD_PAIRS)}")
    instruction = None
    if (path / "instruction.txt").is_file():
        instruction = (path / "instruction.txt").read_text(encoding="utf-8").strip() or None
    return ContinualTask(name, path, tuple(labels), instruction, fields[0], fields[1])


def check_test_labels(task: ContinualTask, limit: int | None) -> None:
    """Every scored test row's label is in the label set (else lm-eval would fail mid-run)."""
    from lifecycle.data.sources import iter_jsonl

    allowed = set(task.labels)
    for count, (line_no, row) in enumerate(iter_jsonl(task.test_file, task.test_file.read_bytes())):
        if limit is not None and count >= limit:
            break
        label = row.get(task.label_field)
        if label not in allowed:
            raise LifecycleError(f"task {task.name}: {task.test_file}:{line_no} has label {label!r}, "
                                 f"not in its label set ({', '.join(task.labels)})")


def check_labels_distinct(task: ContinualTask, tokenizer: Any) -> None:
    """Scoring compares the log-likelihood of each label's tokens; two labels that tokenize to the
    same ids (after the delimiter) could never be told apart."""
    seen: dict[tuple[int, ...], str] = {}
    for label in task.labels:
        ids = tuple(tokenizer(" " + label, add_special_tokens=False)["input_ids"])
        if ids in seen:
            raise LifecycleError(f"task {task.name}: labels {seen[ids]!r} and {label!r} are the same tokens "
                                 "for this tokenizer, so multiple-choice scoring cannot tell them apart")
        seen[ids] = label


def _task_yaml(task: ContinualTask) -> dict:
    template = task.prompt_template()
    # Jinja: the instruction is literal text ({% raw %}), the row's prompt field is substituted.
    text = template.replace("{instruction}", "{% raw %}" + (task.instruction or "") + "{% endraw %}")
    text = text.replace("{input}", "{{" + task.prompt_field + "}}")
    labels = list(task.labels)
    return {
        "task": task.eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(task.test_file.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        # the gold index: the label's position in the label set
        "doc_to_target": "{{ " + json.dumps(labels) + ".index(" + task.label_field + ") }}",
        "doc_to_choice": labels,
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


@contextlib.contextmanager
def task_yamls(tasks: list[ContinualTask]) -> Iterator[Path]:
    """A temporary lm-eval include folder with one multiple-choice task per continual task."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-continual-tasks-") as tmp:
        for task in tasks:
            (Path(tmp) / f"{task.eval_name}.yaml").write_text(yaml.safe_dump(_task_yaml(task), sort_keys=False))
        yield Path(tmp)


def score_tasks(model: Any, tokenizer: Any, tasks: list[ContinualTask], *, limit: int | None,
                batch_size: int = 8, max_length: int = 1024) -> dict[str, float]:
    """Accuracy of ``model`` on each task's test split (first ``limit`` items), by task name."""
    if not tasks:
        return {}
    from lifecycle.eval.harness import evaluate

    with task_yamls(tasks) as include:
        report = evaluate(model, tokenizer, [t.eval_name for t in tasks], limit=limit, batch_size=batch_size,
                          max_length=max_length, include_path=include, bootstrap_iters=0)
    return {t.name: float(report.scores[t.eval_name]["acc"]) for t in tasks}


__all__ = ["ContinualTask", "check_labels_distinct", "check_test_labels", "resolve_task", "score_tasks", "task_yamls"]
