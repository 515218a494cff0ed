"""The command line's one error boundary: every failure becomes one line and a non-zero exit.

:func:`run_guarded` runs the Typer app and maps what can go wrong to what a user should see:

* usage errors (the click that Typer bundles): Typer's short usage message, exit 2;
* :class:`~lifecycle.errors.LifecycleError`: ``error: <one line>``, its exit code (2 by default;
  130/143 for an interrupted training run, which has written a resumable checkpoint);
* known library failures (a safetensors header, JSON or YAML that does not parse, bytes that are not
  UTF-8, an OS error on a path, a full disk, no memory): one line naming what and where, exit 1;
* Ctrl-C or SIGTERM anywhere else: ``interrupted``, exit 130 or 143;
* anything else: one line with the exception, and how to see the traceback (``LIFECYCLE_DEBUG=1``),
  exit 1. ``LIFECYCLE_DEBUG=1`` re-raises every error with its traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any, Callable

from lifecycle.errors import LifecycleError


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which handles it itself)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe_known_failure(exc: BaseException) -> str | None:
    """One line for the library failures a user's input causes, or None for a real bug."""
    import json

    name = type(exc).__name__
    if name == "SafetensorError" or "safetensors" in type(exc).__module__:
        return f"cannot read a safetensors file: {_first_line(exc)} (is it truncated or not safetensors?)"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if type(exc).__module__.startswith("yaml"):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return f"invalid YAML{where}: {getattr(exc, 'problem', None) or _first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return (f"text is not {exc.encoding}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} "
                f"({exc.reason}); convert it to UTF-8")
    if isinstance(exc, MemoryError):
        return "out of memory: use a smaller model, batch or block size"
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "disk full: free space and run again (outputs are written atomically; nothing half-written was left)"
        target = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or _first_line(exc) or name
        return f"{target}: {reason}" if target else reason
    return None


def _print_error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {message}", highlight=False, markup=True)


def _usage_exceptions() -> tuple[type, ...]:
    kinds: list[type] = []
    try:  # typer >= 0.16 bundles its own click
        from typer._click.exceptions import ClickException

        kinds.append(ClickException)
    except ImportError:
        pass
    try:
        from click.exceptions import ClickException as PlainClickException

        kinds.append(PlainClickException)
    except ImportError:
        pass
    return tuple(kinds)


def _exit_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    exits, aborts = [], []
    try:
        import typer.exceptions as te

        exits.append(te.Exit)
        aborts.append(te.Abort)
    except (ImportError, AttributeError):
        pass
    try:
        import click.exceptions as ce

        exits.append(ce.Exit)
        aborts.append(ce.Abort)
    except (ImportError, AttributeError):
        pass
    return tuple(exits), tuple(aborts)


def run_guarded(app: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run ``app`` (a Typer app) and return the process exit code; see the module docstring."""
    debug = os.environ.get("LIFECYCLE_DEBUG", "") not in ("", "0")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    usage = _usage_exceptions()
    exits, aborts = _exit_exceptions()
    try:
        result = app(args=argv, prog_name="lifecycle", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except usage as exc:  # type: ignore[misc]
        exc.show()
        return int(getattr(exc, "exit_code", 2) or 2)
    except exits as exc:  # type: ignore[misc]
        return int(getattr(exc, "exit_code", 0))
    except LifecycleError as exc:
        if debug:
            raise
        _print_error(str(exc))
        return exc.exit_code
    except Terminated:
        _print_error("terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    except (KeyboardInterrupt, *aborts):  # type: ignore[misc]
        cause = sys.exc_info()[1]
        if isinstance(getattr(cause, "__context__", None), Terminated):
            _print_error("terminated (SIGTERM)")
            return 128 + signal.SIGTERM
        _print_error("interrupted")
        return 128 + signal.SIGINT
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes as a traceback
        if debug:
            raise
        known = describe_known_failure(exc)
        if known is not None:
            _print_error(known)
        else:
            _print_error(f"unexpected {type(exc).__name__}: {_first_line(exc) or 'no message'} "
                         "(this is a bug; LIFECYCLE_DEBUG=1 shows the traceback)")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Terminated", "describe_known_failure", "run_guarded"]
