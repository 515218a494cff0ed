"""Continual-learning tasks: where a task's files are, its label set, and scoring it through lm-eval.

Two kinds of task, both trained with :func:`lifecycle.data.supervised.load_supervised` (loss on the
completion only):

- **label tasks** (``kind == "choice"``): a folder with ``train.jsonl`` and ``test.jsonl`` (one
  ``{"sentence", "label"}`` row per line, or any prompt/completion field pair
  :mod:`lifecycle.data.supervised` reads), ``labels.json`` (the label set) and optionally
  ``instruction.txt``; or the name of such a folder in ``shared/data/continual`` (the O-LoRA
  collection). Scored as one lm-eval ``multiple_choice`` task, with the same prompt
  (``{instruction}\n{sentence}\nAnswer:``), the label texts as the choices and the same ``" "``
  delimiter the training completion starts with; the column's value is ``acc`` (summed log-likelihood
  of each whole label text, not its first token).
- **completion tasks** (``kind == "completion"``): any prompt/completion JSONL with no label set:
  a folder like the above without ``labels.json``, or a file ``NAME.jsonl`` whose test split is
  ``NAME.test.jsonl`` beside it (or, when NAME contains ``train``, the same name with ``test``:
  ``gsm8k_train.jsonl`` → ``gsm8k_test.jsonl``, ``DIR/train.jsonl`` → ``DIR/test.jsonl``). A file's
  prompts are taken as complete (``{input}``, as ``load_supervised`` reads a plain file). Without a
  test split the task is refused. Scored as an lm-eval ``loglikelihood`` task on ``" " + completion``
  after the prompt; the column's value is lm-eval's ``acc`` there, which is whether every completion
  token is the model's argmax given the gold prefix, i.e. **exact match of greedy decoding** (greedy
  decoding reproduces the completion exactly when, and only when, each gold token is the argmax after
  the gold prefix), computed in one forward pass instead of generation. It is chosen over a per-token
  score because it is a task accuracy in [0, 1] like the label columns (so AA and BWT still read as
  accuracies) and is what O-LoRA reports for generative tasks; the stop (EOS) is not required. Because
  exact match is all-or-nothing and often 0 for small models, the mean completion log-likelihood is
  kept beside it (``completion_nll``: mean over items of the summed NLL of the completion, nats, from
  lm-eval's ``perplexity`` of the same requests), so forgetting below the exact-match threshold is
  still visible.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml

from lifecycle.errors import LifecycleError

TASK_PREFIX = "continual_"
# what each kind's column holds (recorded per column in the report)
METRICS = {"choice": "multiple-choice acc over the label set",
           "completion": "exact match of greedy decoding (lm-eval loglikelihood acc)"}


@dataclass(frozen=True)
class ContinualTask:
    """One task of a sequence: its name, files, label set (empty: a completion task), instruction and fields."""

    name: str
    folder: Path
    labels: tuple[str, ...]
    instruction: str | None
    prompt_field: str
    label_field: str
    train_file: Path
    test_file: Path
    plain_file: bool = False  # a prompt/completion JSONL given as a file: its prompts are complete

    @property
    def kind(self) -> Literal["choice", "completion"]:
        return "choice" if self.labels else "completion"

    @property
    def metric(self) -> str:
        return METRICS[self.kind]

    @property
    def eval_name(self) -> str:
        return TASK_PREFIX + re.sub(r"\W", "_", self.name)

    @property
    def data_spec(self) -> Path:
        """What :func:`load_supervised` reads: the folder (its instruction, validation split), or the file."""
        return self.train_file if self.plain_file else self.folder

    def prompt_template(self) -> str:
        # the template load_supervised uses for a folder or a plain file, so training and scoring see one prompt
        from lifecycle.data.supervised import INSTRUCTION_TEMPLATE, PLAIN_TEMPLATE, TASK_TEMPLATE

        if self.plain_file:
            return PLAIN_TEMPLATE
        return INSTRUCTION_TEMPLATE if self.instruction else TASK_TEMPLATE


def _first_row(path: Path) -> dict:
    from lifecycle.data.sources import iter_jsonl

    first = next(iter_jsonl(path, path.read_bytes()), None)
    if first is None:
        raise LifecycleError(f"{path} has no examples (the file is empty)")
    return first[1]


def _fields(name: str, test_file: Path) -> tuple[str, str]:
    from lifecycle.data.supervised import FIELD_PAIRS

    row = _first_row(test_file)
    fields = next(((p, c) for p, c in FIELD_PAIRS if p in row and c in row), None)
    if fields is None:
        raise LifecycleError(f"task {name}: {test_file} rows have none of the field pairs "
                             f"{', '.join('/'.join(f) for f in FIELD_PAIRS)}")
    return fields


def candidate_test_files(train_file: Path) -> list[Path]:
    """Where a prompt/completion file's test split may be: ``NAME.test.jsonl``, or ``train`` → ``test``."""
    stem = train_file.name[: -len(".jsonl")]
    out = [train_file.with_name(f"{stem}.test.jsonl")]
    if "train" in stem:
        out.insert(0, train_file.with_name(stem.replace("train", "test") + ".jsonl"))
    return out


