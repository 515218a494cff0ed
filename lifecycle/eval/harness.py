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
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator


from lifecycle.errors import LifecycleError
from lifecycle.eval.task_files import (  # noqa: F401  (the task API, re-exported from here)
    TEMPLATE_DIR, _check_data_files, _default_eval_dir, check_task_names, local_task_names, parse_task_list, render_tasks,
    rendered_tasks, task_manager_for, user_task_names, wikitext_jsonl,
)

EVAL_RESULTS_FILE = "eval_results.json"

DEFAULT_BATCH_SIZE = 8
# Rolling perplexity would otherwise use the model's full context (8192 for SmolLM2), which is very
# slow on CPU; 1024 keeps windows short and matches the reference numbers in shared/data/README.md.
DEFAULT_MAX_LENGTH = 1024
# >0 gives closed-form stderr for mean metrics (acc, acc_norm: free) and a bootstrap for `perplexity`
# (LAMBADA); 1000 draws take about a second on 5k items. Word/byte perplexity never get a stderr.
DEFAULT_BOOTSTRAP_ITERS = 1000

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


def gsm8k_nll_process_results(doc: dict, results: list) -> dict:
    """GSM8K answer NLL (tasks/gsm8k_answer_nll.yaml): -log p(answer | question) of one problem, in nats.

    lm-eval's loglikelihood result is ``(sum of the continuation's token log-probs, is_greedy)``; the
    task averages this per-answer value over problems."""
    loglikelihood, _ = results[0]
    return {"answer_nll": -float(loglikelihood)}


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
        """Write scores, settings and the raw lm-eval results (atomically) and return the path.

        An existing folder gets ``<folder>/eval_results.json``. The file is written through a unique
        temp file beside it (removed on failure) and keeps the mode of the file it replaces.
        """
        return _write_results(path, json.dumps(self.to_dict(), indent=2, default=str))

    def print_table(self, console: Any = None, title: str | None = None) -> None:
        """One row per (task, metric) with ± stderr and the number of items scored."""
        from rich.console import Console
        from rich.table import Table

        from lifecycle.display import count, number

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
                table.add_row(task, metric, number(value), number(err) if err is not None else "",
                              count(n_samples.get(task, "")))
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
            if filter_name != "none":  # "exact_match_stderr,strict-match" -> exact_match_strict-match_stderr
                stderr = metric.endswith("_stderr")
                metric = f"{metric.removesuffix('_stderr')}_{filter_name}" + ("_stderr" if stderr else "")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "N/A" stderr
            if metric.endswith("_stderr") and not math.isfinite(value):
                continue
            metrics[metric] = float(value)
        if metrics:  # a group without aggregate metrics (gsm8k: its two tasks have them) adds no empty row
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
    include_path: str | Path | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score an in-memory model on lm-eval tasks (local names first, then lm-eval's builtin ones).

    ``limit``: first N items per task (or a fraction if < 1). The model's train/eval mode and the
    global RNG states are as before on return, so this is safe to call in the middle of training.
    The tokenizer must be passed: HFLM would otherwise try to fetch one from ``name_or_path``.
    lm-eval's own bars, prints and warnings are replaced by one progress line (none with
    ``progress=False``); see :mod:`lifecycle.eval.quiet`.
    """
    names = check_task_names(tasks, include_path)
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
    from lifecycle.eval.quiet import lm_eval_output

    items = "" if limit is None else f" ({limit:g} items each)" if limit >= 1 else f" ({limit:.0%} of each)"
    with rendered_tasks(eval_path) as include_dir, _preserved_state(model), \
            lm_eval_output(f"lm-eval: scoring {', '.join(names)}{items}", progress=progress):
        manager = task_manager_for(names, include_dir, include_path)
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
    if include_path:
        settings["include_path"] = str(Path(include_path).expanduser().resolve())
    return EvalReport(scores=scores, settings=settings, raw=raw)


# --------------------------------------------------------------------------------------------------
# helpers for commands that score their own output


def results_path(path: str | Path) -> Path:
    """Where results for ``path`` go: ``<path>/eval_results.json`` for an existing folder (or a path
    written with a trailing slash), else ``path`` itself."""
    text = str(path)
    target = Path(text).expanduser()
    # os.path.isdir, unlike Path.is_dir on Python 3.11, never raises (EACCES: the write check reports it)
    if os.path.isdir(target) or text.endswith(("/", os.sep)):
        return target / EVAL_RESULTS_FILE
    return target


def check_writable_output(path: str | Path, hint: str = "") -> Path:
    """Fail early, with a one-line :class:`LifecycleError`, if results cannot be written to ``path``.

    Called before the (slow) model load and evaluation. Catches a path under an existing file
    (``/etc/passwd/x``), a target that is a folder, and a location where no file can be created
    (read-only filesystem, no permission, /proc): a probe file is created and removed in the nearest
    existing folder, so the check asks the filesystem rather than guessing from mode bits (root
    passes permission checks that a read-only mount still refuses). Returns the file path to write.
    """
    target = results_path(path)
    suffix = f"; {hint}" if hint else ""
    if os.path.isdir(target):
        raise LifecycleError(f"cannot write results to {target}: it is a folder{suffix}")
    ancestor = target.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        what = "a file, not a folder" if os.path.isfile(ancestor) else "not a folder"
        raise LifecycleError(f"cannot write results to {target}: {ancestor} is {what}{suffix}")
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".lifecycle-write-check-", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LifecycleError(f"cannot write results to {target}: {ancestor} is not writable ({reason}){suffix}") from exc
    os.close(fd)
    os.unlink(probe)
    return target


def _write_results(path: str | Path, text: str) -> Path:
    from lifecycle.model.card import write_text_atomic

    target = results_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    return target


def manages_card(folder: str | Path) -> bool:
    """True for a lifecycle checkpoint (has ``lifecycle.json``) or a folder without any README.md;
    a plain Hugging Face folder with its own card (a downloaded model) is never rewritten."""
    from lifecycle.model.card import LINEAGE_FILE

    folder = Path(folder)
    return (folder / LINEAGE_FILE).is_file() or not (folder / "README.md").is_file()


def results_document(report: EvalReport, lineage: dict) -> dict[str, Any]:
    """``eval_results.json`` of a checkpoint whose card is kept: the same ``scores`` (the headline)
    and ``settings`` (``eval_settings``) as the card, every run in ``records``, and lm-eval's raw
    results of this run (the last record) under ``lm_eval``."""
    return {
        "scores": lineage.get("eval", {}),
        "settings": lineage.get("eval_settings", {}),
        "records": lineage.get("eval_records", []),
        "lm_eval": report.raw,
    }


def score_and_record(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    tasks: str | Iterable[str] | None,
    limit: int | float | None = None,
    *,
    write_card: bool = True,
    replace_scores: bool = False,
    console: Any = None,
    **kwargs: Any,
) -> EvalReport | None:
    """Score a just-written checkpoint with its in-memory model and store the result beside it.

    When ``write_card`` and the folder's card is ours (:func:`manages_card`), the run is added to the
    lineage and card (:func:`record_scores`) and ``<out_dir>/eval_results.json`` is rewritten to agree
    with them; otherwise ``eval_results.json`` holds this run alone. ``replace_scores``: see
    :func:`lifecycle.model.card.add_eval_record`. ``kwargs`` go to :func:`evaluate` (batch_size,
    max_length, num_fewshot, ...). No tasks -> None.
    """
    names = parse_task_list(tasks or [])
    if not names:
        return None
    out = Path(out_dir)
    report = evaluate(model, tokenizer, names, limit=limit, **kwargs)
    if not (write_card and record_scores(out, report, replace=replace_scores)):
        report.to_json(out / EVAL_RESULTS_FILE)
    if console is not None:
        report.print_table(console, title=f"lm-eval: {out}")
    return report


def record_scores(
    folder: str | Path, report: EvalReport, *, replace: bool = False, copies: Iterable[str | Path] = ()
) -> bool:
    """Add the run to the folder's lineage and card, and rewrite its ``eval_results.json`` to match;
    returns False (and writes nothing) when the card is not ours (see :func:`manages_card`).

    ``lifecycle.json``, ``README.md`` and ``eval_results.json`` are all rendered before any is
    replaced. ``copies``: more paths (a folder means ``<folder>/eval_results.json``) that get the
    same ``eval_results.json`` text, written after the folder's files.
    """
    from lifecycle.model.card import record_eval

    folder = Path(folder)
    if not manages_card(folder):
        return False
    card_settings = {k: v for k, v in report.settings.items() if k != "data_dir"}
    texts: dict[str, str] = {}

    def results_file(lineage: dict) -> dict[str, str]:
        texts["results"] = json.dumps(results_document(report, lineage), indent=2, default=str)
        return {EVAL_RESULTS_FILE: texts["results"]}

    record_eval(folder, report.scores, card_settings, replace=replace, extra=results_file)
    own = (folder / EVAL_RESULTS_FILE).resolve()
    for copy in copies:
        if results_path(copy).resolve() != own:
            _write_results(copy, texts["results"])
    return True


def evaluate_folder(
    path: str | Path,
    tasks: str | Iterable[str],
    limit: int | float | None = None,
    *,
    write_card: bool = True,
    replace_scores: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    console: Any = None,
    **kwargs: Any,
) -> EvalReport:
    """Load a checkpoint folder, score it, and store the results beside it (see score_and_record).

    The folder is checked for writability before the model is loaded."""
    from lifecycle.model.io import load_model

    check_writable_output(Path(path) / EVAL_RESULTS_FILE)
    loaded = load_model(str(path), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    report = score_and_record(
        loaded.model, loaded.tokenizer, path, tasks, limit, write_card=write_card, replace_scores=replace_scores,
        console=console, **kwargs
    )
    assert report is not None
    return report
