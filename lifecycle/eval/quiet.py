"""One progress display for an lm-eval run instead of lm-eval's own output.

lm-eval draws a tqdm bar per phase, and ``loglikelihood_rolling`` (wikitext, lambada's perplexity)
one more per *batch*; it ``print``s "bootstrapping for stddev" for every bootstrapped metric, logs
warnings about being handed a model object (which is how lifecycle always calls it), and datasets
adds "Generating test split" and map bars: dozens of lines per evaluation, interleaved with ours.

:func:`lm_eval_output` replaces all of that, for the duration of one call, by a single rich progress
line whose description follows lm-eval's phase. Errors stay visible: exceptions propagate untouched,
records at ERROR and above from lm-eval's loggers still print, and whatever lm-eval printed is shown
on stderr if the evaluation fails (it may explain the failure).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator

# lm-eval's phase names as a user would say them.
_PHASES = {
    "Tokenizing inputs": "tokenizing",
    "Running loglikelihood requests": "scoring",
    "Running generate_until requests": "generating",
    "Checking cached requests": "reading the cache",
}
_QUIET_LOGGERS = ("lm_eval", "lm-eval", "datasets", "evaluate")


class _Display:
    """Where the silenced bars report: one rich task, or nothing when ``live`` is None."""

    def __init__(self, live: Any, task: Any) -> None:
        self.live, self.task = live, task
        self.phase: str | None = None
        self.total = 0.0
        self.done = 0.0

    def start(self, phase: str, total: Any) -> None:
        # Consecutive bars of one phase (rolling loglikelihood opens one per batch) add up to one.
        if phase != self.phase:
            self.phase, self.total, self.done = phase, 0.0, 0.0
        self.total += float(total or 0)
        self._show()

    def advance(self, n: float) -> None:
        self.done += n
        self._show()

    def _show(self) -> None:
        if self.live is not None:
            self.live.update(self.task, description=f"lm-eval: {self.phase}", total=self.total or None,
                             completed=self.done)


def _bar_class(display: _Display) -> type:
    """A stand-in for ``tqdm.tqdm``: the same calls lm-eval makes, drawn into ``display``."""

    class Bar:
        def __init__(self, iterable: Any = None, desc: str | None = None, total: Any = None, *args: Any, **kwargs: Any):
            self.iterable = iterable
            if total is None and iterable is not None and hasattr(iterable, "__len__"):
                total = len(iterable)
            self.total, self.n, self.disable = total, 0, False
            text = str(desc or "").rstrip(": ")
            display.start(_PHASES.get(text, text or display.phase or "computing"), total)

        def __iter__(self) -> Iterator[Any]:
            for item in self.iterable:
                yield item
                self.update(1)

        def __len__(self) -> int:
            return int(self.total or 0)

        def __enter__(self) -> "Bar":
            return self

        def __exit__(self, *exc: Any) -> None:
            self.close()

        def update(self, n: float = 1) -> None:
            self.n += n
            display.advance(n)

        def close(self) -> None:
            pass

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            pass

        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            pass

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        @staticmethod
        def write(text: str, *args: Any, **kwargs: Any) -> None:
            pass

    return Bar


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = obj.__dict__.get(name, missing) if hasattr(obj, "__dict__") else getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextlib.contextmanager
def _live_progress(description: str, show: bool) -> Iterator[_Display]:
    """A transient rich progress line on the console the training bar uses, unless one is live there
    already (a mid-training evaluation) or ``show`` is False."""
    from rich import get_console

    console = get_console()
    if not show or getattr(console, "_live_stack", None) or getattr(console, "_live", None):
        yield _Display(None, None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not console.is_terminal:  # a log file gets one line, not a redrawn bar
        console.print(description, markup=False, highlight=False)
        yield _Display(None, None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    with progress:
        task = progress.add_task(description, total=None)
        yield _Display(progress, task)


@contextlib.contextmanager
def lm_eval_output(description: str, *, progress: bool = True) -> Iterator[None]:
    """Silence lm-eval's and datasets' bars, prints and warnings; show one progress line instead.

    ``progress=False`` shows nothing at all (errors still do)."""
    import io

    import tqdm
    import tqdm.auto

    captured = io.StringIO()

    with contextlib.ExitStack() as stack, _live_progress(description, progress) as display:

        def lm_eval_print(*args: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
            if file is not None and file not in (sys.stdout, sys.stderr):
                print(*args, sep=sep, end=end, file=file, flush=flush)  # lm-eval writing a file of its own
                return
            text = sep.join(str(a) for a in args)
            captured.write(text + end)
            if text.startswith("bootstrapping for stddev"):
                display.start("bootstrapping stderr", 0)

        bar = _bar_class(display)
        # `from tqdm import tqdm` at import time (most of lm-eval) and inside functions (its bootstrap)
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("lm_eval") and module is not None:
                if getattr(module, "tqdm", None) in (tqdm.tqdm, tqdm.auto.tqdm):
                    stack.enter_context(_patched(module, "tqdm", bar))
                if "print" not in vars(module):
                    stack.enter_context(_patched(module, "print", lm_eval_print))
        stack.enter_context(_patched(tqdm, "tqdm", bar))
        stack.enter_context(_patched(tqdm.auto, "tqdm", bar))
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        try:
            import datasets

            if datasets.is_progress_bar_enabled():
                datasets.disable_progress_bars()
                stack.callback(datasets.enable_progress_bars)
        except ImportError:
            pass
        try:
            yield
        except BaseException:
            if captured.getvalue().strip():
                sys.stderr.write(captured.getvalue())
            raise


__all__ = ["lm_eval_output"]
