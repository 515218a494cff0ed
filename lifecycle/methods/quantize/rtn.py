"""Post-training ternary round-to-nearest (``--method ternary-rtn``): the no-training baseline.

The BitNet b1.58 quantizers (:mod:`.bitlinear`) applied to a trained full-precision model as is:
γ = absmean (or absmedian) per tensor, W̃ = clamp(round(W/γ), −1, 1), 8-bit per-token activations,
then the same export as ``bitnet-b158``. The Hugging Face BitNet study reports this "naive
conversion" loses nearly everything on Llama-3-8B (loss ≈ 13, as at random init); it is here as the
floor QAT has to beat.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.methods.quantize import pipeline
from lifecycle.methods.registry import register_method


class RtnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: Literal["absmean", "absmedian"] = Field("absmean", description="per-tensor weight scale")
    activation_bits: int = Field(8, ge=2, le=16)


@register_method("quantize", "ternary-rtn", options=RtnOptions, aliases=("rtn",),
                 paper="baseline: BitNet b1.58 quantizers (Ma et al. 2024, arXiv:2402.17764) without training",
                 summary="post-training round-to-nearest ternary, no training")
def quantize_rtn(ctx: pipeline.QuantizeContext) -> dict:
    from lifecycle.methods.quantize.bitlinear import LambdaState
    from lifecycle.methods.quantize.bitnet import BitnetOptions, convert
    from lifecycle.methods.quantize.export import EXPORTERS

    o = ctx.opts.method_options
    bit = BitnetOptions(scale=o.scale, activation_bits=o.activation_bits, lambda_schedule="constant")
    convert(ctx.model, ctx.opts.modules_to_not_convert, bit, LambdaState(1.0))
    ctx.model = EXPORTERS[ctx.opts.export](ctx.model)
    return {"rtn": o.model_dump()}


pipeline.TERNARY_METHODS.add("ternary-rtn")
