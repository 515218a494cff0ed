"""BitNet b1.58 quantization-aware training (``--method bitnet-b158``).

Ma et al. 2024, "The Era of 1-bit LLMs" (arXiv:2402.17764), with Nielsen & Schneider-Kamp 2024,
"BitNet b1.58 Reloaded" (arXiv:2407.09527) for the absmedian scale, and the λ warm-up of Hugging
Face's "Fine-tuning LLMs to 1.58bit" study. Steps:

1. Swap the decoder's ``nn.Linear`` layers (not embeddings, norms or lm_head; not
   ``modules_to_not_convert``) for :class:`~lifecycle.methods.quantize.bitlinear.BitLinear` in the
   engine's ``prepare_model`` hook, sharing one λ (:class:`LambdaState`).
2. λ schedule (:func:`lambda_at`): linear ``min(1, t/W)`` by default; ``power`` ``1 − (1 − t/W)^k``;
   ``sigmoid`` (rescaled to hit 0 at t=0 and 1 at t=W); ``constant`` (``lambda_value``, 1 = plain
   QAT). Set before training from step 0 and after every optimizer step (``after_step``); on resume,
   from the restored step (``state_dict``/``load_state_dict``).
3. Train the master weights on the shared engine, optionally with logit distillation from the
   full-precision parent (:mod:`lifecycle.train.distill`).
4. ``export_model``: fold into the chosen checkpoint form (:mod:`lifecycle.methods.quantize.export`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.errors import LifecycleError
from lifecycle.methods.quantize import pipeline
from lifecycle.methods.registry import register_method

ScaleMethod = Literal["absmean", "absmedian"]
QAT_RUN_SUBDIR = "qat"  # the engine's run folder (checkpoints, for --resume) inside the command's run folder


class BitnetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: ScaleMethod = Field("absmean", description="per-tensor weight scale: absmean (b1.58) or absmedian (Reloaded)")
    activation_bits: int = Field(8, ge=2, le=16, description="per-token absmax activation bits")
    norm: bool = Field(False, description="parameter-free RMS norm of the input inside every BitLinear")
    norm_eps: float = Field(1e-6, gt=0)
    lambda_schedule: Literal["linear", "power", "sigmoid", "constant"] = Field(
        "linear", description="warm-up of λ in x + λ·(q(x) − x): linear, power, sigmoid, constant")
    lambda_warmup_steps: int | None = Field(None, ge=0, description="steps until λ = 1 (default: half of train.steps)")
    lambda_k: float = Field(6.0, gt=0, description="power: exponent k; sigmoid: steepness k")
    lambda_value: float = Field(1.0, ge=0, le=1, description="constant schedule: λ")

    def warmup(self, steps: int) -> int:
        return self.lambda_warmup_steps if self.lambda_warmup_steps is not None else steps // 2

    def check(self, opts) -> None:
        if opts.export == "master" or opts.train.steps == 0:  # no training: converted at λ = 1
            return
        final = lambda_at(self, opts.train.steps, opts.train.steps)
        if final < 1.0 - 1e-9:
            raise LifecycleError(
                f"λ schedule ends at {final:.3g} < 1 after {opts.train.steps} steps, so the exported ternary model "
                f"would not be the trained one (shorten bitnet-b158.lambda_warmup_steps, or export=master)")


def lambda_at(o: BitnetOptions, step: int, total: int) -> float:
    """λ after ``step`` optimizer steps of ``total``."""
    if o.lambda_schedule == "constant":
        return o.lambda_value
    w = o.warmup(total)
    if w <= 0 or step >= w:
        return 1.0
    t = step / w
    if o.lambda_schedule == "linear":
        return t
    if o.lambda_schedule == "power":
        return 1.0 - (1.0 - t) ** o.lambda_k
    lo, hi = (1 / (1 + math.exp(o.lambda_k * 0.5)), 1 / (1 + math.exp(-o.lambda_k * 0.5)))
    return (1 / (1 + math.exp(-o.lambda_k * (t - 0.5))) - lo) / (hi - lo)


def convert(model, modules_to_not_convert: list[str], o: BitnetOptions, lam) -> int:
    """Step 1: swap the target linears for BitLinear (in place); returns how many."""
    from lifecycle.methods.quantize.bitlinear import BitLinear

    targets = pipeline.linears_to_convert(model, modules_to_not_convert)
    for name, linear in targets:
        model.set_submodule(name, BitLinear.from_linear(linear, scale_method=o.scale, activation_bits=o.activation_bits,
                                                        norm=o.norm, norm_eps=o.norm_eps, lam=lam))
    return len(targets)


@register_method("quantize", "bitnet-b158", options=BitnetOptions, aliases=("bitnet",),
                 paper="Ma et al. 2024, The Era of 1-bit LLMs (arXiv:2402.17764); Nielsen & Schneider-Kamp 2024, "
                       "BitNet b1.58 Reloaded (arXiv:2407.09527)",
                 summary="ternary weights, 8-bit activations, STE QAT with λ warm-up; packed 2-bit export")
def quantize_bitnet(ctx: pipeline.QuantizeContext) -> dict:
    from lifecycle.methods.quantize.bitlinear import LambdaState
    from lifecycle.methods.quantize.export import EXPORTERS
    from lifecycle.train.hooks import TrainHooks

    opts, o = ctx.opts, ctx.opts.method_options
    total = opts.train.steps
    lam = LambdaState(lambda_at(o, 0, total))
    position = {"step": 0}

    def set_step(step: int) -> None:
        position["step"] = step
        lam.value = lambda_at(o, step, total)

    def prepare(model):
        convert(model, opts.modules_to_not_convert, o, lam)
        set_step(0)
        return model

    if total == 0:
        model = prepare(ctx.model)
        lam.value = 1.0
        ctx.model = EXPORTERS[opts.export](model)
        return {"bitnet": {**o.model_dump(), "trained_steps": 0, "final_lambda": 1.0}}

    from lifecycle.train.engine import train

    hooks = TrainHooks(
        prepare_model=prepare,
        after_step=lambda model, step: set_step(step),
        export_model=lambda model: EXPORTERS[opts.export](model),
        state_dict=lambda: {"lambda_step": position["step"]},
        load_state_dict=lambda state: set_step(int(state.get("lambda_step", 0))),
    )
    if ctx.teacher is not None:
        from lifecycle.train.distill import distillation_hooks

        kd = distillation_hooks(ctx.teacher, opts.distill, opts.distill_temperature)
        hooks.extra_loss, hooks.auxiliary_models = kd.extra_loss, kd.auxiliary_models
    resume = "strict" if opts.resume and opts.resume_strict else opts.resume
    result = train(ctx.model, ctx.data, opts.train, ctx.run_dir / QAT_RUN_SUBDIR, hooks=hooks, resume=resume,
                   description="bitnet QAT")
    ctx.model = result.model
    ctx.history = list(result.history)
    ctx.extra["result"] = result
    return {"bitnet": {**o.model_dump(), "trained_steps": result.steps, "final_lambda": lam.value,
                       "lambda_warmup_steps": o.warmup(total)},
            "training": {"tokens_seen": result.tokens_seen, "final_train_loss": result.final_train_loss,
                         "final_val_loss": result.final_val_loss, "seconds": round(result.seconds, 1),
                         "distill": opts.distill}}


pipeline.TERNARY_METHODS.add("bitnet-b158")
pipeline.TRAINING_METHODS.add("bitnet-b158")