def _file_task(path: Path) -> ContinualTask:
    candidates = candidate_test_files(path)
    test = next((c for c in candidates if c.is_file()), None)
    name = path.parent.name if path.stem == "train" else path.stem
    if test is None:
        raise LifecycleError(f"task {name}: no test split for {path} (looked for "
                             f"{' and '.join(c.name for c in candidates)} beside it); a task needs test data to be scored")
    return ContinualTask(name, path.parent, (), None, *_fields(name, test), train_file=path, test_file=test,
                         plain_file=True)


def _read_labels(name: str, labels_file: Path) -> tuple[str, ...]:
    try:
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LifecycleError(f"task {name}: {labels_file} is not valid JSON") from None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels):
        raise LifecycleError(f"task {name}: {labels_file} must be a list of at least two non-empty label texts")
    if len(set(labels)) != len(labels):
        raise LifecycleError(f"task {name}: {labels_file} lists a label twice")
    return tuple(labels)


def resolve_task(spec: str) -> ContinualTask:
    """A task folder, a prompt/completion JSONL file, or a name in ``shared/data/continual``, checked for
    what training and scoring need."""
    from lifecycle.paths import shared_data_dir

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".jsonl":
            raise LifecycleError(f"task {spec}: a task file must be prompt/completion JSONL (.jsonl)")
        return _file_task(path)
    if not path.is_dir():
        shared = shared_data_dir(required=False)
        candidate = shared / "continual" / spec if shared is not None and re.fullmatch(r"[\w-]+", spec) else None
        if candidate is None or not candidate.is_dir():
            known = sorted(p.name for p in (shared / "continual").iterdir() if p.is_dir()) if shared else []
            raise LifecycleError(f"unknown continual task '{spec}': not a task folder nor a .jsonl file"
                                 + (f" nor one of shared/data/continual ({', '.join(known)})" if known else ""))
        path = candidate
    name = path.name
    for split in ("train", "test"):
        if not (path / f"{split}.jsonl").is_file():
            raise LifecycleError(f"task {name}: {path / f'{split}.jsonl'} not found (a task needs train and test data)")
    labels_file = path / "labels.json"
    # no label set: a prompt/completion task, scored by exact match instead of multiple choice
    labels = _read_labels(name, labels_file) if labels_file.is_file() else ()
    instruction = None
    if (path / "instruction.txt").is_file():
        instruction = (path / "instruction.txt").read_text(encoding="utf-8").strip() or None
    return ContinualTask(name, path, labels, instruction, *_fields(name, path / "test.jsonl"),
                         train_file=path / "train.jsonl", test_file=path / "test.jsonl")


def check_distinct_names(tasks: list[ContinualTask]) -> None:
    """Tasks are keyed by name in the matrix, the checkpoints and lm-eval: two with one name would collide."""
    seen: dict[str, ContinualTask] = {}
    for task in tasks:
        if task.name in seen:
            raise LifecycleError(f"two tasks are named {task.name} ({seen[task.name].train_file} and {task.train_file}); "
                                 "each task is trained once and needs its own name")
        seen[task.name] = task


