"""BitLinear: the ternary linear layer of BitNet b1.58, for quantization-aware training.

Paper steps and where they are (Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models
are in 1.58 Bits", arXiv:2402.17764; Nielsen & Schneider-Kamp 2024, "BitNet b1.58 Reloaded",
arXiv:2407.09527):

1. Weight scale, one per tensor: γ = mean(|W|) (b1.58, "absmean") or median(|W|) (Reloaded's
   "absmedian")                                                       → :func:`weight_scale`
2. Ternary weights: W̃ = clamp(round(W / γ), −1, 1), used as W̃·γ      → :func:`ternarize`,
                                                                        :func:`quantize_weight`
3. 8-bit activations, per token: s = 127 / max|x|, x̃ = clamp(round(x·s), −128, 127), used as x̃/s
                                                                      → :func:`quantize_activation`
4. Straight-through estimator with full-precision master weights: the forward sees the quantized
   value, the backward the identity, ``x + (q(x) − x).detach()``; with the warm-up of the Hugging
   Face BitNet fine-tuning study, ``x + λ·(q(x) − x).detach()``, λ going 0 → 1
                                                                      → :func:`ste`
5. Optional parameter-free RMS norm of the input inside the layer, before activation quantization
   (the b1.58 FAQ's "LN inside BitLinear"; the same as transformers' ``use_rms_norm`` with unit
   weights, so it exports)                                            → :func:`rms_norm`
6. The layer itself: master weight W (fp32, trained), forward ``F.linear(ste(x), ste(W))``
                                                                      → :class:`BitLinear`

Inference with integer weights computes ``(x̃ · W̃ᵀ) / (s · (1/γ))``; the training forward computes
``(x̃/s) · (W̃·γ)ᵀ``, the same number up to float rounding (tested against the reloaded packed
checkpoint in ``tests/test_quantize.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE_METHODS = ("absmean", "absmedian")
EPS = 1e-5


def weight_scale(weight: torch.Tensor, method: str = "absmean") -> torch.Tensor:
    """Step 1: the per-tensor scale γ (a 0-d tensor, at least ``EPS``)."""
    w = weight.detach().float().abs()
    if method == "absmean":
        gamma = w.mean()
    elif method == "absmedian":
        gamma = w.flatten().median()
    else:
        raise ValueError(f"unknown scale method '{method}' (known: {', '.join(SCALE_METHODS)})")
    return gamma.clamp(min=EPS)


def ternarize(weight: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Step 2: integer ternary weights in {−1, 0, 1} (same dtype as ``weight``)."""
    return (weight / gamma.to(weight.dtype)).round_().clamp_(-1, 1)


# The quantizers run in every training forward, so they work in place on their own temporaries
# (no autograd graph: the STE adds the gradient path): fewer allocations than the out-of-place
# form, the same numbers.

@torch.no_grad()
def quantize_weight(weight: torch.Tensor, method: str = "absmean") -> torch.Tensor:
    """Steps 1–2, dequantized: W̃·γ (no gradient path; :func:`ste` adds it)."""
    gamma = weight_scale(weight, method)
    return ternarize(weight.float(), gamma).mul_(gamma).to(weight.dtype)


@torch.no_grad()
def quantize_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Step 3, dequantized: per-token absmax to ``bits``-bit integers and back (x̃/s)."""
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    scale = qmax / xf.abs().amax(dim=-1, keepdim=True).clamp_(min=EPS)
    return (xf * scale).round_().clamp_(-qmax - 1, qmax).div_(scale).to(x.dtype)


def ste(x: torch.Tensor, quantized: torch.Tensor, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Step 4: ``x + λ·(q(x) − x).detach()``: forward value blends to q(x), gradient is the identity."""
    delta = (quantized - x).detach()
    if isinstance(lam, float) and lam == 1.0:  # after the warm-up: skip a multiply by one
        return x + delta
    return x + lam * delta


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Step 5: parameter-free RMS norm over the last dimension, computed in fp32 like LlamaRMSNorm."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class LambdaState:
    """The warm-up λ shared by every BitLinear of a model (set by the method each step)."""

    def __init__(self, value: float = 1.0):
        self.value = float(value)


class BitLinear(nn.Linear):
    """Step 6: a drop-in ``nn.Linear`` training ternary weights and 8-bit activations through STE.

    ``weight`` stays the full-precision master weight (what the optimizer updates and what a resume
    checkpoint stores); the quantizers run in every forward. ``lam`` is a :class:`LambdaState`
    shared across the model, so one assignment moves every layer's warm-up.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scale_method: str = "absmean",
                 activation_bits: int = 8, norm: bool = False, norm_eps: float = 1e-6,
                 lam: LambdaState | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if scale_method not in SCALE_METHODS:
            raise ValueError(f"unknown scale method '{scale_method}' (known: {', '.join(SCALE_METHODS)})")
        self.scale_method = scale_method
        self.activation_bits = activation_bits
        self.norm = norm
        self.norm_eps = norm_eps
        self.lam = lam if lam is not None else LambdaState(1.0)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "BitLinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.weight.requires_grad_(linear.weight.requires_grad)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = rms_norm(x, self.norm_eps)
        lam = self.lam.value
        xq = ste(x, quantize_activation(x, self.activation_bits), lam)
        wq = ste(self.weight, quantize_weight(self.weight, self.scale_method), lam)
        return F.linear(xq, wq, self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, scale={self.scale_method}, a_bits={self.activation_bits}, "
                f"norm={self.norm}")


__all__ = ["BitLinear", "LambdaState", "SCALE_METHODS", "quantize_activation", "quantize_weight", "rms_norm", "ste",
           "ternarize", "weight_scale"]
