"""The merge pipeline: check the inputs, resolve every tensor's parameters, then merge tensor by tensor.

Nothing is written until every check has passed and every tensor's parameters resolve: the models
agree (architecture, tensor names and shapes, tokenizer vocabulary and special tokens), there are at
least two, the method's requirements hold (a base model; slerp's two models), no tensor has all its
merge weights zero. Then each tensor is read from every input (:class:`TensorReader`, lazy, GGUF
dequantized), merged, cast to the output dtype and handed to :class:`ShardedWriter`, which keeps at
most one shard in memory and moves the folder into place only after a reload check.

Python entry point: :func:`merge_models` (a mergekit config as a dict, or :class:`MergeOptions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.common import MergeSpec, TensorJob, layer_t, merge_spec, resolve_parameters, warn
from lifecycle.methods.merge.options import MergeOptions, dtype_from_name, parse_size
from lifecycle.model.inspect import TOKENIZER_VOCAB_FILES

# config fields that must agree between the models (architecture and every shape-defining size)
_CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")


def check_sources(opts: MergeOptions) -> None:
    """Checks that need only the options: how many models, the base model the method needs."""
    spec = merge_spec(opts.merge_method)
    listed = [m.model for m in opts.models]
    for model in listed:
        if listed.count(model) > 1:
            raise LifecycleError(f"merge: model {model} is listed twice")
    sources = opts.sources()
    if len(sources) < 2:
        raise LifecycleError(f"merge needs at least two models, got {len(sources)} ({', '.join(sources) or 'none'})")
    if spec.needs_base and opts.base_model is None:
        raise LifecycleError(f"merge_method {spec.name} needs base_model")
    if spec.two_models and len(sources) != 2:
        raise LifecycleError(f"merge_method {spec.name} merges exactly two models (base_model and one other), got {len(sources)}")
    choice = opts.tokenizer_choice
    if choice not in (None, "base") and choice not in sources:
        raise LifecycleError(f"tokenizer_source {choice} is not one of the merged models")


def _differs(name: str, values: dict[str, Any]) -> str:
    return f"{name}: " + ", ".join(f"{v!r} in {k}" for k, v in values.items())


def _open_readers(sources: list[str]) -> dict[str, Any]:
    from lifecycle.model.tensors import TensorReader

    readers: dict[str, Any] = {}
    try:
        for source in sources:
            readers[source] = TensorReader(source)
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    return readers


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    from lifecycle.model.inspect import inspect_model

    info = inspect_model(source)
    kwargs = {"gguf_file": info.gguf_file} if info.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.location, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises bare Exception on corrupt files
        raise LifecycleError(f"cannot load the tokenizer of {source}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if tokenizer.pad_token is None:  # as load_model does: every lifecycle load pads with eos
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Files that define a tokenizer: byte-identical sets give identical tokenizers without loading them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "merges.txt", "chat_template.jinja", *TOKENIZER_VOCAB_FILES)


def tokenizer_fingerprint(source: str) -> str | None:
    """SHA-256 of a model folder's tokenizer files; None where they must be loaded to be compared (GGUF, Hub)."""
    import hashlib

    from lifecycle.model.inspect import inspect_model

    info = inspect_model(source)
    if info.kind != "folder":
        return None
    digest, found = hashlib.sha256(), False
    for name in _TOKENIZER_FILES:
        path = Path(info.location) / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest() if found else None


def checked_tokenizers(sources: list[str], wanted: list[str]) -> dict[str, Any]:
    """Check that the sources' tokenizers agree (:func:`check_tokenizers`) and return those of ``wanted``.

    Folders whose tokenizer files are byte-identical agree without loading anything, so a merge of
    fine-tunes of one model loads one tokenizer, not one per input; otherwise every tokenizer is
    loaded and compared token by token."""
    prints = [tokenizer_fingerprint(s) for s in sources]
    if None not in prints and len(set(prints)) == 1:
        return {s: _load_tokenizer(s) for s in dict.fromkeys(wanted)}
    tokenizers = {s: _load_tokenizer(s) for s in sources}
    check_tokenizers(tokenizers)
    return {s: tokenizers[s] for s in wanted}


def check_compatible(readers: dict[str, Any], tokenizers: dict[str, Any] | None = None) -> None:
    """The models can be merged: same architecture and sizes, same tensors and shapes, same tokenizer.
    Each difference is one line naming the field, the tensor or the token, and each model's value."""
    names = list(readers)
    first = names[0]
    configs = {n: readers[n].config for n in names}
    for key in _CONFIG_KEYS:
        values = {n: configs[n].get(key) for n in names}
        if key == "architectures" and any(v is None for v in values.values()):
            continue  # a config saved without it (from_config) says nothing about the architecture
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            raise LifecycleError("models differ in config " + _differs(key, values))
    keys0 = set(readers[first].keys())
    for other in names[1:]:
        keys = set(readers[other].keys())
        for lacking, having, missing in ((other, first, keys0 - keys), (first, other, keys - keys0)):
            if missing:
                shown = sorted(missing)
                more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
                raise LifecycleError(f"models differ in tensors: {lacking} has no '{shown[0]}'{more}, which {having} has")
    for name in sorted(keys0):
        shapes = {n: list(readers[n].shape(name)) for n in names}
        if len({tuple(s) for s in shapes.values()}) > 1:
            raise LifecycleError(f"models differ in the shape of tensor '{name}': "
                                 + ", ".join(f"{s} in {n}" for n, s in shapes.items()))
    if tokenizers:
        check_tokenizers(tokenizers)


