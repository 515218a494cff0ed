"""A logit-averaging mixture of experts (Bochkov 2025) as one causal LM the Auto classes load.

Bochkov, "Growing Transformers: Modular Composition and Layer-wise Expansion on a Frozen Substrate"
(arXiv:2507.07129): experts trained separately on one frozen token substrate are combined after
training by averaging their raw output logits, ``logits_moe = (logits_a + logits_b) / 2``. Every
expert runs on the same input; there is no router. This file is self-contained on purpose: lifecycle
copies it beside the weights and ``config.json`` points at it through ``auto_map``, so a checkpoint loads

* with ``import lifecycle`` first (the classes are registered with ``AutoConfig`` /
  ``AutoModelForCausalLM``; no ``trust_remote_code`` needed), or
* anywhere with ``transformers`` alone and ``trust_remote_code=True`` (this file is used).

It imports only ``torch`` and ``transformers`` (tested with transformers 5.24, whose forward takes
``cache=``; ``past_key_values=`` is accepted too).

Config fields: ``experts`` (each expert's own config as a dict; its ``model_type`` must be one that
transformers knows), ``combine`` (``logits``: the paper's weighted mean of raw logits; ``log_probs``:
weighted mean of log-softmax, a product of experts; ``probs``: the log of the weighted mean of the
experts' probabilities, a mixture), ``expert_weights`` (normalised to sum 1; default equal, which is
the paper's formula) and ``shared_tensors`` (``{name: source name}``: tensors stored once, e.g. the
frozen embedding every layer-wise grown expert shares; tied on load).

Weights are named ``experts.{i}.<the expert's own name>``. KV cache: one :class:`Cache` holds every
expert's layers back to back; each expert is given a view on its own slice (the layer objects are
shared, so generate's reordering and cropping of the whole cache reach every expert). Experts with
sliding-window or linear-attention layers are refused, since their cache layers differ.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

COMBINE_MODES = ("logits", "log_probs", "probs")
AUTO_MAP = {
    "AutoConfig": "modeling_lifecycle_logit_moe.LifecycleLogitMoEConfig",
    "AutoModelForCausalLM": "modeling_lifecycle_logit_moe.LifecycleLogitMoEForCausalLM",
}


@strict
class LifecycleLogitMoEConfig(PreTrainedConfig):
    model_type = "lifecycle_logit_moe"

    experts: list | None = None
    combine: str = "logits"
    expert_weights: list | None = None
    shared_tensors: dict | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self.experts = [dict(e) if not isinstance(e, dict) else e for e in (self.experts or [])]
        if self.experts and self.vocab_size is None:
            self.vocab_size = int(self.experts[0].get("vocab_size"))
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}")
        if self.expert_weights is not None:
            if len(self.expert_weights) != len(self.experts):
                raise ValueError(f"{len(self.expert_weights)} expert_weights for {len(self.experts)} experts")
            if any(float(w) < 0 for w in self.expert_weights) or sum(float(w) for w in self.expert_weights) <= 0:
                raise ValueError("expert_weights must be >= 0 with a positive sum")

    def expert_configs(self) -> list[PreTrainedConfig]:
        out = []
        for entry in self.experts:
            values = dict(entry)
            out.append(AutoConfig.for_model(values.pop("model_type"), **values))
        return out

    def normalized_weights(self) -> list[float]:
        raw = [float(w) for w in (self.expert_weights or [1.0] * len(self.experts))]
        total = sum(raw)
        return [w / total for w in raw]


def combine_logits(logits: list[torch.Tensor], weights: list[float], mode: str) -> torch.Tensor:
    """The experts' next-token scores combined (computed in float32; returned in float32)."""
    if mode == "logits":  # the paper's formula: (weighted) mean of raw logits
        return sum(w * z.float() for w, z in zip(weights, logits))
    log_probs = [torch.log_softmax(z.float(), dim=-1) for z in logits]
    if mode == "log_probs":  # geometric mean of the distributions (renormalised by any softmax)
        return sum(w * lp for w, lp in zip(weights, log_probs))
    # probs: log Σ w_i p_i, exactly normalised; a zero weight drops the expert (log 0 = -inf)
    stacked = torch.stack([lp + torch.log(torch.tensor(w, dtype=lp.dtype, device=lp.device)) for w, lp in zip(weights, log_probs)])
    return torch.logsumexp(stacked, dim=0)


