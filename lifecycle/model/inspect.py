"""What can be known about a model without loading its weights: its config, positions, tokenizer, and
whether its files are consistent (headers readable, shapes matching the config). Preflight uses it;
:func:`lifecycle.model.io.load_model` runs it first, so every load fails the same clear way."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from lifecycle.errors import LifecycleError
from lifecycle.model.card import LINEAGE_FILE
from lifecycle.model.files import TensorHeader, _gguf_config, check_safetensors_folder, read_gguf_metadata
from lifecycle.model.specs import BUILTIN_MODELS, _first_line, _looks_like_hub_id, _offline, _read_magic, resolve_model_spec
from lifecycle.model.adapter import check_supported_config

# -- inspect_model -------------------------------------------------------------------------------------

TOKENIZER_VOCAB_FILES = ("tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                         "tekken.json")
_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")


@dataclass
class ModelInfo:
    """What :func:`inspect_model` found out about a model without loading its weights."""

    source: str  # absolute folder or GGUF path, or the Hub id
    kind: str  # "folder" | "gguf" | "builtin" | "hub"
    config: Any  # a transformers PretrainedConfig, or None when it cannot be known offline
    max_positions: int | None  # max_position_embeddings
    vocab_size: int | None
    has_tokenizer: bool
    location: str = ""  # what from_pretrained is given: the folder (the GGUF's folder) or the Hub id
    gguf_file: str | None = None  # the GGUF file name inside ``location``
    weight_files: tuple[str, ...] = ()  # the weight files checked (names inside the folder)
    num_parameters: int | None = None  # stored parameters, from the headers (a tied head counted once)
    lineage: dict = field(default_factory=dict)  # the folder's lifecycle.json, if it has one


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise LifecycleError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LifecycleError(f"{path} is not UTF-8 text (byte {exc.start}); {what}") from None
    except json.JSONDecodeError as exc:
        raise LifecycleError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {what}") from None


def _info_from_config(config: Any, **fields: Any) -> ModelInfo:
    max_positions = getattr(config, "max_position_embeddings", None) if config is not None else None
    vocab = getattr(config, "vocab_size", None) if config is not None else None
    return ModelInfo(config=config, max_positions=max_positions, vocab_size=vocab, **fields)


def inspect_model(
    spec: str,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    check_architecture: bool = True,
    revision: str | None = None,
) -> ModelInfo:
    """Everything that can be checked about a model without loading its weights (a fast preflight).

    A folder: config.json is valid JSON and (unless ``check_architecture=False``) a supported
    architecture; the weights exist (safetensors, pickles only with ``allow_pickle``); every
    safetensors header is readable and the data it describes is all there; the model the config
    describes (built on the meta device, no memory) has exactly the tensor names and shapes the
    headers list (a tied head may be absent); a tokenizer is there. A GGUF file (or a built-in
    model): the magic, the metadata and tensor table, that no tensor runs past the end of the file,
    the architecture and a tokenizer in the metadata. A Hub id: its config if it is cached (or, when
    online, downloadable); ``config`` is None when it cannot be known offline.

    Every problem is a one-line :class:`LifecycleError` naming the file.
    """
    spec = str(spec)
    builtin = spec.lower() in BUILTIN_MODELS
    location, gguf_file = resolve_model_spec(spec)
    local = Path(location).expanduser()
    if gguf_file:
        path = local / gguf_file
        return _remembered(("gguf", str(path), builtin, trust_remote_code, check_architecture), _file_signature(path),
                           lambda: _inspect_gguf(path, "builtin" if builtin else "gguf", trust_remote_code, check_architecture))
    if local.exists():
        if not local.is_dir():
            if _read_magic(local) == b"GGUF":
                raise LifecycleError(f"{spec} is a GGUF file without the .gguf suffix: pass it as gguf:{spec}")
            raise LifecycleError(f"{spec} is a file, not a model folder or a .gguf file")
        return _remembered(("folder", str(local.resolve()), allow_pickle, trust_remote_code, check_architecture),
                           _folder_signature(local),
                           lambda: _inspect_folder(local, allow_pickle, trust_remote_code, check_architecture))
    if _looks_like_hub_id(location):
        return _inspect_hub(location, revision, trust_remote_code, check_architecture)
    raise LifecycleError(f"model not found: {spec} (no such folder, GGUF file or Hub id)")


# A command inspects the same input several times (preflight, the method's own checks, the load), and
# a folder inspection reads every header and builds the model on the meta device: remember the answer
# while the files are unchanged (same names, sizes and modification times).
_REMEMBERED: dict[tuple, tuple[Any, ModelInfo]] = {}


def _file_signature(path: Path) -> Any:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _folder_signature(folder: Path) -> Any:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    signature = []
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            return None
        signature.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(sorted(signature))


def _remembered(key: tuple, signature: Any, inspect: Any) -> ModelInfo:
    if signature is not None:
        hit = _REMEMBERED.get(key)
        if hit is not None and hit[0] == signature:
            return _copy(hit[1])
    info = inspect()  # errors are not remembered: a fixed input is inspected again
    if signature is not None:
        if len(_REMEMBERED) > 64:
            _REMEMBERED.clear()
        _REMEMBERED[key] = (signature, info)
    return _copy(info)


def _copy(info: ModelInfo) -> ModelInfo:
    """Callers own what they get: a change to its config or lineage never reaches the remembered one."""
    return dataclasses.replace(info, config=copy.deepcopy(info.config), lineage=copy.deepcopy(info.lineage))


def _inspect_gguf(path: Path, kind: str, trust_remote_code: bool, check_architecture: bool) -> ModelInfo:
    info = read_gguf_metadata(path)
    arch = info.architecture
    if check_architecture and arch not in ("llama", "qwen2", "mistral"):
        check_supported_config(SimpleNamespace(model_type=arch))  # raises the usual message
    if not info.has_tokenizer:
        raise LifecycleError(f"{path} has no tokenizer in its metadata (tokenizer.ggml.*): re-convert it with its tokenizer")
    config = _gguf_config(info, trust_remote_code)
    if check_architecture:
        check_supported_config(config)
    params = sum(math.prod(s) for name, s in info.tensors.items() if name != "rope_freqs.weight")
    return _info_from_config(
        config, source=str(path.resolve()), kind=kind, has_tokenizer=True, location=str(path.resolve().parent),
        gguf_file=path.name, weight_files=(path.name,), num_parameters=params,
    )


def _inspect_hub(repo_id: str, revision: str | None, trust_remote_code: bool, check_architecture: bool) -> ModelInfo:
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    config = None
    try:
        config = AutoConfig.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except OSError:  # not in the cache
        if not _offline():
            try:
                config = AutoConfig.from_pretrained(repo_id, **kwargs)
            except OSError as exc:
                raise LifecycleError(f"cannot load model config from {repo_id}: {_first_line(exc)}") from None
            except (ValueError, KeyError) as exc:
                raise LifecycleError(f"cannot read model {repo_id}: {_first_line(exc)}") from None
    except (ValueError, KeyError) as exc:
        raise LifecycleError(f"cannot read model {repo_id}: {_first_line(exc)}") from None
    if config is not None and check_architecture:
        check_supported_config(config)
    has_tokenizer = False
    try:
        from huggingface_hub import try_to_load_from_cache

        has_tokenizer = any(
            isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)
            for name in ("tokenizer.json", "tokenizer_config.json")
        )
    except Exception:  # noqa: BLE001 - the cache lookup is informative only
        has_tokenizer = False
    return _info_from_config(config, source=repo_id, kind="hub", has_tokenizer=has_tokenizer, location=repo_id)


def _inspect_folder(folder: Path, allow_pickle: bool, trust_remote_code: bool, check_architecture: bool) -> ModelInfo:
    from transformers import AutoConfig

    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / "adapter_config.json").is_file():
            raise LifecycleError(f"{folder} is a PEFT adapter (adapter_config.json), not a model: merge it into its base model first")
        raise LifecycleError(f"{folder} has no config.json: not a Hugging Face model folder")
    raw = _read_json_file(config_path, "fix it or save the model again")
    if not isinstance(raw, dict):
        raise LifecycleError(f"{config_path} is not a JSON object: fix it or save the model again")
    if check_architecture:
        check_supported_config(SimpleNamespace(model_type=raw.get("model_type")))

    has_tokenizer = (folder / "tokenizer.json").is_file() or (
        (folder / "tokenizer_config.json").is_file() and any((folder / n).is_file() for n in TOKENIZER_VOCAB_FILES)
    )
    if not has_tokenizer:
        raise LifecycleError(
            f"{folder} has no tokenizer (tokenizer.json, or tokenizer_config.json with its vocabulary files): "
            "save the tokenizer into the folder (tokenizer.save_pretrained)"
        )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            _read_json_file(folder / name, "save the tokenizer again")

    lineage: dict = {}
    if (folder / LINEAGE_FILE).is_file():
        lineage = _read_json_file(folder / LINEAGE_FILE, "fix it or delete it")
        if not isinstance(lineage, dict):
            raise LifecycleError(f"{folder / LINEAGE_FILE} is not a JSON object: fix it or delete it")

    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = sorted(p.name for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))
    tensors: dict[str, tuple[str, TensorHeader]] | None = None
    if has_safetensors or not pickles:
        tensors = check_safetensors_folder(folder)
    elif not allow_pickle:
        raise LifecycleError(
            f"{folder} holds only pickled weights (.bin); these can run code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the source"
        )

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LifecycleError(f"cannot read {config_path}: {_first_line(exc)}") from None
    if check_architecture:
        check_supported_config(config)
    if tensors is not None and "quantization_config" not in raw:  # quantized weights are packed: other shapes
        _compare_with_config(folder, config, tensors, trust_remote_code)

    if tensors is not None:
        weight_files = tuple(sorted({file for file, _ in tensors.values()}))
        params = sum(math.prod(h.shape) for _, h in tensors.values())
    else:
        weight_files, params = tuple(pickles), None
    return _info_from_config(
        config, source=str(folder.resolve()), kind="folder", has_tokenizer=True, location=str(folder),
        weight_files=weight_files, num_parameters=params, lineage=lineage,
    )


def _compare_with_config(folder: Path, config: Any, tensors: dict[str, tuple[str, TensorHeader]], trust_remote_code: bool) -> None:
    """The model ``config`` describes, built on the meta device, against the safetensors headers."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here means the config cannot describe a model
        raise LifecycleError(f"{folder / 'config.json'} does not describe a model transformers can build: {_first_line(exc)}") from None
    tied: dict[str, list[str]] = {}
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    for names in groups.values():
        for name in names:
            tied[name] = names
    parameters = set(tied)
    prefix = getattr(model, "base_model_prefix", "") or ""
    for name, expected in model.state_dict().items():
        key = name
        if key not in tensors and prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in tensors:
            key = name[len(prefix) + 1:]  # a checkpoint of the bare decoder (no "model." prefix)
        if key not in tensors:
            if any(other in tensors for other in tied.get(name, ())) or name not in parameters:
                continue  # a tied head stored once, or a buffer the checkpoint need not hold
            raise LifecycleError(
                f"{folder}: the weights have no tensor '{name}', which config.json needs "
                "(incomplete weights, or a config from another model)"
            )
        file, header = tensors[key]
        if tuple(header.shape) != tuple(expected.shape):
            raise LifecycleError(
                f"{folder}: '{key}' is {list(header.shape)} in {file} but config.json needs {list(expected.shape)}; "
                "the config and the weights are from different models"
            )
