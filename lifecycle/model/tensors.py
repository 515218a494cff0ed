"""Tensor-level model I/O: read and write checkpoints one tensor at a time (for merging).

Merging (mergekit-style) combines models parameter by parameter, so it never needs a whole model in
memory: :class:`TensorReader` serves one tensor by its Hugging Face name, memory-mapped from
safetensors (``safe_open`` reads only that tensor's bytes) or dequantized on demand from a GGUF file,
and :class:`ShardedWriter` holds at most ``max_shard_bytes`` of output before flushing a shard. Peak
memory is one shard plus the few input tensors being combined. Pickled weights are never opened.

Output is atomic like :func:`lifecycle.model.io.save_checkpoint`: shards go into a temporary sibling
folder, which is reloaded with ``AutoModelForCausalLM.from_pretrained`` to prove every parameter is
present and only then renamed into place; any failure removes the temporary folder, leaving nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lifecycle.errors import LifecycleError
from lifecycle.model.card import LINEAGE_FILE, write_model_card
from lifecycle.model.io import BUILTIN_MODELS, _disk_error, prepare_output_dir, resolve_model_spec

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
# GGUF (llama.cpp) tensor names -> Hugging Face names; llama and qwen2 share them.
_GGUF_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# architecture -> whether llama.cpp's converter reordered the Q/K rows (as transformers also assumes)
_GGUF_ARCHS = {"llama": True, "qwen2": False}
_GGUF_DERIVED = {"rope_freqs.weight"}  # recomputed from the config by transformers, not a parameter


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def gguf_to_hf_name(name: str) -> str | None:
    """The Hugging Face parameter name of a llama-family GGUF tensor (None if unknown)."""
    base, _, suffix = name.rpartition(".")
    parts = base.split(".")
    if suffix not in ("weight", "bias"):
        return None
    if base in _GGUF_TOP:
        return f"{_GGUF_TOP[base]}.{suffix}"
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_BLOCK:
        return f"model.layers.{parts[1]}.{_GGUF_BLOCK[parts[2]]}.{suffix}"
    return None


def unpermute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order: per head it stores rows as (half, 2) where HF has (2, half)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


class TensorReader:
    """Lazy, read-only access to a checkpoint's tensors by Hugging Face name.

    ``source``: a folder of safetensors (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``), a ``.gguf`` file (also ``gguf:path``) or a built-in model name.
    """

    def __init__(self, source: str | Path):
        spec = str(source)
        self.gguf_file: Path | None = None
        self._handles: dict[str, Any] = {}  # shard path -> open safe_open handle
        self._where: dict[str, Any] = {}  # HF name -> shard path, or the GGUF ReaderTensor
        self._config: dict | None = None
        if spec.lower() in BUILTIN_MODELS or spec.startswith("gguf:") or spec.lower().endswith(".gguf"):
            folder, filename = resolve_model_spec(spec)
            self.folder = Path(folder)
            self.gguf_file = self.folder / str(filename)
            self.source = str(self.gguf_file)
            self._open_gguf()
            return
        self.folder = Path(spec).expanduser()
        self.source = str(self.folder)
        if not self.folder.is_dir():
            what = "is a file, not a model folder or a .gguf file" if self.folder.exists() else "not found"
            raise LifecycleError(f"model folder {what}: {spec}")
        self._open_safetensors()

    def _open_safetensors(self) -> None:
        folder, index = self.folder, self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise LifecycleError(f"{index} is not a valid safetensors index: {_first_line(exc)}") from None
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise LifecycleError(f"{index} points to a missing shard {shard}")
                self._open_shard(folder / shard)
            self._where = {name: str(folder / shard) for name, shard in weight_map.items()}
        elif (folder / SINGLE_FILE).is_file():
            self._where = dict.fromkeys(self._open_shard(folder / SINGLE_FILE).keys(), str(folder / SINGLE_FILE))
        elif any(any(folder.glob(pattern)) for pattern in ("*.bin", "*.pt", "*.pth")):
            raise LifecycleError(f"{folder} holds only pickled weights (.bin/.pt), which lifecycle never unpickles; "
                                 "convert them to safetensors")
        else:
            raise LifecycleError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}")

    def _open_shard(self, path: Path) -> Any:
        try:  # reads and checks the header only; tensor data stays on disk (memory-mapped)
            handle = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise LifecycleError(f"{path} is truncated or not a safetensors file: {_first_line(exc)}") from None
        self._handles[str(path)] = handle
        return handle

    def _open_gguf(self) -> None:
        from gguf import GGUFReader

        try:
            self._gguf = GGUFReader(self.gguf_file)  # memory-maps the file; nothing is dequantized yet
        except (ValueError, OSError, KeyError) as exc:
            raise LifecycleError(f"cannot read GGUF file {self.gguf_file}: {_first_line(exc)}") from None
        arch = self._gguf_field("general.architecture")
        if arch not in _GGUF_ARCHS:
            raise LifecycleError(f"GGUF architecture '{arch}' is not supported for tensor access "
                                 f"(supported: {', '.join(_GGUF_ARCHS)})")
        self._permute = _GGUF_ARCHS[arch]
        self._heads = int(self._gguf_field(f"{arch}.attention.head_count") or 0)
        self._kv_heads = int(self._gguf_field(f"{arch}.attention.head_count_kv") or self._heads)
        for tensor in self._gguf.tensors:
            hf_name = gguf_to_hf_name(tensor.name)
            if hf_name is not None:
                self._where[hf_name] = tensor
            elif tensor.name not in _GGUF_DERIVED:
                raise LifecycleError(f"GGUF tensor '{tensor.name}' in {self.gguf_file} has no Hugging Face name")

    def _gguf_field(self, key: str) -> Any:
        field = self._gguf.fields.get(key)
        if field is None or not field.data:
            return None
        value = field.parts[field.data[0]]
        return bytes(value).decode() if field.types[0].name == "STRING" else value[0]

    @property
    def config(self) -> dict:
        """The model config as a dict (config.json, or what transformers derives from the GGUF)."""
        if self._config is None:
            if self.gguf_file is not None:
                from transformers import AutoConfig

                self._config = AutoConfig.from_pretrained(self.folder, gguf_file=self.gguf_file.name).to_dict()
            elif (self.folder / "config.json").is_file():
                self._config = json.loads((self.folder / "config.json").read_text())
            else:
                raise LifecycleError(f"{self.folder} has no config.json: not a Hugging Face model folder")
        return self._config

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def _entry(self, name: str) -> Any:
        if name not in self._where:
            raise LifecycleError(f"tensor '{name}' not found in {self.source} ({len(self._where)} tensors there)")
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        entry = self._entry(name)
        if self.gguf_file is not None:
            return tuple(int(n) for n in reversed(entry.shape))  # GGUF lists dimensions innermost first
        return tuple(self._handles[entry].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The dtype :meth:`get` returns (GGUF tensors are dequantized to float32)."""
        entry = self._entry(name)
        if self.gguf_file is not None:
            return torch.float32
        code = self._handles[entry].get_slice(name).get_dtype()
        if code not in _ST_DTYPES:
            raise LifecycleError(f"tensor '{name}' in {self.source} has unsupported dtype {code}")
        return _ST_DTYPES[code]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor; nothing else is loaded."""
        entry = self._entry(name)
        if self.gguf_file is None:
            try:
                return self._handles[entry].get_tensor(name)
            except SafetensorError as exc:
                raise LifecycleError(f"cannot read tensor '{name}' from {entry}: {_first_line(exc)}") from None
        from gguf.quants import dequantize

        try:
            values = dequantize(entry.data, entry.tensor_type)
        except NotImplementedError as exc:
            raise LifecycleError(f"GGUF tensor '{entry.name}': {_first_line(exc)}") from None
        out = torch.from_numpy(values.astype("float32", copy=True)).reshape(self.shape(name))
        if self._permute and (".q_proj." in name or ".k_proj." in name):
            out = unpermute_qk(out, self._heads if ".q_proj." in name else self._kv_heads).contiguous()
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles, self._where, self._gguf = {}, {}, None

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardedWriter:
    """Write a checkpoint tensor by tensor into safetensors shards of at most ``max_shard_bytes``.

    Call :meth:`add` per tensor, then :meth:`finish`. Any failure, or leaving a ``with`` block
    without ``finish``, removes everything written; the output folder only appears complete.
    """

    def __init__(self, output: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False):
        if max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes must be positive")
        self.output = prepare_output_dir(output, overwrite)
        self.overwrite = overwrite
        self.max_shard_bytes = int(max_shard_bytes)
        self.tmp, suffix = self.output.parent / f".{self.output.name}.tmp-{os.getpid()}", 0
        while self.tmp.exists():  # another writer in this process, or a leftover: never touch it
            suffix += 1
            self.tmp = self.output.parent / f".{self.output.name}.tmp-{os.getpid()}-{suffix}"
        self.tmp.mkdir()
        self.total_size = 0
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []  # tensor names per flushed shard
        self._names: set[str] = set()
        self._state = "open"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """On any failure remove the temp folder; disk errors become one-line LifecycleErrors."""
        if self._state != "open":
            raise RuntimeError(f"ShardedWriter for {self.output} is already {self._state}")
        try:
            yield
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self.output) from None
        except SafetensorError as exc:  # safetensors' writer reports I/O errors (ENOSPC too) this way
            self.abort()
            if any(hint in str(exc) for hint in ("os error 28", "No space left")):
                raise LifecycleError(f"disk full while writing {self.output}; nothing was written") from None
            raise LifecycleError(f"cannot write {self.output}: {_first_line(exc)}") from None
        except BaseException:
            self.abort()
            raise

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; a shard that would overflow is flushed first, so memory stays bounded."""
        with self._guard():
            if name in self._names:
                raise LifecycleError(f"tensor '{name}' written twice to {self.output}")
            tensor = tensor.detach().to("cpu").contiguous()
            pointer = tensor.untyped_storage().data_ptr()
            if tensor.numel() and any(t.untyped_storage().data_ptr() == pointer for t in self._pending.values()):
                tensor = tensor.clone()  # safetensors refuses tensors that share memory
            size = tensor.numel() * tensor.element_size()
            if self._pending and self._pending_bytes + size > self.max_shard_bytes:
                self._flush()
            self._names.add(name)
            self._pending[name] = tensor
            self._pending_bytes += size
            self.total_size += size

    def _flush(self) -> None:
        path = self.tmp / f"shard-{len(self._shards) + 1:05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def _name_shards(self) -> None:
        """Final names are known only now: model.safetensors, or model-0000i-of-0000N + index."""
        count = len(self._shards)
        if count == 1:
            os.replace(self.tmp / "shard-00001.safetensors", self.tmp / SINGLE_FILE)
            return
        weight_map = {}
        for number, names in enumerate(self._shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(self.tmp / f"shard-{number:05d}.safetensors", self.tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def finish(self, config: Any, *, tokenizer: Any = None, lineage: dict | None = None,
               extra_files: Mapping[str, str | bytes | Path] | None = None, verify: bool | str = True) -> Path:
        """Write config, tokenizer and card, check the folder loads completely, move it into place.

        ``config``: a transformers config or a dict. ``extra_files``: file name -> text, bytes, or a
        :class:`~pathlib.Path` to copy. ``verify``: True loads the folder with ``from_pretrained``;
        ``"structure"`` checks the same things without reading the weights back (the config builds
        the model on the meta device, every tensor it needs is stored with its shape, every shard's
        header and data are complete, the tokenizer is there), for writers that stream large models
        and must not hold one whole at the end. Returns the output folder.
        """
        with self._guard():
            if self._pending:
                self._flush()
            if not self._shards:
                raise LifecycleError(f"no tensors were written to {self.output}")
            self._name_shards()
            if hasattr(config, "save_pretrained"):
                config.save_pretrained(self.tmp)
            else:
                (self.tmp / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(self.tmp)
            if lineage is not None:
                (self.tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, default=str))
                write_model_card(self.tmp, lineage)
            for filename, content in (extra_files or {}).items():
                target = self.tmp / filename
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    shutil.copyfile(content, target)
                elif isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content)
            if verify == "structure":
                self._verify_structure()
            elif verify:
                self._verify()
            for written in self.tmp.rglob("*"):  # safetensors writes 0600 files; checkpoints are shareable
                written.chmod(0o755 if written.is_dir() else 0o644)
            self._move_into_place()
            self._state = "finished"
        return self.output

    def _verify_structure(self) -> None:
        from transformers import AutoConfig

        from lifecycle.model.files import check_safetensors_folder
        from lifecycle.model.inspect import _compare_with_config

        try:
            tensors = check_safetensors_folder(self.tmp)
            try:
                config = AutoConfig.from_pretrained(self.tmp)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LifecycleError(f"its config.json does not load: {_first_line(exc)}") from None
            _compare_with_config(self.tmp, config, tensors, trust_remote_code=False)
        except LifecycleError as exc:
            raise LifecycleError(f"written checkpoint is not complete: {exc}; not written") from None

    def _verify(self) -> None:
        """Load the folder the standard way; every parameter must come from the files."""
        from transformers import AutoModelForCausalLM

        try:
            model, info = AutoModelForCausalLM.from_pretrained(self.tmp, dtype="auto", output_loading_info=True,
                                                               ignore_mismatched_sizes=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise LifecycleError(f"written checkpoint does not load: {_first_line(exc)}; not written") from None
        missing = set(info.get("missing_keys") or [])
        head = model.get_output_embeddings()
        if head is not None and head.weight is model.get_input_embeddings().weight:
            missing.discard("lm_head.weight")  # tied to the embeddings: legitimately not stored
        del model
        mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []]
        unexpected = info.get("unexpected_keys") or []
        for kind, names in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", mismatched)):
            if names:
                names = sorted(names)
                shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                raise LifecycleError(f"written checkpoint has {len(names)} {kind} tensor(s): {shown}; not written")

    def _move_into_place(self) -> None:
        out = self.output
        if not out.exists():
            os.replace(self.tmp, out)
            return
        if not self.overwrite:
            raise LifecycleError(f"output folder {out} exists (pass --overwrite to replace it)")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(self.tmp, out)
        shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        """Drop everything written so far (the output folder itself is never touched)."""
        self._pending = {}
        if self._state == "open":
            self._state = "aborted"
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._state == "open":
            self.abort()
            if exc_type is None:
                raise RuntimeError(f"ShardedWriter for {self.output} closed without finish(); nothing was written")


def copy_model_lazily(reader: TensorReader, output: str | Path,
                      transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None, *, tokenizer: Any = None,
                      lineage: dict | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      overwrite: bool = False) -> Path:
    """Copy ``reader``'s model to ``output`` tensor by tensor, through ``transform(name, tensor)``.

    Merge methods follow the same pattern: read one tensor from each input, combine, ``add``.
    """
    extra: dict[str, str | bytes | Path] = {}
    if reader.gguf_file is None and (reader.folder / "generation_config.json").is_file():
        extra["generation_config.json"] = reader.folder / "generation_config.json"
    config = reader.config
    with ShardedWriter(output, max_shard_bytes=max_shard_bytes, overwrite=overwrite) as writer:
        for name in reader.keys():
            tensor = reader.get(name)
            writer.add(name, transform(name, tensor) if transform is not None else tensor)
        return writer.finish(config, tokenizer=tokenizer, lineage=lineage, extra_files=extra)
