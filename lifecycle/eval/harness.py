"""Scoring models with lm-eval on the project's own copies of the standard benchmarks.

Why this module exists rather than calling ``lm_eval`` directly:

* the benchmark files live in the shared data folder (read in place, never copied); lm-eval resolves
  relative ``data_files`` against the process CWD, so the task templates in ``tasks/`` carry a
  placeholder and are rendered with absolute paths into a temporary include folder for every run;
* ``simple_evaluate`` reseeds the global RNGs and ``HFLM`` puts the model in eval mode, which would
  silently change a training run that scores itself mid-way; both are undone here;
* results come back as ``{"acc,none": ..., "acc_stderr,none": "N/A"}``; :class:`EvalReport` turns them
  into plain ``{task: {metric: float}}`` that model cards and gates can use.

Heavy imports (lm_eval, torch, transformers) happen inside functions so that ``import
lifecycle.eval`` stays cheap; lm-eval also imports this module to reach the wikitext helpers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir, shared_data_dir

TEMPLATE_DIR = Path(__file__).resolve().parent / "tasks"
EVAL_RESULTS_FILE = "eval_results.json"

DEFAULT_BATCH_SIZE = 8
# Rolling perplexity would otherwise use the model's full context (8192 for SmolLM2), which is very
# slow on CPU; 1024 keeps windows short and matches the reference numbers in shared/data/README.md.
DEFAULT_MAX_LENGTH = 1024
# >0 gives closed-form stderr for mean metrics (acc, acc_norm: free) and a bootstrap for `perplexity`
# (LAMBADA); 1000 draws take about a second on 5k items. Word/byte perplexity never get a stderr.
DEFAULT_BOOTSTRAP_ITERS = 1000

_DATA_PLACEHOLDER = "@EVAL_DATA@"
_WIKITEXT_PLACEHOLDER = "@WIKITEXT_JSONL@"
_WIKITEXT_SOURCE = "wikitext2_raw_test.txt"
_WIKITEXT_FORMAT = "v1"  # bump when the splitting below changes, so cached conversions are redone
_DATA_FILE_RE = re.compile(r'test:\s*"' + re.escape(_DATA_PLACEHOLDER) + r'/([^"]+)"')


# --------------------------------------------------------------------------------------------------
# environment


def ensure_offline_defaults() -> dict[str, str]:
    """Default the Hugging Face libraries to offline mode, unless the user chose otherwise.

    Local tasks need no network, and on machines without one every Hub call would otherwise wait
    for a timeout. ``huggingface_hub`` and ``datasets`` read these variables *when first imported*,
    so the CLI calls this before importing them. Returns the variables it set.
    """
    set_now = {}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if name not in os.environ:
            os.environ[name] = "1"
            set_now[name] = "1"
    return set_now


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


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


def _check_data_files(names: list[str], eval_dir: Path) -> None:
    for name in names:
        template = (TEMPLATE_DIR / f"{name}.yaml").read_text()
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


def check_task_names(tasks: str | Iterable[str]) -> list[str]:
    """Fail fast (before a model is loaded) on names that are neither local nor in lm-eval's tree."""
    names = parse_task_list(tasks)
    if not names:
        raise LifecycleError("no tasks given; local tasks: " + ", ".join(local_task_names()))
    local = set(local_task_names())
    unknown = [n for n in names if n not in local and not _mentioned_in_builtin_tasks(n)]
    if unknown:
        raise _unknown_task_error(unknown)
    return names


def task_manager_for(names: list[str], include_dir: Path) -> Any:
    """A TaskManager that knows ``names``: local tasks only (fast), or with lm-eval's builtin index.

    Local tasks shadow builtin ones of the same name (``arc_easy`` is always ours) because lm-eval
    indexes ``include_path`` after its defaults.
    """
    from lm_eval.tasks import TaskManager

    local = set(local_task_names())
    others = [n for n in names if n not in local]
    if not others:
        return TaskManager(include_path=str(include_dir), include_defaults=False)
    manager = TaskManager(include_path=str(include_dir), include_defaults=True)
    unknown = [n for n in others if n not in manager.all_tasks]
    if unknown:
        raise _unknown_task_error(unknown)
    return manager