def check_test_labels(task: ContinualTask, limit: int | None) -> None:
    """Every scored test row is scorable (else lm-eval would fail mid-run): its label is in the label
    set, or, for a completion task, it has non-empty prompt and completion texts."""
    from lifecycle.data.sources import iter_jsonl
    from lifecycle.data.supervised import _text

    allowed = set(task.labels)
    for count, (line_no, row) in enumerate(iter_jsonl(task.test_file, task.test_file.read_bytes())):
        if limit is not None and count >= limit:
            break
        if task.kind == "completion":
            for name in (task.prompt_field, task.label_field):
                if not _text(row, name, task.test_file, line_no).strip():
                    raise LifecycleError(f"task {task.name}: {task.test_file}:{line_no}: field '{name}' is empty")
            continue
        label = row.get(task.label_field)
        if label not in allowed:
            raise LifecycleError(f"task {task.name}: {task.test_file}:{line_no} has label {label!r}, "
                                 f"not in its label set ({', '.join(task.labels)})")


def check_labels_distinct(task: ContinualTask, tokenizer: Any) -> None:
    """Scoring compares the log-likelihood of each label's tokens; two labels that tokenize to the
    same ids (after the delimiter) could never be told apart. (A completion task has no labels.)"""
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
    common = {
        "task": task.eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(task.test_file.resolve())}},
        "test_split": "test",
        "doc_to_text": text,
        "target_delimiter": " ",  # the separator load_supervised puts before every completion
    }
    if task.kind == "completion":
        # lm-eval puts no target_delimiter before a loglikelihood target, so the space is in the target
        return {**common, "output_type": "loglikelihood", "doc_to_target": "{{ ' ' ~ " + task.label_field + " }}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
                "metadata": {"version": 1.0}}
    labels = list(task.labels)
    return {**common, "output_type": "multiple_choice",
            # the gold index: the label's position in the label set
            "doc_to_target": "{{ " + json.dumps(labels) + ".index(" + task.label_field + ") }}",
            "doc_to_choice": labels,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


@contextlib.contextmanager
def task_yamls(tasks: list[ContinualTask]) -> Iterator[Path]:
    """A temporary lm-eval include folder with one task per continual task."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-continual-tasks-") as tmp:
        for task in tasks:
            (Path(tmp) / f"{task.eval_name}.yaml").write_text(yaml.safe_dump(_task_yaml(task), sort_keys=False))
        yield Path(tmp)


def score_tasks_detailed(model: Any, tokenizer: Any, tasks: list[ContinualTask], *, limit: int | None,
                         batch_size: int = 8, max_length: int = 1024) -> dict[str, dict[str, float]]:
    """Per task name: ``acc`` (the matrix value) and, for completion tasks, ``completion_nll``."""
    if not tasks:
        return {}
    from lifecycle.eval.harness import evaluate

    with task_yamls(tasks) as include:
        report = evaluate(model, tokenizer, [t.eval_name for t in tasks], limit=limit, batch_size=batch_size,
                          max_length=max_length, include_path=include, bootstrap_iters=0)
    out: dict[str, dict[str, float]] = {}
    for t in tasks:
        scores = report.scores[t.eval_name]
        out[t.name] = {"acc": float(scores["acc"])}
        if t.kind == "completion":
            # lm-eval's loglikelihood "perplexity" is exp(-mean summed log-likelihood per item)
            out[t.name]["completion_nll"] = math.log(float(scores["perplexity"]))
    return out


def score_tasks(model: Any, tokenizer: Any, tasks: list[ContinualTask], *, limit: int | None,
                batch_size: int = 8, max_length: int = 1024) -> dict[str, float]:
    """Accuracy of ``model`` on each task's test split (first ``limit`` items), by task name."""
    detailed = score_tasks_detailed(model, tokenizer, tasks, limit=limit, batch_size=batch_size, max_length=max_length)
    return {name: v["acc"] for name, v in detailed.items()}


__all__ = ["METRICS", "ContinualTask", "check_distinct_names", "check_labels_distinct", "check_test_labels",
           "resolve_task", "score_tasks", "score_tasks_detailed", "task_yamls", "candidate_test_files"]