def check_layer_ranges(opts: MergeOptions, readers: dict[str, Any]) -> None:
    """A ``slices:`` config merges whole models only: every layer_range is [0, num_hidden_layers]."""
    for model, layer_range in (opts.layer_ranges or {}).items():
        layers = int(readers[model].config.get("num_hidden_layers") or 0) if model in readers else None
        if layers is not None and list(layer_range) != [0, layers]:
            raise LifecycleError(f"slices: layer_range {list(layer_range)} of {model} is not all its {layers} layers "
                                 "(frankenmerges are not supported)")


def check_tokenizers(tokenizers: dict[str, Any]) -> None:
    names = list(tokenizers)
    first = names[0]
    vocab0 = tokenizers[first].get_vocab()
    for other in names[1:]:
        vocab = tokenizers[other].get_vocab()
        if len(vocab) != len(vocab0):
            raise LifecycleError(f"tokenizers differ: vocabulary of {len(vocab0)} tokens in {first}, {len(vocab)} in {other}")
        if vocab != vocab0:
            inverse0 = {i: t for t, i in vocab0.items()}
            inverse = {i: t for t, i in vocab.items()}
            for token_id in sorted(set(inverse0) | set(inverse)):
                if inverse0.get(token_id) != inverse.get(token_id):
                    raise LifecycleError(f"tokenizers differ: token id {token_id} is {inverse0.get(token_id)!r} in {first} "
                                         f"but {inverse.get(token_id)!r} in {other}")
        specials0, specials = _specials(tokenizers[first]), _specials(tokenizers[other])
        for key in sorted(set(specials0) | set(specials)):
            if specials0.get(key) != specials.get(key):
                raise LifecycleError(f"tokenizers differ in special token {key}: {specials0.get(key)!r} in {first}, "
                                     f"{specials.get(key)!r} in {other}")


