"""Removing structures from a LLaMA-family decoder: KV groups with their query heads, MLP channels, layers.

Coupled structures (the dependency groups of LLM-Pruner, Ma et al. 2023, arXiv:2305.11627, Sec. 3.1):

* **KV group** ``g`` of a layer with ``H`` query heads, ``K`` KV heads and ``n = H / K`` query heads per
  KV head (GQA): rows ``g·d .. (g+1)·d`` of ``k_proj`` and ``v_proj``, rows of query heads
  ``g·n .. (g+1)·n - 1`` of ``q_proj`` (transformers' ``repeat_kv`` expands KV head ``g`` to exactly
  those query heads), and the matching input columns of ``o_proj``. Removing whole groups keeps
  ``n`` and ``head_dim`` (hence RoPE) unchanged.
* **MLP channel** ``j``: row ``j`` of ``gate_proj`` and ``up_proj``, column ``j`` of ``down_proj``.
* **Layer**: the whole decoder block (depth pruning), via :class:`DecoderAdapter.set_layers`, which
  re-indexes ``layer_idx`` so the KV cache stays consistent.

Hidden size is never pruned, so ``embed_tokens``/``lm_head`` (tied or not) and the norms are untouched.

Optional bias compensation (FLAP, An et al. 2024, arXiv:2312.11983, Eq. 7): the removed inputs of
``o_proj``/``down_proj`` are replaced by their calibration mean, folded into the output bias:
``b ← b + W[:, removed] · mean_x[removed]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.model.adapter import DecoderAdapter


def _index(values: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values, dtype=torch.long, device=device)
    return torch.sort(idx).values  # keep the original order of what stays


def _shrink(linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs) and ``cols`` (inputs) of a Linear, in place (same module object)."""
    weight = linear.weight.data
    if rows is not None:
        weight = weight.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    requires_grad = linear.weight.requires_grad
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=requires_grad)
    if linear.bias is not None and rows is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows).contiguous(), requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = linear.weight.shape


def _compensate(linear: nn.Linear, removed: torch.Tensor, mean_input: torch.Tensor) -> None:
    """FLAP bias compensation: the removed inputs contribute their mean through the output bias."""
    if removed.numel() == 0:
        return
    w = linear.weight.data
    shift = w.index_select(1, removed).to(torch.float64) @ mean_input.to(w.device, torch.float64).index_select(0, removed)
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device),
                                   requires_grad=linear.weight.requires_grad)
    linear.bias.data += shift.to(w.dtype)