# --------------------------------------------------------------------------------------------------
# wikitext helpers (referenced by tasks/wikitext.yaml through `!function`)

# WikiText separates punctuation and marks in-number separators with @x@; undo it so the model sees
# normal text. Word and byte counts are still taken on the raw page (see process_results below).
_WIKITEXT_REPLACEMENTS = [
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
]
_WIKITEXT_BRACKETS = [
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
]
_WIKITEXT_TAIL = [
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \u00b0 ", "\u00b0"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
]


def wikitext_detokenize(doc: dict) -> str:
    """The article as normal text (what the model is scored on)."""
    text = doc["page"]
    for old, new in _WIKITEXT_REPLACEMENTS:
        text = text.replace(old, new)
    for pattern, repl in _WIKITEXT_BRACKETS:
        text = pattern.sub(repl, text)
    for old, new in _WIKITEXT_TAIL:
        text = text.replace(old, new)
    return text


def wikitext_process_results(doc: dict, results: list) -> dict:
    """Per-article loglikelihood paired with word and byte counts of the *raw* article."""
    (loglikelihood,) = results
    raw = doc["page"]
    words = len(re.split(r"\s+", raw))
    size = len(raw.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }


# --------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalReport:
    """Scores of one evaluation run.

    ``scores``: ``{task: {metric: value}}`` with stderr, when computed, under ``"<metric>_stderr"``;
    ``settings``: what determines the numbers (limit, batch size, max length, n-samples, versions);
    ``raw``: lm-eval's own results dict, JSON-serialisable.
    """

    scores: dict[str, dict[str, float]]
    settings: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "settings": self.settings, "lm_eval": self.raw}

    def to_json(self, path: str | Path) -> Path:
        """Write scores, settings and the raw lm-eval results (atomically) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        os.replace(tmp, path)
        return path

    def print_table(self, console: Any = None, title: str | None = None) -> None:
        """One row per (task, metric) with ± stderr and the number of items scored."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=title or "lm-eval results")
        for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right"), ("n", "right")):
            table.add_column(column, justify=justify)
        n_samples = self.settings.get("n_samples", {})
        for task, metrics in self.scores.items():
            for metric, value in metrics.items():
                if metric.endswith("_stderr"):
                    continue
                err = metrics.get(f"{metric}_stderr")
                table.add_row(
                    task,
                    metric,
                    f"{value:.4f}",
                    f"{err:.4f}" if err is not None else "",
                    str(n_samples.get(task, "")),
                )
        console.print(table)