def _specials(tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (tokenizer.special_tokens_map or {}).items():
        out[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    return out


@dataclass
class MergePlan:
    """Every output tensor with its resolved parameters, known before anything is written."""

    opts: MergeOptions
    spec: MergeSpec
    sources: list[str]
    base_index: int | None
    names: list[str]
    params: dict[str, tuple[dict, list[dict]]] = field(default_factory=dict)
    out_dtype: torch.dtype = torch.float32
    work_dtype: torch.dtype | None = None


def plan_merge(opts: MergeOptions, readers: dict[str, Any]) -> MergePlan:
    spec = merge_spec(opts.merge_method)
    sources = opts.sources()
    base_index = sources.index(opts.base_model) if opts.base_model is not None else None
    first = readers[sources[0]]
    num_layers = int(first.config.get("num_hidden_layers") or 0)
    # mergekit runs its per-tensor tasks in the lexicographic order of the tensor names (layers.10
    # before layers.2); visiting them in the same order gives every tensor the same random draws
    # (DARE's masks) from the same seed
    names = sorted(first.keys())
    settings = opts.model_settings()
    plan = MergePlan(opts=opts, spec=spec, sources=sources, base_index=base_index, names=names)
    floating = [n for n in names if first.dtype(n).is_floating_point]
    stored = first.dtype(floating[0]) if floating else torch.float32
    plan.work_dtype = dtype_from_name(opts.dtype)
    plan.out_dtype = dtype_from_name(opts.out_dtype) or plan.work_dtype or stored
    for name in names:
        params, per_model = resolve_parameters(spec, name, layer_t(name, num_layers), sources, base_index,
                                               settings, opts.parameters)
        if any(p.name == "weight" for p in spec.tensor_parameters):
            counted = [p for i, p in enumerate(per_model) if spec.name == "linear" or i != base_index]
            weights = [float(p["weight"]) for p in counted if p["weight"] is not None]
            if weights and all(w == 0 for w in weights):
                raise LifecycleError(f"merge: every model's weight is 0 for tensor '{name}': nothing would be merged")
            if spec.name == "linear" and params.get("normalize") and abs(sum(weights)) < 1e-12:
                raise LifecycleError(f"merge linear: the weights for tensor '{name}' sum to 0, so normalize cannot divide by them")
        for p in per_model:
            density = p.get("density")
            if density is not None and float(density) <= 0:
                raise LifecycleError(f"merge: density {density} for tensor '{name}' keeps nothing (it must be > 0)")
        plan.params[name] = (params, per_model)
    return plan


def parent_weights(opts: MergeOptions) -> list[dict]:
    """For the lineage: every parent with its weight setting as given (a scalar, gradient or rules)."""
    rows = []
    settings = opts.model_settings()
    for index, source in enumerate(opts.sources()):
        own = settings[index] or {}
        row: dict[str, Any] = {"model": source}
        for key in ("weight", "density"):
            value = own.get(key, (opts.parameters or {}).get(key))
            if value is not None:
                row[key] = value
        if opts.merge_method == "slerp" and (opts.parameters or {}).get("t") is not None:
            row["t"] = opts.parameters["t"]
        if source == opts.base_model:
            row["base"] = True
        rows.append(row)
    return rows


def merge_models(config: dict | MergeOptions, output: str | Path | None = None, *, overwrite: bool | None = None,
                 check_tokenizers_too: bool = True, max_shard_bytes: int | None = None) -> Path:
    """Merge the models a mergekit config names into ``output``; returns the folder written.

    ``config``: a mergekit config dict (``merge_method``, ``models``, ...) or :class:`MergeOptions`.
    """
    from lifecycle.model.card import new_lineage
    from lifecycle.model.inspect import inspect_model
    from lifecycle.model.tensors import ShardedWriter

    if isinstance(config, MergeOptions):
        opts = config
    else:
        values = dict(config)
        if output is not None:
            values["output"] = str(output)
        if overwrite is not None:
            values["overwrite"] = overwrite
        from pydantic import ValidationError

        from lifecycle.options import validation_error_line

        try:
            opts = MergeOptions.model_validate(values)
        except ValidationError as exc:
            raise LifecycleError(validation_error_line(exc, "merge")) from None
    check_sources(opts)
    if merge_spec(opts.merge_method).whole_model:  # logit MoE, LoRA fusion: the method writes its output
        return _method(opts.merge_method)(opts)
    sources = opts.sources()
    infos = {s: inspect_model(s) for s in sources}
    readers = _open_readers(sources)
    try:
        check_compatible(readers)
        choice = opts.tokenizer_choice
        tok_source = (opts.base_model or sources[0]) if choice in (None, "base") else choice
        if check_tokenizers_too:
            tokenizers = checked_tokenizers(sources, [tok_source])
        else:
            tokenizers = {tok_source: _load_tokenizer(tok_source)}
        check_layer_ranges(opts, readers)
        plan = plan_merge(opts, readers)
        if opts.random_seed is not None:
            torch.manual_seed(opts.random_seed)
        method = _method(opts.merge_method)
        shard = max_shard_bytes or parse_size(opts.out_shard_size)
        zeros: list[str] = []
        with ShardedWriter(opts.output, max_shard_bytes=shard, overwrite=opts.overwrite) as writer:
            for name in plan.names:
                writer.add(name, _merge_tensor(plan, readers, name, method, zeros))
            config_out = dict(readers[plan.sources[plan.base_index or 0]].config)
            for reader in readers.values():  # every tensor is merged: release the inputs' mapped pages
                reader.close()
            dtype_name = str(plan.out_dtype).removeprefix("torch.")
            config_out["torch_dtype"] = dtype_name
            if "dtype" in config_out:
                config_out["dtype"] = dtype_name
            lineage = new_lineage(
                command="merge", method=opts.merge_method, parents=sources,
                parent_lineages=[infos[s].lineage for s in sources],
                options=opts.model_dump(mode="json"), seed=opts.random_seed, relation="merge",
            )
            lineage["merge"] = {"method": opts.merge_method, "base_model": opts.base_model,
                                "parents": parent_weights(opts), "dtype": dtype_name,
                                "tokenizer_source": tok_source, "all_zero_tensors": zeros}
            # checked without reading the weights back, so the end of a merge never holds a whole model
            out = writer.finish(config_out, tokenizer=tokenizers[tok_source], lineage=lineage, verify="structure")
    finally:
        for reader in readers.values():
            reader.close()
    return out


def _method(name: str):
    from lifecycle.methods.registry import get_method

    return get_method("merge", name).run


def _merge_tensor(plan: MergePlan, readers: dict[str, Any], name: str, method: Any, zeros: list[str]) -> torch.Tensor:
    tensors = []
    for source in plan.sources:
        tensor = readers[source].get(name)
        if plan.work_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(plan.work_dtype)
        tensors.append(tensor)
    if not tensors[0].is_floating_point():  # an integer buffer: taken from the base (or first) model
        return tensors[plan.base_index or 0]
    params, per_model = plan.params[name]
    job = TensorJob(name=name, tensors=tensors, sources=plan.sources, base_index=plan.base_index, params=params,
                    model_params=per_model)
    out = method(job).to(plan.out_dtype)
    if out.numel() and not bool(out.any()):
        zeros.append(name)
        warn(f"merged tensor '{name}' is all zeros")
    return out


__all__ = ["MergePlan", "check_compatible", "check_sources", "check_tokenizers", "checked_tokenizers", "merge_models",
           "plan_merge", "tokenizer_fingerprint"]
