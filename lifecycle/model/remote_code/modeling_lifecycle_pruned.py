"""Decoder models whose layers have different widths (structured pruning), loadable with Auto classes.

This file is self-contained on purpose: lifecycle copies it into every checkpoint whose layers differ
in shape, and ``config.json`` points at it through ``auto_map``. So a checkpoint loads

* with ``import lifecycle`` first (the classes are registered with ``AutoConfig`` /
  ``AutoModelForCausalLM`` as local code, no ``trust_remote_code`` needed), or
* anywhere with ``transformers`` alone and ``trust_remote_code=True`` (this file is used).

It imports only ``torch``, ``transformers`` and ``huggingface_hub`` (tested with transformers 5.24).

Format. The config is the source architecture's own config (Llama, Qwen2 or Mistral) plus three lists
with one entry per decoder layer::

    layer_num_attention_heads:  [9, 6, 3, ...]
    layer_num_key_value_heads:  [3, 2, 1, ...]
    layer_intermediate_sizes:   [1536, 1104, ...]

and two flags for the extra output biases that FLAP-style bias compensation needs on architectures that
have no slot for them (``o_proj_bias``, ``down_proj_bias``). ``hidden_size`` and ``head_dim`` are global
(``head_dim`` is always written explicitly, so RoPE is unchanged); the global ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` hold the *largest* per-layer value, an upper bound for
code that sizes buffers from them. Every layer keeps ``heads % kv_heads == 0`` with the source model's
query heads per KV head, because lifecycle removes whole KV groups together with their query heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.models.mistral.configuration_mistral import MistralConfig
from transformers.models.mistral.modeling_mistral import MistralForCausalLM
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

try:  # transformers >= 5 validates configs as strict dataclasses; subclasses must opt in again
    from huggingface_hub.dataclasses import strict
except ImportError:  # pragma: no cover - older stacks: plain classes
    def strict(cls):  # type: ignore[no-redef]
        return cls


PER_LAYER_FIELDS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes")


def _check_per_layer(config: Any) -> None:
    """Per-layer lists agree with the layer count and keep whole GQA groups."""
    n = config.num_hidden_layers
    lists = [getattr(config, name, None) for name in PER_LAYER_FIELDS]
    if any(values is None for values in lists):
        if any(values is not None for values in lists):
            raise ValueError(f"give all of {', '.join(PER_LAYER_FIELDS)} or none of them")
        return
    for name, values in zip(PER_LAYER_FIELDS, lists):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} layers")
        if any(int(v) < 1 for v in values):
            raise ValueError(f"{name} has an entry below 1: a layer needs at least one head / channel")
    for i, (heads, kv) in enumerate(zip(lists[0], lists[1])):
        if heads % kv:
            raise ValueError(f"layer {i}: {heads} query heads do not split into {kv} KV groups")
    if not getattr(config, "head_dim", None):
        raise ValueError("head_dim must be given explicitly for per-layer head counts")


def _per_layer_shape(config: Any, index: int) -> tuple[int, int, int]:
    if getattr(config, "layer_num_attention_heads", None) is None:
        return config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    return (
        int(config.layer_num_attention_heads[index]),
        int(config.layer_num_key_value_heads[index]),
        int(config.layer_intermediate_sizes[index]),
    )


def _linear_like(old: nn.Linear, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """A Linear of a new shape on the old one's device and dtype (meta while from_pretrained builds)."""
    return nn.Linear(in_features, out_features, bias=bias, device=old.weight.device, dtype=old.weight.dtype)


def apply_layer_shapes(decoder: nn.Module, config: Any) -> None:
    """Resize every layer's projections to the config's per-layer shape (weights are loaded afterwards)."""
    head_dim = config.head_dim
    hidden = config.hidden_size
    std = getattr(config, "initializer_range", 0.02)
    for index, layer in enumerate(decoder.layers):
        heads, kv_heads, inter = _per_layer_shape(config, index)
        attn, mlp = layer.self_attn, layer.mlp
        new = {
            "q_proj": _linear_like(attn.q_proj, hidden, heads * head_dim, attn.q_proj.bias is not None),
            "k_proj": _linear_like(attn.k_proj, hidden, kv_heads * head_dim, attn.k_proj.bias is not None),
            "v_proj": _linear_like(attn.v_proj, hidden, kv_heads * head_dim, attn.v_proj.bias is not None),
            "o_proj": _linear_like(
                attn.o_proj, heads * head_dim, hidden,
                attn.o_proj.bias is not None or bool(getattr(config, "o_proj_bias", False)),
            ),
        }
        for name, module in new.items():
            setattr(attn, name, module)
        # The query heads sharing one KV head; unchanged by pruning whole groups, recomputed for safety.
        attn.num_key_value_groups = heads // kv_heads
        mlp_new = {
            "gate_proj": _linear_like(mlp.gate_proj, hidden, inter, mlp.gate_proj.bias is not None),
            "up_proj": _linear_like(mlp.up_proj, hidden, inter, mlp.up_proj.bias is not None),
            "down_proj": _linear_like(
                mlp.down_proj, inter, hidden,
                mlp.down_proj.bias is not None or bool(getattr(config, "down_proj_bias", False)),
            ),
        }
        for name, module in mlp_new.items():
            setattr(mlp, name, module)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter
        # Same initialisation as the source models (normal(0, initializer_range), zero bias), so that
        # from_config gives a sensible model; from_pretrained overwrites these with the saved weights.
        for module in [*new.values(), *mlp_new.values()]:
            if module.weight.device.type != "meta":
                with torch.no_grad():
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()


