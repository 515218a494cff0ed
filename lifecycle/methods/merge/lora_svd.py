"""``lora_svd``: the best rank-k LoRA for the sum of several LoRA updates (Eckart–Young).

Per adapted module, ``ΔW = Σ_i w_i s_i B_i A_i`` is formed in float64 and factored by SVD,
``ΔW = U Σ Vᵀ``; the output keeps the top ``rank`` singular triples as ``B = U_k √Σ_k``,
``A = √Σ_k V_kᵀ`` (scaling 1). By Eckart–Young this is the best rank-k approximation in Frobenius
(and spectral) norm, with error ``√(Σ_{j>k} σ_j²)``; at ``rank`` ≥ rank(ΔW) it is exact. The square
root of Σ goes to both factors so A and B have equal norms for further training (peft's
``combination_type="svd"`` puts all of Σ on B; the product is the same). ``parameters.rank``
defaults to the largest input rank, as peft's ``svd_rank`` does; it is capped per module at
min(out, in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.common import ParamDef, merge_method
from lifecycle.methods.merge.lora_io import LoraAdapter, fusion_lineage, lora_inputs, write_adapter


def summed_delta(adapters: list[LoraAdapter], weights: list[float], module: str) -> torch.Tensor:
    """Σ w_i s_i B_i A_i in float64 over the adapters that adapt ``module``."""
    parts = [w * ad.delta(module) for ad, w in zip(adapters, weights) if module in ad.modules]
    return torch.stack(parts).sum(0)


def svd_loras(adapters: list[LoraAdapter], weights: list[float], modules: list[str],
              rank: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
    """Per module the rank-``rank`` (A, B), and the relative Frobenius error ‖ΔW − BA‖ / ‖ΔW‖."""
    out, errors = {}, {}
    for module in modules:
        dtype = next(ad.modules[module][0].dtype for ad in adapters if module in ad.modules)
        delta = summed_delta(adapters, weights, module)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        b = u[:, :k] * root
        a = root[:, None] * vh[:k]
        if k < rank:  # the file has one rank for every module: pad with zero directions
            b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
            a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
        norm = float(s.pow(2).sum().sqrt())
        errors[module] = float(s[k:].pow(2).sum().sqrt()) / norm if norm > 0 else 0.0
        out[module] = (a.to(dtype), b.to(dtype))
    return out, errors


def _rank(opts: Any, adapters: list[LoraAdapter]) -> int:
    rank = (opts.parameters or {}).get("rank")
    if rank is None:
        return max(a.shape[0] for ad in adapters for a, _, _ in ad.modules.values())
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LifecycleError(f"lora_svd: parameters.rank must be a positive integer, got {rank!r}")
    return rank


def check_lora_svd(opts: Any) -> None:
    adapters, _, _ = lora_inputs(opts)
    _rank(opts, adapters)


@merge_method("lora_svd", paper="Eckart & Young 1936; as peft add_weighted_adapter combination_type='svd'",
              summary="peft LoRA adapters fused as the best rank-k factorisation of the summed update",
              parameters=(ParamDef("rank"),), tensor_parameters=(ParamDef("weight", default=1.0),), needs_base=True,
              whole_model=True, check=check_lora_svd, adapter_inputs=True)
def merge_lora_svd(opts: Any) -> Path:
    from lifecycle.methods.merge.lora_io import check_against_base

    adapters, weights, base = lora_inputs(opts)
    shapes = check_against_base(adapters, base)
    rank = _rank(opts, adapters)
    tensors, errors = svd_loras(adapters, weights, sorted(shapes), rank)
    worst = max(errors.values())
    lineage = fusion_lineage(opts, adapters, weights, rank=rank, max_relative_error=worst)
    return write_adapter(opts.output, adapters[0].config, tensors, rank, lineage, overwrite=opts.overwrite)


__all__ = ["merge_lora_svd", "summed_delta", "svd_loras"]
