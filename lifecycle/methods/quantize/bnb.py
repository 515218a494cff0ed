"""bitsandbytes post-training baselines (``--method bnb-nf4``, ``bnb-int8``).

NF4 (Dettmers et al. 2023, QLoRA, arXiv:2305.14314) and LLM.int8() (Dettmers et al. 2022,
arXiv:2208.07339) through transformers' ``BitsAndBytesConfig``: the model is written to a temporary
safetensors folder and reloaded quantized; the checkpoint carries transformers' own
``quantization_config`` and reloads with ``from_pretrained``. bitsandbytes 0.50 quantizes and runs
both on the CPU (checked in ``tests/test_quantize.py``); LLM.int8() casts activations to fp16 there.
``modules_to_not_convert`` maps to ``llm_int8_skip_modules`` (lm_head always stays full precision).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lifecycle.errors import LifecycleError
from lifecycle.methods.quantize import pipeline
from lifecycle.methods.registry import register_method


def _bnb_quantize(ctx: pipeline.QuantizeContext, kind: str) -> dict:
    import torch

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LifecycleError(f"method bnb-{kind} needs bitsandbytes (pip install bitsandbytes)") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    skip = sorted(set(ctx.opts.modules_to_not_convert) | {"lm_head"})
    if kind == "nf4":
        qconfig = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                     llm_int8_skip_modules=skip)
    else:
        qconfig = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="lifecycle-bnb-") as tmp:
        ctx.model.save_pretrained(tmp)
        try:
            model = AutoModelForCausalLM.from_pretrained(Path(tmp), quantization_config=qconfig, dtype=torch.float32,
                                                         device_map=device, use_safetensors=True)
        except (ImportError, RuntimeError, ValueError) as exc:
            raise LifecycleError(f"bitsandbytes {kind} quantization failed on {device}: {str(exc).splitlines()[0]}") from None
    model.eval()
    ctx.model = model
    return {"bnb": {"kind": kind, "device": device, "skip_modules": skip}}


@register_method("quantize", "bnb-nf4", paper="baseline: Dettmers et al. 2023, QLoRA NF4 (arXiv:2305.14314), bitsandbytes",
                 summary="post-training 4-bit NormalFloat (bitsandbytes), no training")
def quantize_nf4(ctx: pipeline.QuantizeContext) -> dict:
    return _bnb_quantize(ctx, "nf4")


@register_method("quantize", "bnb-int8", paper="baseline: Dettmers et al. 2022, LLM.int8() (arXiv:2208.07339), bitsandbytes",
                 summary="post-training 8-bit (bitsandbytes LLM.int8), no training")
def quantize_int8(ctx: pipeline.QuantizeContext) -> dict:
    return _bnb_quantize(ctx, "int8")


pipeline.WEIGHT_BITS.update({"bnb-nf4": 4, "bnb-int8": 8})
