"""``lora_concat``: the exact sum of several LoRA updates as one LoRA of the summed rank.

For every adapted module, ``ΔW = Σ_i w_i s_i B_i A_i`` (s_i each adapter's own scaling) is exactly
``B A`` with ``A = [A_1; A_2; ...]`` (stacked rows, Σ r_i × in) and ``B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]``
(stacked columns, out × Σ r_i), written with scaling 1. This is peft's ``add_weighted_adapter(...,
combination_type="cat")`` (which puts ``w_i s_i`` on A instead of B; the product is the same). A module
that only some adapters adapt gets zero blocks for the others, so every module has rank Σ r_i and
the update stays exact. Unlike peft's ``linear`` (which averages the A's and the B's separately, so
the cross terms ``B_i A_j`` enter the update), nothing here is approximate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lifecycle.methods.merge.common import ParamDef, merge_method
from lifecycle.methods.merge.lora_io import LoraAdapter, fusion_lineage, lora_inputs, write_adapter


def concat_loras(adapters: list[LoraAdapter], weights: list[float],
                 shapes: dict[str, tuple[int, int]]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Per module (A, B) with B A = Σ w_i s_i B_i A_i, and the common rank Σ r_i."""
    ranks = [max(a.shape[0] for a, _, _ in adapter.modules.values()) for adapter in adapters]
    total = sum(ranks)
    out = {}
    for module, (rows, cols) in sorted(shapes.items()):
        dtype = next(ad.modules[module][0].dtype for ad in adapters if module in ad.modules)
        a_cat = torch.zeros(total, cols, dtype=torch.float32)
        b_cat = torch.zeros(rows, total, dtype=torch.float32)
        start = 0
        for adapter, weight, rank in zip(adapters, weights, ranks):
            if module in adapter.modules:
                a, b, scaling = adapter.modules[module]
                r = a.shape[0]
                a_cat[start:start + r] = a.float()
                b_cat[:, start:start + r] = b.float() * (weight * scaling)
            start += rank
        out[module] = (a_cat.to(dtype), b_cat.to(dtype))
    return out, total


def check_lora_fusion(opts: Any) -> None:
    lora_inputs(opts)


@merge_method("lora_concat", paper="exact LoRA concatenation (as peft add_weighted_adapter combination_type='cat')",
              summary="peft LoRA adapters fused exactly: stacked A's and weighted B's, rank = sum of ranks",
              tensor_parameters=(ParamDef("weight", default=1.0),), needs_base=True, whole_model=True,
              check=check_lora_fusion, adapter_inputs=True)
def merge_lora_concat(opts: Any) -> Path:
    from lifecycle.methods.merge.lora_io import check_against_base

    adapters, weights, base = lora_inputs(opts)
    shapes = check_against_base(adapters, base)
    tensors, rank = concat_loras(adapters, weights, shapes)
    lineage = fusion_lineage(opts, adapters, weights, rank=rank)
    return write_adapter(opts.output, adapters[0].config, tensors, rank, lineage, overwrite=opts.overwrite)


__all__ = ["check_lora_fusion", "concat_loras", "merge_lora_concat"]
