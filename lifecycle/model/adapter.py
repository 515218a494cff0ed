"""Where things are inside a LLaMA-family decoder, and how to change its depth safely.

Every method that edits a model (stacking layers, pruning heads, freezing embeddings) goes through
:class:`DecoderAdapter` instead of reaching into ``model.model.layers`` itself, so GQA, tied
embeddings, ``layer_idx`` and per-architecture config fields are handled in one place.

Supported: ``llama`` (Llama 2/3, SmolLM/SmolLM2, TinyLlama), ``qwen2`` and ``mistral``. They share the
module layout ``model.embed_tokens / model.layers[i].{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
input_layernorm, post_attention_layernorm} / model.norm / lm_head``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from lifecycle.errors import UnsupportedArchitectureError

SUPPORTED_MODEL_TYPES = (
    "llama", "qwen2", "mistral",
    # per-layer-width models written by `lifecycle prune` (lifecycle/model/pruned.py)
    "lifecycle_pruned_llama", "lifecycle_pruned_qwen2", "lifecycle_pruned_mistral",
    # logit-averaging mixtures written by `lifecycle merge` (lifecycle/model/logit_moe.py): they load,
    # train and score as whole models, but have no single decoder to edit layer by layer
    "lifecycle_logit_moe",
)
EDITABLE_MODEL_TYPES = tuple(t for t in SUPPORTED_MODEL_TYPES if t != "lifecycle_logit_moe")


@dataclass(frozen=True)
class AttentionShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head (GQA)."""
        return self.num_heads // self.num_kv_heads


class DecoderAdapter:
    """Accessors and depth surgery for one LLaMA-family causal LM."""

    def __init__(self, model: nn.Module):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in EDITABLE_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"architecture '{model_type}' is not supported yet for layer edits (supported: {', '.join(EDITABLE_MODEL_TYPES)})"
            )
        self.model = model
        self.config = model.config

    # -- where things are -------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head.weight is self.embed_tokens.weight

    def attention_projections(self, layer: nn.Module) -> dict[str, nn.Linear]:
        attn = layer.self_attn
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj}

    def mlp_projections(self, layer: nn.Module) -> dict[str, nn.Linear]:
        mlp = layer.mlp
        return {"gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}

    def attention_shape(self, layer_index: int | None = None) -> AttentionShape:
        """Head counts of one layer, read from its weights (so pruned, uneven layers are right too)."""
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if layer_index is None:
            return AttentionShape(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim)
        proj = self.attention_projections(self.layers[layer_index])
        return AttentionShape(proj["q"].out_features // head_dim, proj["k"].out_features // head_dim, head_dim)

    # -- counting -----------------------------------------------------------------------------
    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        """Unique parameters (a tied head is counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
        if not include_embeddings:
            total -= self.embed_tokens.weight.numel()
            if not self.tied_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    # -- surgery ------------------------------------------------------------------------------
    def set_layers(self, new_layers: Iterable[nn.Module]) -> None:
        """Replace the decoder stack and make config, ``layer_idx`` and per-layer fields agree.

        The KV cache is indexed by ``self_attn.layer_idx``; two layers sharing an index (a copied
        layer) would overwrite each other's cache, so indices are rewritten 0..n-1 here.
        """
        old_types = list(getattr(self.config, "layer_types", None) or [])
        new_layers = list(new_layers)
        source_positions = [getattr(layer, "_lifecycle_source_index", None) for layer in new_layers]
        self.model.model.layers = nn.ModuleList(new_layers)
        n = len(new_layers)
        for i, layer in enumerate(new_layers):
            layer.self_attn.layer_idx = i
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i
            if hasattr(layer, "_lifecycle_source_index"):
                del layer._lifecycle_source_index
        self.config.num_hidden_layers = n
        if old_types:
            # Keep each layer's attention type (full / sliding) with the layer it was copied from.
            self.config.layer_types = [
                old_types[src] if src is not None and src < len(old_types) else old_types[min(i, len(old_types) - 1)]
                for i, src in enumerate(source_positions)
            ]
        if hasattr(self.config, "max_window_layers") and self.config.max_window_layers is not None:
            self.config.max_window_layers = min(self.config.max_window_layers, n)

    def copy_layer(self, index: int) -> nn.Module:
        """A deep copy of layer ``index`` that remembers where it came from (for ``set_layers``)."""
        import copy

        layer = copy.deepcopy(self.layers[index])
        layer._lifecycle_source_index = index
        return layer

    def retie_embeddings(self) -> None:
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight


def adapter_for(model: nn.Module) -> DecoderAdapter:
    """The adapter for ``model``; raises a one-line error for architectures lifecycle cannot edit."""
    return DecoderAdapter(model)


def check_supported_config(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' is not supported yet (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )


def logits_for_check(model: nn.Module, vocab_size: int, seed: int = 0, length: int = 16) -> torch.Tensor:
    """Logits on a fixed pseudo-random input, used to check that a saved model reloads identically."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (1, length), generator=g)
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=ids.to(device)).logits.float().cpu()
