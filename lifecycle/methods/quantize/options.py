"""Options of ``lifecycle quantize``: the input, the export form, training data and the engine settings."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lifecycle.methods.registry import MethodOptions
from lifecycle.options import EvalAfter, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


def _default_qat() -> TrainConfig:
    # QAT continues a pretrained model: a moderate LR (the HF BitNet study used 1e-4 at scale; tiny
    # models take more), no weight decay on ternary master weights by default.
    return TrainConfig(steps=100, lr=1e-3, warmup_steps=5, schedule="cosine", micro_batch_size=8, eval_every=0,
                       weight_decay=0.0)


class QuantizeOptions(MethodOptions):
    """Options of ``lifecycle quantize``; ``method`` names a registered quantize method (``lifecycle ls``)."""

    method_command: ClassVar[str] = "quantize"

    model: str = Field(..., description="model to quantize: folder, Hub id, .gguf, smollm2")
    output: str = Field(..., description="folder for the quantized checkpoint")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    resume: bool = Field(False, description="QAT: continue from the latest checkpoint of an interrupted run")
    resume_strict: bool = Field(False, description="with resume: refuse to start when there is no checkpoint")
    method: str = Field("bitnet-b158", description="quantize method: bitnet-b158, ternary-rtn, bnb-nf4, bnb-int8 (lifecycle ls)")
    export: Literal["packed", "packed-autobitlinear", "online", "master"] = Field(
        "packed", description="ternary methods: packed (uint8 2-bit, transformers bitlinear), packed-autobitlinear "
        "(the same 2-bit layout for transformers' offline autobitlinear, which multiplies by γ), online (fp master "
        "weights, transformers autobitlinear online, trainable), master (plain fp weights, no quantization config)")
    modules_to_not_convert: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="linears kept in full precision (name suffixes or regexes as transformers matches them); "
        "embeddings and norms are never converted")
    # training (bitnet-b158)
    data: str = Field("wikitext", description="QAT training data")
    block_size: int = Field(128, ge=8)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)
    train: TrainConfig = Field(default_factory=_default_qat)
    distill: float = Field(0.0, ge=0, description="weight of logit distillation from the full-precision parent")
    distill_temperature: float = Field(1.0, gt=0)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: EvalAfter = Field(default_factory=EvalAfter)
