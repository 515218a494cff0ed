"""``logit_moe``: experts combined by averaging their output logits (Bochkov 2025, arXiv:2507.07129).

The paper ("Growing Transformers: Modular Composition and Layer-wise Expansion on a Frozen
Substrate", §MoE) trains experts separately on one frozen token embedding and combines them after
training by the mean of their raw logits, ``logits_moe = (logits_a + logits_b) / 2``; the experts'
weights are not touched. Here:

* ``parameters.combine``: ``logits`` (default, the paper's formula), ``log_probs`` (weighted mean of
  log-softmax: a product of experts) or ``probs`` (log of the weighted mean of the probabilities: a
  mixture). Per-model ``weight`` gives per-expert weights (normalised to sum 1; default equal, which
  is the paper's ``/2``). Weights must be plain numbers: a logit MoE has no per-tensor parameters.
* The experts must share a tokenizer, checked token by token (the first differing id is named), and
  the same special tokens and vocabulary size. Their architectures may differ (e.g. layer-wise grown
  experts of different depth); they must be full-attention models transformers knows.
* Output: one checkpoint (``model_type: lifecycle_logit_moe``) holding every expert's tensors under
  ``experts.{i}.``, written tensor by tensor (the experts are never loaded whole here), with the
  modeling file beside it and an ``auto_map``. ``parameters.share_embeddings`` (default true): an
  embedding or head tensor byte-identical to an earlier expert's (the frozen substrate of layer-wise
  growth) is stored once and tied on load.

* ``post_train:`` (optional): the paper's released MoE (``best_bvv_moe``) was trained further after
  merging. With it, the MoE is written to a temporary folder, loaded, scored (held-out loss on the
  ``post_train`` data's validation split, and ``eval.tasks`` when given), trained on the engine
  (:func:`lifecycle.train.engine.train`, the same loop as ``lifecycle train``), scored again and written
  to the output; ``merge.post_training`` in the lineage and card holds both sets of scores.

Not done: the optional adapter over concatenated logits (see docs/merge.md).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.common import ParamDef, merge_method

_VOLATILE_KEYS = ("architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype")
# input embeddings and output heads of the architectures transformers names this way
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
_HEAD_NAMES = ("lm_head.weight", "embed_out.weight")


def _is_embedding(name: str) -> bool:
    return name.endswith(_EMBEDDING_SUFFIXES) or name in _HEAD_NAMES


def moe_settings(opts: Any) -> tuple[list[str], list[float] | None, str, bool]:
    """(experts, per-expert weights or None, combine mode, share_embeddings) from merge options."""
    from lifecycle.model.remote_code.modeling_lifecycle_logit_moe import COMBINE_MODES

    if opts.base_model is not None:
        raise LifecycleError("merge_method logit_moe takes no base_model: every listed model is an expert")
    params = dict(opts.parameters or {})
    combine = str(params.get("combine", "logits"))
    if combine not in COMBINE_MODES:
        raise LifecycleError(f"logit_moe: parameters.combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    share = params.get("share_embeddings", True)
    if not isinstance(share, bool):
        raise LifecycleError(f"logit_moe: parameters.share_embeddings must be true or false, got {share!r}")
    experts = [m.model for m in opts.models]
    raw = [(m.parameters or {}).get("weight") for m in opts.models]
    if all(w is None for w in raw):
        return experts, None, combine, share
    if any(w is None for w in raw):
        raise LifecycleError(f"logit_moe: give every expert a weight or none ({experts[raw.index(None)]} has none)")
    weights = []
    for expert, w in zip(experts, raw):
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise LifecycleError(f"logit_moe: the weight of {expert} must be a number (no gradients or filters), got {w!r}")
        if w < 0:
            raise LifecycleError(f"logit_moe: the weight of {expert} is negative ({w})")
        weights.append(float(w))
    if sum(weights) <= 0:
        raise LifecycleError("logit_moe: every expert's weight is 0: nothing would be combined")
    return experts, weights, combine, share


def _expert_config(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k not in _VOLATILE_KEYS}


def check_experts(readers: dict[str, Any], tokenizers: dict[str, Any] | None = None) -> None:
    """Experts can be combined: known full-attention architectures, one vocabulary, one tokenizer."""
    from lifecycle.methods.merge.pipeline import _differs, check_tokenizers
    from lifecycle.model.remote_code.modeling_lifecycle_logit_moe import _check_full_attention

    from transformers import AutoConfig

    sizes = {name: reader.config.get("vocab_size") for name, reader in readers.items()}
    if len(set(sizes.values())) > 1:
        raise LifecycleError("experts differ in config " + _differs("vocab_size", sizes))
    for index, (name, reader) in enumerate(readers.items()):
        values = _expert_config(reader.config)
        model_type = values.pop("model_type", None)
        try:
            config = AutoConfig.for_model(model_type, **values)
            _check_full_attention(config, index)
        except ValueError as exc:
            raise LifecycleError(f"logit_moe: expert {name}: {str(exc).splitlines()[0]}") from None
    if tokenizers:
        check_tokenizers(tokenizers)


def check_logit_moe(opts: Any) -> None:
    """The preflight: everything :func:`build_logit_moe` checks, without writing anything."""
    from lifecycle.methods.merge.pipeline import _open_readers, checked_tokenizers

    experts, *_ = moe_settings(opts)
    readers = _open_readers(experts)
    try:
        check_experts(readers)
        checked_tokenizers(experts, [])
    finally:
        for reader in readers.values():
            reader.close()


def _output_dtype(opts: Any, first: Any) -> torch.dtype:
    from lifecycle.methods.merge.options import dtype_from_name

    chosen = dtype_from_name(opts.out_dtype) or dtype_from_name(opts.dtype)
    if chosen is not None:
        return chosen
    floating = [n for n in first.keys() if first.dtype(n).is_floating_point]
    return first.dtype(floating[0]) if floating else torch.float32


@merge_method("logit_moe", paper="Bochkov 2025, Growing Transformers: Modular Composition and Layer-wise Expansion "
              "on a Frozen Substrate (arXiv:2507.07129)",
              summary="one checkpoint running every expert; next-token logits are their (weighted) mean",
              parameters=(ParamDef("combine", default="logits"), ParamDef("share_embeddings", default=True)),
              tensor_parameters=(ParamDef("weight"),), whole_model=True, check=check_logit_moe)
def build_logit_moe(opts: Any) -> Path:
    """Write the logit MoE of ``opts.models`` to ``opts.output`` (trained further with ``post_train``)."""
    if opts.post_train is None:
        return _write_logit_moe(opts)
    from lifecycle.model.io import check_output_creatable

    out = Path(opts.output).expanduser().resolve()
    check_output_creatable(out, overwrite=opts.overwrite)  # before minutes of merging and training
    untrained = Path(tempfile.mkdtemp(prefix=f".{out.name}.untrained-", dir=out.parent))
    try:
        _write_logit_moe(opts.model_copy(update={"output": str(untrained / "moe"), "overwrite": False}))
        return post_train_moe(untrained / "moe", opts)
    finally:
        shutil.rmtree(untrained, ignore_errors=True)


def post_train_moe(folder: Path, opts: Any) -> Path:
    """Score the MoE in ``folder``, train it on the engine with ``opts.post_train``, score it again and
    write it to ``opts.output`` with both sets of scores in ``merge.post_training``."""
    import json

    from lifecycle.data import load_corpus, pack
    from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
    from lifecycle.model.io import load_model
    from lifecycle.model.card import LINEAGE_FILE, add_eval_record
    from lifecycle.train.engine import held_out_loss, make_accelerator, train

    settings = opts.post_train
    loaded = load_model(str(folder))
    data = pack(load_corpus(settings.data), loaded.tokenizer, settings.block_size, val_fraction=settings.val_fraction,
                max_train_tokens=settings.max_train_tokens)
    device = next(loaded.model.parameters()).device
    without = {"val_loss": held_out_loss(loaded.model, data, settings.train, device)}
    before = _scores(loaded.model, loaded.tokenizer, opts.eval)
    run_dir = default_run_dir(opts.output)
    accelerator = make_accelerator(settings.train, None, logging_dir=run_dir / "logs")
    result = train(loaded.model, data, settings.train, run_dir, accelerator=accelerator,
                   description="post-merge training")
    with_training = {"val_loss": result.final_val_loss}
    after = _scores(result.model, loaded.tokenizer, opts.eval)
    lineage = json.loads((folder / LINEAGE_FILE).read_text())
    if after is not None:  # the card's headline scores are the trained model's; both are in post_training
        without["scores"], with_training["scores"] = before.scores, after.scores
        lineage = add_eval_record(lineage, after.scores, after.settings)
    lineage["tokens_seen"] = result.tokens_seen
    lineage["data"] = data.describe()
    lineage["merge"]["post_training"] = {
        "data": settings.data, "steps": result.steps, "tokens_seen": result.tokens_seen,
        "val_blocks": min(data.num_validation, settings.train.eval_blocks), "block_size": settings.block_size,
        "without": without, "with": with_training}
    out = finish_run(result.model, loaded.tokenizer, opts.output, lineage, overwrite=opts.overwrite, result=result)
    tidy_run_dir(run_dir, opts.run_folder, resumable=False)
    return out


def _scores(model: Any, tokenizer: Any, eval_opts: Any) -> Any:
    """The lm-eval report of ``eval.tasks`` on ``model`` (None without tasks)."""
    if not eval_opts.tasks:
        return None
    from lifecycle.eval.harness import evaluate

    return evaluate(model, tokenizer, eval_opts.tasks, limit=eval_opts.limit, batch_size=eval_opts.batch_size,
                    max_length=eval_opts.max_length, include_path=eval_opts.include_path)


def _write_logit_moe(opts: Any) -> Path:
    from lifecycle.methods.merge.options import parse_size
    from lifecycle.methods.merge.pipeline import _open_readers, checked_tokenizers
    from lifecycle.model.card import new_lineage
    from lifecycle.model.inspect import inspect_model
    from lifecycle.model.logit_moe import MODEL_TYPE, MODELING_FILE, register
    from lifecycle.model.remote_code.modeling_lifecycle_logit_moe import AUTO_MAP
    from lifecycle.model.tensors import ShardedWriter

    register()  # the written folder is verified by loading it through the Auto classes
    experts, weights, combine, share = moe_settings(opts)
    infos = {e: inspect_model(e) for e in experts}
    readers = _open_readers(experts)
    try:
        check_experts(readers)
        tokenizers = checked_tokenizers(experts, [experts[0]])
        first = readers[experts[0]]
        dtype = _output_dtype(opts, first)
        dtype_name = str(dtype).removeprefix("torch.")
        shared: dict[str, str] = {}
        with ShardedWriter(opts.output, max_shard_bytes=parse_size(opts.out_shard_size), overwrite=opts.overwrite) as writer:
            for index, expert in enumerate(experts):
                reader = readers[expert]
                for name in reader.keys():
                    tensor = reader.get(name)
                    if tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    full = f"experts.{index}.{name}"
                    source = _stored_copy(readers, experts, index, name, tensor, dtype) if share and _is_embedding(name) else None
                    if source is not None:
                        shared[full] = source
                        continue
                    writer.add(full, tensor)
            configs = []
            for expert in experts:
                values = _expert_config(readers[expert].config)
                values["dtype"] = dtype_name
                configs.append(values)
            config = {"model_type": MODEL_TYPE, "architectures": ["LifecycleLogitMoEForCausalLM"], "auto_map": AUTO_MAP,
                      "experts": configs, "combine": combine, "expert_weights": weights, "shared_tensors": shared,
                      "vocab_size": int(first.config.get("vocab_size")), "tie_word_embeddings": False, "dtype": dtype_name}
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if first.config.get(key) is not None:
                    config[key] = first.config[key]
            lineage = new_lineage(command="merge", method="logit_moe", parents=experts,
                                  parent_lineages=[infos[e].lineage for e in experts],
                                  options=opts.model_dump(mode="json"), seed=None, relation="merge")
            lineage["merge"] = {"method": "logit_moe", "combine": combine, "dtype": dtype_name,
                                "parents": [{"model": e, **({"weight": w} if weights else {})}
                                            for e, w in zip(experts, weights or [None] * len(experts))],
                                "tokenizer_source": experts[0], "shared_tensors": shared}
            extra = {MODELING_FILE.name: MODELING_FILE}
            if first.gguf_file is None and (first.folder / "generation_config.json").is_file():
                extra["generation_config.json"] = first.folder / "generation_config.json"
            return writer.finish(config, tokenizer=tokenizers[experts[0]], lineage=lineage, extra_files=extra)
    finally:
        for reader in readers.values():
            reader.close()


def _stored_copy(readers: dict[str, Any], experts: list[str], index: int, name: str, tensor: torch.Tensor,
                 dtype: torch.dtype) -> str | None:
    """The stored name of an earlier expert's byte-identical ``name`` tensor (or None)."""
    for earlier in range(index):
        reader = readers[experts[earlier]]
        if name not in reader.keys() or list(reader.shape(name)) != list(tensor.shape):
            continue
        other = reader.get(name)
        other = other.to(dtype) if other.is_floating_point() else other
        if torch.equal(other, tensor):
            return f"experts.{earlier}.{name}"
    return None


__all__ = ["build_logit_moe", "check_experts", "check_logit_moe", "moe_settings"]
