"""The task-sequence runner every continual method runs in.

Tasks are trained in order on the one engine (:func:`lifecycle.train.engine.train`) with the method's
hooks (:mod:`.base`). After each task the model is scored on every task seen so far (``score_all``:
every task) through lm-eval (:mod:`.tasks`), which fills row ``i`` of the accuracy matrix
(:mod:`.metrics`), and a checkpoint is written to ``<run dir>/tasks/NN-name`` (a plain HF model whose
card records the sequence so far and the matrix), with the method's boundary state beside it.

Resume. ``<run dir>/continual_state.json`` records the run's identity (model, tasks, method and its
options, data and scoring settings) and every finished task's row. ``resume`` continues after the last
finished task from its checkpoint and state, and inside the interrupted task from the engine's own
exact resume (``train.save_every`` checkpoints, or the one written on SIGINT/SIGTERM). A resume with
another task list or other settings is refused, naming what differs. At the end the per-task
checkpoints move into ``OUTPUT/tasks/`` and the run dir is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lifecycle.errors import LifecycleError
from lifecycle.finish import default_run_dir
from lifecycle.methods.continual import metrics
from lifecycle.methods.continual.base import ContinualMethod, TaskContext
from lifecycle.methods.continual.options import ContinualOptions
from lifecycle.methods.continual.tasks import ContinualTask, check_distinct_names, resolve_task, score_tasks_detailed
from lifecycle.train.engine import train

STATE_FILE = "continual_state.json"
METHOD_STATE = "method_state.safetensors"
REPORT_FILE = "continual_report.json"
HEATMAP_FILE = "accuracy_matrix.png"
_NOT_IDENTITY = {"resume", "overwrite", "output", "eval"}
_NOT_IDENTITY_TRAIN = {"save_every", "keep_checkpoints", "log_every", "report_to", "eval_every", "eval_blocks"}


@dataclass
class SequenceResult:
    model: Any
    tokenizer: Any
    report: dict
    task_dirs: list[Path] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def run_identity(opts: ContinualOptions) -> dict:
    values = opts.model_dump(mode="json", exclude=_NOT_IDENTITY)
    values["train"] = {k: v for k, v in values["train"].items() if k not in _NOT_IDENTITY_TRAIN}
    return values


def check_state(state: dict, identity: dict, run_dir: Path) -> None:
    from lifecycle.train.resume import differences

    diff = differences(state.get("identity", {}), identity)
    if diff:
        raise LifecycleError(f"--resume: {run_dir} belongs to another continual run: {'; '.join(diff)} "
                             "(use a new output folder, put the settings back, or drop --resume)")


def read_state(run_dir: Path) -> dict | None:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_state(run_dir: Path, state: dict) -> None:
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / STATE_FILE)


def _save_method_state(method: ContinualMethod, folder: Path) -> None:
    from safetensors.torch import save_file

    from lifecycle.train.hooks import _split_state

    tensors, rest = _split_state(method.state_dict())
    save_file(tensors, str(folder / METHOD_STATE), metadata={"json": json.dumps(rest)})


def _load_method_state(method: ContinualMethod, folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(folder / METHOD_STATE), framework="pt") as fh:
        state: dict = json.loads((fh.metadata() or {}).get("json", "{}"))
        state.update({k: fh.get_tensor(k) for k in fh.keys()})
    method.load_state_dict(state)


def load_task_data(task: ContinualTask, tokenizer: Any, opts: ContinualOptions) -> Any:
    from lifecycle.data.supervised import load_supervised

    return load_supervised(task.data_spec, tokenizer, opts.max_length, max_examples=opts.max_train_examples,
                           prompt_field=task.prompt_field, completion_field=task.label_field,
                           template=task.prompt_template())


def _row(scores: dict[str, dict[str, float]], names: list[str], key: str = "acc") -> list[float | None]:
    return [scores.get(n, {}).get(key) for n in names]


def column_headers(tasks: list[ContinualTask]) -> list[str]:
    """Column names for the table and heatmap: a completion task's column is marked as exact match."""
    return [t.name + (" (EM)" if t.kind == "completion" else "") for t in tasks]