def _check_full_attention(config: PreTrainedConfig, index: int) -> None:
    layer_types = getattr(config, "layer_types", None) or []
    others = sorted({t for t in layer_types if t != "full_attention"})
    if others or getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise ValueError(f"expert {index} ({config.model_type}) has {', '.join(others) or 'sliding-window'} layers; "
                         "only full-attention experts are supported")


class LifecycleLogitMoEForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LifecycleLogitMoEConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: LifecycleLogitMoEConfig):
        super().__init__(config)
        configs = config.expert_configs()
        if len(configs) < 1:
            raise ValueError("a logit MoE needs at least one expert")
        for index, expert_config in enumerate(configs):
            _check_full_attention(expert_config, index)
            expert_config._attn_implementation = config._attn_implementation
        self.experts = nn.ModuleList(AutoModelForCausalLM.from_config(c) for c in configs)
        self.layer_counts = [int(c.num_hidden_layers) for c in configs]
        # read by save_pretrained to drop the stored-once copies (the full mapping is computed below)
        self._tied_weights_keys = dict(config.shared_tensors or {})
        self.post_init()
        self._share_tensors()

    # -- weights stored once --------------------------------------------------------------------------
    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """Each expert's own ties (lm_head to embeddings) plus the cross-expert shared tensors, with
        every chain resolved to the one tensor that is stored (transformers ties target -> source)."""
        mapping: dict[str, str] = {}
        for index, expert in enumerate(getattr(self, "experts", [])):
            for target, source in expert.get_expanded_tied_weights_keys(all_submodels=True).items():
                mapping[f"experts.{index}.{target}"] = f"experts.{index}.{source}"
        mapping.update(self.config.shared_tensors or {})

        def root(name: str) -> str:
            seen = set()
            while name in mapping and name not in seen:
                seen.add(name)
                name = mapping[name]
            return name

        return {target: root(target) for target in mapping}

    def _share_tensors(self) -> None:
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys()
        self.tie_weights(recompute_mapping=False)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any):  # noqa: D401 - transformers' contract
        """Save, keeping what Hub users need: this file beside the weights and the ``auto_map``."""
        self.config.auto_map = dict(AUTO_MAP)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory) / Path(__file__).name
        if Path(__file__).resolve() != target.resolve():
            shutil.copyfile(__file__, target)
        return result

    def get_input_embeddings(self) -> nn.Module:
        return self.experts[0].get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return None  # one head per expert; there is no single output matrix to resize or tie

    # -- cache ----------------------------------------------------------------------------------------
    def new_cache(self) -> Cache:
        """One cache over every expert's layers, in expert order."""
        layers = []
        for expert in self.experts:
            layers.extend(DynamicCache(config=expert.config).layers)
        return Cache(layers=layers)

    def _expert_caches(self, cache: Cache) -> list[Cache]:
        views, start = [], 0
        for count in self.layer_counts:
            views.append(Cache(layers=cache.layers[start:start + count]))
            start += count
        return views

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict, *args: Any, **kwargs: Any):
        # generate would build a DynamicCache from this config, which has no layers of its own
        if model_kwargs.get("cache") is None and model_kwargs.get("past_key_values") is None and generation_config.use_cache:
            model_kwargs["cache"] = self.new_cache()
            return None
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                past_key_values: Cache | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and not self.training:
            total = sum(self.layer_counts)
            if cache is None or (len(cache.layers) != total and cache.get_seq_length() == 0):
                cache = self.new_cache()
            elif len(cache.layers) != total:
                raise ValueError(f"this cache has {len(cache.layers)} layers; the experts have {total} together")
        else:
            cache = None
        views = self._expert_caches(cache) if cache is not None else [None] * len(self.experts)
        kwargs.pop("return_dict", None)
        logits = []
        for expert, view in zip(self.experts, views):
            out = expert(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=view,
                         inputs_embeds=inputs_embeds, use_cache=view is not None, logits_to_keep=logits_to_keep,
                         return_dict=True, **kwargs)
            logits.append(out.logits)
        combined = combine_logits(logits, self.config.normalized_weights(), self.config.combine)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=combined, labels=labels, vocab_size=combined.shape[-1], **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=combined, cache=cache)


__all__ = ["COMBINE_MODES", "LifecycleLogitMoEConfig", "LifecycleLogitMoEForCausalLM", "combine_logits"]