def read_layer_shapes(decoder: nn.Module, head_dim: int) -> tuple[list[int], list[int], list[int]]:
    """(query heads, KV heads, MLP channels) of every layer, read from the weights themselves."""
    heads, kv, inter = [], [], []
    for layer in decoder.layers:
        heads.append(layer.self_attn.q_proj.out_features // head_dim)
        kv.append(layer.self_attn.k_proj.out_features // head_dim)
        inter.append(layer.mlp.gate_proj.out_features)
    return heads, kv, inter


class _PerLayerModelMixin:
    """Builds the source architecture, then gives each layer its own width."""

    def _lifecycle_reshape(self) -> None:
        apply_layer_shapes(self.model, self.config)

    def sync_layer_shapes(self) -> None:
        """Rewrite the per-layer lists from the weights (after layers were dropped, stacked or pruned)."""
        cfg = self.config
        heads, kv, inter = read_layer_shapes(self.model, cfg.head_dim)
        cfg.num_hidden_layers = len(heads)
        cfg.layer_num_attention_heads = heads
        cfg.layer_num_key_value_heads = kv
        cfg.layer_intermediate_sizes = inter
        cfg.num_attention_heads = max(heads)
        cfg.num_key_value_heads = max(kv)
        cfg.intermediate_size = max(inter)
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types is not None and len(layer_types) != len(heads):
            cfg.layer_types = list(layer_types[: len(heads)]) + [layer_types[-1]] * max(0, len(heads) - len(layer_types))

    def save_pretrained(self, *args: Any, **kwargs: Any):  # noqa: D401 - same contract as transformers
        """Save after making the config agree with the weights, whatever edited the layers since."""
        self.sync_layer_shapes()
        return super().save_pretrained(*args, **kwargs)

    def _get_static_cache_init_shape(self):
        """A static KV cache must know each layer's KV head count, not the global maximum."""
        if hasattr(self, "hf_device_map") and len(set(self.hf_device_map.values())) > 1:
            return None
        kv = [layer.self_attn.k_proj.out_features // self.config.head_dim for layer in self.model.layers]
        return (kv[0] if len(set(kv)) == 1 else kv), self.config.head_dim


def _validate_per_layer_architecture(self) -> None:
    """Replaces the source check ``hidden_size % num_attention_heads == 0``: with an explicit head_dim
    the query width need not equal hidden_size; what must hold is whole GQA groups in every layer."""
    _check_per_layer(self)
    if self.num_attention_heads % self.num_key_value_heads:
        raise ValueError(
            f"{self.num_attention_heads} query heads do not split into {self.num_key_value_heads} KV groups"
        )


def _per_layer_config(base: type, model_type: str, name: str) -> type:
    """``base`` (LlamaConfig, ...) plus the per-layer width lists, under its own model type."""
    fields = {"layer_num_attention_heads": None, "layer_num_key_value_heads": None, "layer_intermediate_sizes": None,
              "o_proj_bias": False, "down_proj_bias": False}
    annotations = {name_: ("list[int] | None" if value is None else "bool") for name_, value in fields.items()}
    namespace = {"__module__": __name__, "__qualname__": name, "__annotations__": annotations, "model_type": model_type,
                 "validate_architecture": _validate_per_layer_architecture, **fields}
    return strict(type(name, (base,), namespace))


def _per_layer_model(base: type, config_class: type, name: str) -> type:
    """``base`` (LlamaForCausalLM, ...) whose layers each take their width from the config."""

    def __init__(self, config):  # noqa: N807 - the class's constructor
        base.__init__(self, config)
        self._lifecycle_reshape()

    return type(name, (_PerLayerModelMixin, base), {"__module__": __name__, "__qualname__": name,
                                                      "config_class": config_class, "__init__": __init__})


LifecyclePrunedLlamaConfig = _per_layer_config(LlamaConfig, "lifecycle_pruned_llama", "LifecyclePrunedLlamaConfig")
LifecyclePrunedQwen2Config = _per_layer_config(Qwen2Config, "lifecycle_pruned_qwen2", "LifecyclePrunedQwen2Config")
LifecyclePrunedMistralConfig = _per_layer_config(MistralConfig, "lifecycle_pruned_mistral", "LifecyclePrunedMistralConfig")
LifecyclePrunedLlamaForCausalLM = _per_layer_model(LlamaForCausalLM, LifecyclePrunedLlamaConfig, "LifecyclePrunedLlamaForCausalLM")
LifecyclePrunedQwen2ForCausalLM = _per_layer_model(Qwen2ForCausalLM, LifecyclePrunedQwen2Config, "LifecyclePrunedQwen2ForCausalLM")
LifecyclePrunedMistralForCausalLM = _per_layer_model(MistralForCausalLM, LifecyclePrunedMistralConfig,
                                                     "LifecyclePrunedMistralForCausalLM")


# source model_type -> (config class, model class)
FAMILIES: dict[str, tuple[type, type]] = {
    "llama": (LifecyclePrunedLlamaConfig, LifecyclePrunedLlamaForCausalLM),
    "qwen2": (LifecyclePrunedQwen2Config, LifecyclePrunedQwen2ForCausalLM),
    "mistral": (LifecyclePrunedMistralConfig, LifecyclePrunedMistralForCausalLM),
}