def run_sequence(opts: ContinualOptions, loaded: Any, *, log: Callable[[str], None] = print,
                 console: Any = None) -> SequenceResult:
    """Train ``loaded.model`` on ``opts.tasks`` in order with ``opts.method``; usable from Python."""
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model, save_checkpoint

    tasks = [resolve_task(t) for t in opts.tasks]
    check_distinct_names(tasks)
    names = [t.name for t in tasks]
    completion = any(t.kind == "completion" for t in tasks)
    method: ContinualMethod = opts.registered_method.run(opts)
    run_dir = default_run_dir(opts.output)
    identity = run_identity(opts)
    state = read_state(run_dir) if opts.resume else None
    if state is not None:
        check_state(state, identity, run_dir)
        state.setdefault("zero_shot_nll", None)  # a state written before completion tasks existed
        state.setdefault("nll_rows", [[None] * len(names) for _ in state["rows"]])
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        state = {"identity": identity, "tasks": names, "zero_shot": None, "rows": [], "task_dirs": [], "timing": [],
                 "zero_shot_nll": None, "nll_rows": []}
        _write_state(run_dir, state)
    tokenizer = loaded.tokenizer
    model = loaded.model
    score = lambda m, subset: score_tasks_detailed(m, tokenizer, subset, limit=opts.limit,  # noqa: E731
                                                   batch_size=opts.eval_batch_size, max_length=max(opts.max_length, 64))

    if opts.zero_shot and state["zero_shot"] is None:
        log("scoring the untrained model on every task (zero-shot floor)")
        scores = score(model, tasks)
        state["zero_shot"] = _row(scores, names)
        state["zero_shot_nll"] = _row(scores, names, "completion_nll")
        _write_state(run_dir, state)
    done = len(state["rows"])
    if done:
        last = Path(state["task_dirs"][-1])
        log(f"--resume: {done} of {len(tasks)} tasks done; continuing from {last}")
        model = load_model(str(last)).model
        _load_method_state(method, last)
    datas = [load_task_data(t, tokenizer, opts) for t in tasks]
    stages = [len(tasks) - 1] if method.joint else list(range(len(tasks)))
    history: list[dict] = []
    for i in stages[done:]:
        seen = datas if method.joint else datas[: i + 1]
        ctx = TaskContext(index=i, tasks=tasks, model=model, tokenizer=tokenizer, data=datas[i],
                          previous_data=datas[i - 1] if i > 0 else None, seen_data=seen, opts=opts, log=log)
        started = time.perf_counter()
        hooks = method.begin_task(ctx)
        setup_s = time.perf_counter() - started
        cfg = method.train_config(opts.train.model_copy(), ctx)
        label = "all tasks (joint)" if method.joint else f"task {i + 1}/{len(tasks)} {tasks[i].name}"
        result = train(ctx.model, method.train_data(ctx), cfg, run_dir / f"train-{i:02d}", hooks=hooks,
                       resume=opts.resume, description=f"{opts.method} {label}")
        ctx.model = result.model
        method.end_task(ctx)
        model = ctx.model
        scored = tasks if (opts.score_all or method.joint) else tasks[: i + 1]
        scores = score(model, scored)
        state["rows"].append(_row(scores, names))
        state["nll_rows"].append(_row(scores, names, "completion_nll"))
        history.extend(dict(row, task=tasks[i].name) for row in result.history)
        R = state["rows"]
        if console is not None:
            console.print(metrics.matrix_table(column_headers(tasks), R, state["zero_shot"],
                                               f"{opts.method}: accuracy after {label}", joint=method.joint))
        timing = {"task": tasks[i].name, "setup_s": round(setup_s, 3), "train_s": round(result.seconds, 2),
                  "step_s": round(result.seconds / max(cfg.steps, 1), 4)}
        folder = run_dir / "tasks" / ("joint" if method.joint else f"{i + 1:02d}-{tasks[i].name}")
        lineage = new_lineage(command="continual", method=f"continual-{opts.method}", parents=[loaded.source],
                              parent_lineages=[loaded.lineage], options=opts.model_dump(mode="json"), seed=cfg.seed,
                              data={"tasks": names[: i + 1] if not method.joint else names})
        lineage["metrics"] = {"tasks": names, "trained": names[: i + 1], "accuracy_matrix": R,
                              "column_metrics": {t.name: t.metric for t in tasks},
                              "zero_shot": state["zero_shot"], **metrics.summary(R, state["zero_shot"])}
        shutil.rmtree(folder, ignore_errors=True)
        save_checkpoint(model, tokenizer, folder, lineage=lineage, overwrite=True,
                        write_extra=lambda tmp: _save_method_state(method, tmp))
        state["task_dirs"].append(str(folder))
        state["timing"].append(timing)
        _write_state(run_dir, state)
        shutil.rmtree(run_dir / f"train-{i:02d}", ignore_errors=True)
    R = state["rows"]
    report = {"method": opts.method, "tasks": names, "accuracy_matrix": R, "zero_shot": state["zero_shot"],
              # what each column's accuracy is: multiple choice for label tasks, greedy exact match otherwise
              "column_metrics": {t.name: t.metric for t in tasks}, "joint": method.joint, "limit": opts.limit,
              "max_train_examples": opts.max_train_examples, "steps_per_task": opts.train.steps,
              **metrics.summary(R, state["zero_shot"] if (opts.score_all or method.joint) else None),
              "timing": state["timing"], "method_report": method.report()}
    if completion:  # graded companion of the exact-match columns (mean summed NLL per item, nats; lower is better)
        report["completion_nll_matrix"] = state["nll_rows"]
        report["zero_shot_completion_nll"] = state["zero_shot_nll"]
    if method.joint:
        report["BWT"] = report["forgetting"] = None  # one joint stage: no before/after
    report["AA"] = metrics.average_accuracy(R) if len(R[-1]) == len(names) else None
    return SequenceResult(model, tokenizer, report, [Path(p) for p in state["task_dirs"]], history)


__all__ = ["HEATMAP_FILE", "REPORT_FILE", "SequenceResult", "column_headers", "load_task_data", "read_state", "run_identity",
           "run_sequence"]
