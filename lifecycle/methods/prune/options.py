"""Options of ``lifecycle prune``: the target, calibration, the methods' settings and recovery training."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from lifecycle.methods.registry import MethodOptions
from lifecycle.options import EvalAfter, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


TAYLOR_NAMES = ("taylor-uniform", "taylor", "taylor_uniform", "llm-pruner")
ADAPT_CALIB_SAMPLES = 512  # AdaptPruner scripts: --num_examples 512 --taylor_seq_len 64, drawn at every step
DEFAULT_CALIB_SAMPLES = 128  # the other methods (FLAP's own 1024 × 128 is a bench setting, not a default)


def _default_recovery() -> TrainConfig:
    # Recovery fine-tunes a pretrained model: a small LR and the WSD schedule Adapt-Accel uses.
    return TrainConfig(steps=0, lr=1e-4, warmup_steps=0, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1,
                       micro_batch_size=8, eval_every=0, weight_decay=0.0)


class PruneOptions(MethodOptions):
    """Options of ``lifecycle prune``; ``method`` names a registered prune method (``lifecycle ls``)."""

    method_command: ClassVar[str] = "prune"

    model: str = Field(..., description="model to prune: folder, Hub id, .gguf, smollm2")
    output: str = Field(..., description="folder for the pruned checkpoint")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    method: str = Field("adapt", description="prune method: adapt, taylor-uniform, flap, depth (lifecycle ls)")
    target_params: int | float | str | None = Field(None, description="total parameters to reach, e.g. 95M")
    ratio: float | None = Field(None, gt=0, lt=1, description="share of the decoder (non-embedding) parameters to remove")
    plan: str | None = Field(None, description="per-layer plan file (YAML/JSON): num_key_value_heads, intermediate_size, drop_layers")
    uniform: bool = Field(False, description="same width in every layer (a vanilla config); adapt: A = 0")
    attention_ratio: float | None = Field(None, ge=0, lt=1, description="taylor-uniform: share of KV groups removed in every pruned layer")
    prune_layers: str | None = Field(None, description="taylor-uniform: layers pruned, START:END or all (default: LLM-Pruner's "
                                     "4:30 of 32 scaled to the depth)")
    taylor: Literal["param_first", "param_second", "param_mix"] = Field(
        "param_first", description="taylor-uniform: LLM-Pruner's Taylor estimator (param_mix adds the Fisher second-order term)")
    # calibration (the same first draw for every method)
    calib_data: str | None = Field(None, description="calibration data spec (default: data)")
    calib_samples: int | None = Field(None, ge=1, description="calibration blocks per draw (default: 512 for adapt, "
                                      "the reference scripts' --num_examples; 128 for the other methods)")
    calib_length: int = Field(64, ge=2)
    calib_fresh: bool = Field(True, description="adapt: draw new calibration blocks at every pruning step (reference); "
                              "false: one set for every step")
    calib_batch_size: int = Field(16, ge=1)
    use_cache: bool = Field(True, description="reuse cached importance scores for the same model and calibration")
    # Adapt-Pruner
    step_fraction: float = Field(0.02, gt=0, le=0.5, description="Adapt-Pruner Δ: mean sparsity added per step")
    amplitude: float = Field(0.02, ge=0, description="Adapt-Pruner A: layer-importance amplitude")
    max_sparsity: float = Field(0.99, gt=0, lt=1)
    stages: int | None = Field(None, ge=1, description="Adapt-Accel stages (prune, then train a slice); default with "
                               "recovery training: ~5% of the model per stage (see docs/prune.md); 1 = prune then recover")
    stage_sparsity: Literal["reset", "carry"] = Field("reset", description="Adapt-Accel: restart s_l at 0 relative to each "
                                                      "stage's widths (reference) or carry one trajectory across stages")
    channel_round: int = Field(8, ge=1, description="MLP widths are multiples of this")
    min_channels: int = Field(8, ge=1, description="fewest MLP channels a layer keeps")
    bias_compensation: bool = Field(True, description="flap: fold removed inputs' means into output biases")
    per_layer_checkpoint: bool = Field(False, description="always write the per-layer form, even for uniform shapes")
    # recovery training
    data: str = Field("wikitext", description="recovery training data (and default calibration data)")
    block_size: int = Field(128, ge=8)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)
    train: TrainConfig = Field(default_factory=_default_recovery)
    distill: float = Field(0.0, ge=0, description="logit distillation from the unpruned model: α of the reference form "
                           "(α·T²·KL + (1−α)·CE, α ≤ 1) or w of the added form (CE + w·T²·KL); 0 = off")
    distill_loss: Literal["reference", "added"] = Field("reference", description="reference: α·T²·KL + (1−α)·CE at "
                                                        "T = 2 (AdaptPruner's LogitsTrainer); added: CE + w·T²·KL at T = 1")
    distill_temperature: float | None = Field(None, gt=0, description="default: 2 (reference) or 1 (added)")
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: EvalAfter = Field(default_factory=EvalAfter)

    @model_validator(mode="after")
    def _one_target(self) -> "PruneOptions":
        given = [name for name in ("target_params", "ratio", "plan") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of target_params, ratio or plan" + (f" (got {', '.join(given)})" if given else ""))
        if self.distill_loss == "reference" and self.distill > 1:
            raise ValueError(f"distill {self.distill:g} is the α of the reference KD form α·T²·KL + (1−α)·CE and must be "
                             "≤ 1 (distill=1 is pure KD); for CE + w·T²·KL with w > 1 set distill_loss=added")
        if self.stages is not None and self.stages > 1 and self.method != "adapt":
            raise ValueError("stages > 1 (Adapt-Accel) needs method adapt")
        if self.stages is not None and self.stages > 1 and self.plan is not None:
            raise ValueError("stages > 1 needs a parameter target, not a plan file")
        if self.stages is not None and self.stages > 1 and self.train.steps < self.stages:
            raise ValueError(f"Adapt-Accel with {self.stages} stages needs train.steps >= {self.stages}")
        if self.attention_ratio is not None and self.method != "taylor-uniform":
            raise ValueError("attention_ratio applies to method taylor-uniform (the other methods choose head counts themselves)")
        if (self.prune_layers is not None or self.taylor != "param_first") and self.method not in TAYLOR_NAMES:
            raise ValueError("prune_layers and taylor apply to method taylor-uniform (LLM-Pruner's recipe)")
        if self.uniform and self.method == "flap":
            raise ValueError("uniform shapes need method adapt or taylor-uniform (FLAP's search is global)")
        if self.distill > 0 and self.train.steps == 0:
            raise ValueError("distill needs recovery training (train.steps > 0)")
        return self

    @property
    def calibration_samples(self) -> int:
        """Blocks per calibration draw: the option, or the method's reference default."""
        if self.calib_samples is not None:
            return self.calib_samples
        return ADAPT_CALIB_SAMPLES if self.registered_method.name == "adapt" else DEFAULT_CALIB_SAMPLES

    @property
    def temperature(self) -> float:
        """Distillation temperature: the option, or the form's default (2 reference, 1 added)."""
        if self.distill_temperature is not None:
            return self.distill_temperature
        return 2.0 if self.distill_loss == "reference" else 1.0
