"""Where lifecycle finds the shared benchmark data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

from lifecycle.errors import LifecycleError

_PACKAGE_ROOT = Path(__file__).resolve().parent


def shared_data_dir(required: bool = True) -> Path | None:
    """The folder holding ``eval/`` and ``corpora/`` (the project's ``../shared/data``).

    Looked up, in order: ``$LIFECYCLE_DATA_DIR``; ``shared/data`` beside or above the current
    directory; ``shared/data`` beside or above the source checkout. Data is read in place, never copied.
    """
    env = os.environ.get("LIFECYCLE_DATA_DIR")
    if env:
        path = Path(env).expanduser().resolve()
        if path.is_dir():
            return path
        raise LifecycleError(f"LIFECYCLE_DATA_DIR={env} is not a folder")
    starts = [Path.cwd().resolve(), _PACKAGE_ROOT.parent]
    for start in starts:
        for folder in [start, *start.parents]:
            for candidate in (folder / "shared" / "data", folder.parent / "shared" / "data"):
                if (candidate / "eval").is_dir() or (candidate / "corpora").is_dir():
                    return candidate
    if required:
        raise LifecycleError(
            "shared data folder not found: set LIFECYCLE_DATA_DIR to the folder holding eval/ and corpora/"
        )
    return None


def cache_dir() -> Path:
    """Cache for tokenized data, trained tokenizers and importance scores (``$LIFECYCLE_CACHE``)."""
    base = os.environ.get("LIFECYCLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lifecycle"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path