def scores_from_results(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ..}`` -> ``{"acc": 0.5}`` per task."""
    scores: dict[str, dict[str, float]] = {}
    for task, entries in results.items():
        metrics: dict[str, float] = {}
        for key, value in entries.items():
            if "," not in key:
                continue  # alias, sample counts
            metric, filter_name = key.split(",", 1)
            if filter_name != "none":
                metric = f"{metric}_{filter_name}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "N/A" stderr
            if metric.endswith("_stderr") and not math.isfinite(value):
                continue
            metrics[metric] = float(value)
        scores[task] = metrics
    return scores


@contextlib.contextmanager
def _preserved_state(model: Any) -> Iterator[None]:
    """Put back the global RNG states, the model's train/eval mode and env vars we touch."""
    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    was_training = bool(getattr(model, "training", False))
    # lm-eval bootstraps perplexity stderr in a multiprocessing pool of cpu_count workers even for a
    # single chunk of draws; in-process is faster at our bootstrap size and safe inside DataLoader
    # workers, accelerate launches and pytest.
    old_multiproc = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if old_multiproc is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = old_multiproc
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if was_training:
            model.train()


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: str | Iterable[str],
    *,
    limit: int | float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    num_fewshot: int | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    eval_dir: str | Path | None = None,
) -> EvalReport:
    """Score an in-memory model on lm-eval tasks (local names first, then lm-eval's builtin ones).

    ``limit``: first N items per task (or a fraction if < 1). The model's train/eval mode and the
    global RNG states are as before on return, so this is safe to call in the middle of training.
    The tokenizer must be passed: HFLM would otherwise try to fetch one from ``name_or_path``.
    """
    names = check_task_names(tasks)
    if batch_size < 1 or max_length < 1:
        raise LifecycleError("batch_size and max_length must be positive")
    local = set(local_task_names())
    if all(n in local for n in names):
        ensure_offline_defaults()

    import lm_eval
    import lm_eval.evaluator
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    # lm-eval records `git describe` of the current directory, printing "fatal: not a git repository"
    # outside one; the caller's working directory says nothing about this model, so skip it quietly.
    lm_eval.evaluator.get_git_commit_hash = lambda: None

    eval_path = Path(eval_dir).expanduser().resolve() if eval_dir else _default_eval_dir()
    _check_data_files([n for n in names if n in local], eval_path)
    with rendered_tasks(eval_path) as include_dir, _preserved_state(model):
        manager = task_manager_for(names, include_dir)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                # keep the caller's RNG streams; few-shot picks still use lm-eval's own seeded sampler
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
        except Exception as exc:
            builtin = [n for n in names if n not in local]
            if builtin and _offline():
                raise LifecycleError(
                    f"lm-eval task {', '.join(builtin)} failed in offline mode (HF_HUB_OFFLINE=1); builtin tasks "
                    f"download their data, set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 when online: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
            raise
    if results is None:  # non-zero rank under a distributed launch
        raise LifecycleError("lm-eval returned no results (not the main process?)")
    raw = json.loads(json.dumps(results, default=handle_non_serializable))
    scores = scores_from_results(raw.get("results", {}))
    settings = {
        "tasks": names,
        "limit": limit,
        "batch_size": batch_size,
        "max_length": max_length,
        "num_fewshot": num_fewshot,
        "bootstrap_iters": bootstrap_iters,
        "n_samples": {t: v.get("effective") for t, v in raw.get("n-samples", {}).items()},
        "task_versions": raw.get("versions", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None) or raw.get("lm_eval_version"),
        "data_dir": str(eval_path),
    }
    return EvalReport(scores=scores, settings=settings, raw=raw)


# --------------------------------------------------------------------------------------------------
# helpers for commands that score their own output


def score_and_record(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    tasks: str | Iterable[str] | None,
    limit: int | float | None = None,
    *,
    write_card: bool = True,
    console: Any = None,
    **kwargs: Any,
) -> EvalReport | None:
    """Score a just-written checkpoint with its in-memory model and store the result beside it.

    Writes ``<out_dir>/eval_results.json`` and, when ``write_card`` and the folder is a lifecycle
    checkpoint (has ``lifecycle.json``) or has no README yet, merges the scores into the model card.
    ``kwargs`` go to :func:`evaluate` (batch_size, max_length, num_fewshot, ...). No tasks -> None.
    """
    names = parse_task_list(tasks or [])
    if not names:
        return None
    out = Path(out_dir)
    report = evaluate(model, tokenizer, names, limit=limit, **kwargs)
    report.to_json(out / EVAL_RESULTS_FILE)
    if write_card:
        record_scores(out, report)
    if console is not None:
        report.print_table(console, title=f"lm-eval: {out}")
    return report


def record_scores(folder: str | Path, report: EvalReport) -> bool:
    """Merge scores into the folder's lineage and card; returns False when the card was left alone.

    A plain Hugging Face folder with its own README.md (a downloaded model) keeps its card: only
    lifecycle checkpoints, or folders with no card at all, get one rendered.
    """
    from lifecycle.model.card import LINEAGE_FILE, record_eval

    folder = Path(folder)
    if not (folder / LINEAGE_FILE).is_file() and (folder / "README.md").is_file():
        return False
    card_settings = {k: v for k, v in report.settings.items() if k not in ("task_versions", "data_dir")}
    record_eval(folder, report.scores, card_settings)
    return True


def evaluate_folder(
    path: str | Path,
    tasks: str | Iterable[str],
    limit: int | float | None = None,
    *,
    write_card: bool = True,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    console: Any = None,
    **kwargs: Any,
) -> EvalReport:
    """Load a checkpoint folder, score it, and store the results beside it (see score_and_record)."""
    from lifecycle.model.io import load_model

    loaded = load_model(str(path), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    report = score_and_record(
        loaded.model, loaded.tokenizer, path, tasks, limit, write_card=write_card, console=console, **kwargs
    )
    assert report is not None
    return report