def group_rows(groups: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    """Row indices of consecutive blocks ``g·width .. (g+1)·width`` for each kept group."""
    g = _index(groups, device)
    return (g[:, None] * width + torch.arange(width, device=device)[None, :]).reshape(-1)


def prune_attention(
    adapter: DecoderAdapter,
    layer_index: int,
    keep_groups: Sequence[int],
    *,
    mean_input: torch.Tensor | None = None,
) -> None:
    """Keep the KV groups ``keep_groups`` (indices into the layer's *current* groups) of one layer.

    ``mean_input`` (the calibration mean of ``o_proj``'s input, one value per current query channel)
    turns on FLAP bias compensation for the removed heads.
    """
    shape = adapter.attention_shape(layer_index)
    keep = sorted(set(int(g) for g in keep_groups))
    if not keep:
        raise LifecycleError(f"layer {layer_index} would lose all of its attention heads")
    if keep[-1] >= shape.num_kv_heads or keep[0] < 0:
        raise LifecycleError(f"layer {layer_index} has {shape.num_kv_heads} KV groups; cannot keep group {keep[-1]}")
    if len(keep) == shape.num_kv_heads:
        return
    proj = adapter.attention_projections(adapter.layers[layer_index])
    device = proj["q"].weight.device
    hd, n_rep = shape.head_dim, shape.group_size
    q_rows = group_rows(keep, n_rep * hd, device)  # query heads of a group are contiguous
    kv_rows = group_rows(keep, hd, device)
    if mean_input is not None:
        all_cols = torch.arange(proj["o"].in_features, device=device)
        removed = all_cols[~torch.isin(all_cols, q_rows)]
        _compensate(proj["o"], removed, mean_input)
    _shrink(proj["q"], rows=q_rows)
    _shrink(proj["k"], rows=kv_rows)
    _shrink(proj["v"], rows=kv_rows)
    _shrink(proj["o"], cols=q_rows)
    attn = adapter.layers[layer_index].self_attn
    heads = len(keep) * n_rep
    # transformers 5 reads only num_key_value_groups and head_dim; older versions kept these too.
    attn.num_key_value_groups = n_rep
    for name, value in (("num_heads", heads), ("num_key_value_heads", len(keep))):
        if hasattr(attn, name):
            setattr(attn, name, value)


def prune_mlp(
    adapter: DecoderAdapter,
    layer_index: int,
    keep_channels: Sequence[int] | torch.Tensor,
    *,
    mean_input: torch.Tensor | None = None,
) -> None:
    """Keep the MLP channels ``keep_channels`` (indices into the layer's current channels)."""
    proj = adapter.mlp_projections(adapter.layers[layer_index])
    device = proj["gate"].weight.device
    keep = torch.unique(_index(keep_channels, device))
    width = proj["gate"].out_features
    if keep.numel() == 0:
        raise LifecycleError(f"layer {layer_index} would lose all of its MLP channels")
    if int(keep[-1]) >= width or int(keep[0]) < 0:
        raise LifecycleError(f"layer {layer_index} has {width} MLP channels; cannot keep channel {int(keep[-1])}")
    if keep.numel() == width:
        return
    if mean_input is not None:
        all_cols = torch.arange(width, device=device)
        _compensate(proj["down"], all_cols[~torch.isin(all_cols, keep)], mean_input)
    _shrink(proj["gate"], rows=keep)
    _shrink(proj["up"], rows=keep)
    _shrink(proj["down"], cols=keep)
    mlp = adapter.layers[layer_index].mlp
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


def drop_layers(adapter: DecoderAdapter, drop: Sequence[int]) -> None:
    """Remove whole decoder layers; ``layer_idx``, ``num_hidden_layers`` and ``layer_types`` follow."""
    n = len(adapter.layers)
    drop_set = {int(i) for i in drop}
    if any(i < 0 or i >= n for i in drop_set):
        raise LifecycleError(f"cannot drop layers {sorted(drop_set)}: the model has layers 0..{n - 1}")
    if len(drop_set) >= n:
        raise LifecycleError("depth pruning would remove every layer")
    kept = []
    for i in range(n):
        if i in drop_set:
            continue
        layer = adapter.layers[i]
        layer._lifecycle_source_index = i  # so set_layers keeps each layer's attention type
        kept.append(layer)
    adapter.set_layers(kept)
    # Per-layer configs (already pruned models) list one width per layer: keep them in step.
    cfg = adapter.config
    for name in ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes"):
        values = getattr(cfg, name, None)
        if values is not None and len(values) == n:
            setattr(cfg, name, [v for i, v in enumerate(values) if i not in drop_set])


# -- parameter accounting (analytic, so plans can be searched without touching weights) ----------

def group_params(adapter: DecoderAdapter, layer_index: int) -> int:
    """Parameters one KV group (with its query heads) holds in a layer, biases included."""
    shape = adapter.attention_shape(layer_index)
    proj = adapter.attention_projections(adapter.layers[layer_index])
    d = proj["q"].in_features
    hd, n = shape.head_dim, shape.group_size
    total = (2 * n * hd * d) + (2 * hd * d)  # q rows + o cols, k rows + v rows
    for key, rows in (("q", n * hd), ("k", hd), ("v", hd)):
        if proj[key].bias is not None:
            total += rows
    return total


def channel_params(adapter: DecoderAdapter, layer_index: int) -> int:
    """Parameters one MLP channel holds (gate row, up row, down column, their biases)."""
    proj = adapter.mlp_projections(adapter.layers[layer_index])
    d = proj["gate"].in_features
    total = 3 * d
    total += sum(1 for key in ("gate", "up") if proj[key].bias is not None)
    return total
