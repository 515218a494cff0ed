"""Weight files read without loading them: safetensors headers (and their sharded index) and GGUF
metadata, bounds-checked so that a truncated or corrupt file is named in one line before any work."""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from lifecycle.errors import LifecycleError
from lifecycle.model.specs import _first_line


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
