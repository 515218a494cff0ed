"""Options of ``lifecycle vpretrain``: the learner, the stream, the feedback set, LoRA and the engine."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lifecycle.methods.registry import MethodOptions
from lifecycle.methods.vpretrain.designer import DesignerConfig
from lifecycle.options import EvalAfter, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


def _default_train() -> TrainConfig:
    # The paper's LoRA branch: student LR 2e-4 (AdamW). Short warmup, constant-ish cosine to 10%.
    return TrainConfig(steps=200, lr=2e-4, warmup_steps=10, micro_batch_size=4, eval_every=0, weight_decay=0.0)


class LoraOptions(BaseModel):
    """LoRA on the learner (the paper's LoRA branch: r 8, alpha 16, dropout .05 on q/k/v/o/gate/up/down)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=0, description="LoRA rank; 0 = full-parameter training")
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


class VPretrainingOptions(BaseModel):
    """The ``v-pretraining`` group (Ke & Fanti 2026 defaults of the LoRA branch where the paper gives them)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(64, ge=1, description="candidate set size K (the true token + the learner's top K-1)")
    alpha_max: float = Field(0.5, ge=0, le=1, description="upper bound of the designer's gate")
    designer_lr: float = Field(1e-4, gt=0, description="designer AdamW learning rate")
    every: int = Field(8, ge=1, description="learner steps between designer updates (r)")
    burn_in: int = Field(16, ge=0, description="learner steps of plain next-token training before the first designer update")
    align: Literal["cosine", "dot"] = Field("cosine", description="Align(g_down, g_pre): cosine or the plain dot product V")
    meta_gradient: Literal["hvp", "jvp"] = Field(
        "hvp", description="hvp: double backward (create_graph); jvp: one forward-mode JVP (align=dot only)")
    reg_weight: float = Field(0.0, ge=0, description="λ: weight of R, the mass moved off the true token")
    align_layers: int = Field(2, ge=1, description="S: the learner's last N decoder layers (their LoRA parameters under LoRA)")
    feedback_batch_size: int = Field(8, ge=1, description="feedback examples per designer update")
    meta_length: int = Field(256, ge=2, description="tokens of the pretraining batch the meta step uses (paper: 256)")
    random_g_down: bool = Field(False, description="ablation: replace g_down by a random direction of the same norm")
    designer_init: str | None = Field(None, description="start from the designer of an earlier vpretrain output (its folder)")
    designer: DesignerConfig = Field(default_factory=DesignerConfig)

    @model_validator(mode="after")
    def _jvp_needs_dot(self) -> "VPretrainingOptions":
        if self.meta_gradient == "jvp" and self.align != "dot":
            raise ValueError("meta_gradient=jvp computes the dot-product alignment only; set align=dot")
        return self


class FixedTargetOptions(BaseModel):
    """Baselines with a fixed gate: uniform top-K smoothing, self top-K distillation."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(64, ge=1, description="candidate set size K")
    alpha: float = Field(0.1, ge=0, le=1, description="fixed share of the target moved onto the candidates")


class VPretrainOptions(MethodOptions):
    """Options of ``lifecycle vpretrain``; ``method`` names a registered method (``lifecycle ls``)."""

    method_command: ClassVar[str] = "vpretrain"

    model: str = Field(..., description="learner: folder, Hub id, .gguf, smollm2")
    output: str = Field(..., description="folder for the learner checkpoint (designer saved beside it)")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    method: str = Field("v-pretraining", description="v-pretraining, ntp, uniform-topk, self-topk (lifecycle ls)")
    data: str = Field(..., description="pretraining stream: a corpus spec (packed text) or prompt/completion JSONL (loss on completions)")
    data_format: Literal["auto", "text", "supervised"] = Field(
        "auto", description="auto: .jsonl files, task folders and gsm8k are prompt/completion data, the rest plain text")
    mix: str | None = Field(None, description="general corpus (a text data spec) mixed into a prompt/completion stream, loss on every token")
    mix_weight: float = Field(0.3, gt=0, lt=1, description="with mix: the general corpus's share of the stream's loss tokens")
    exclude_feedback: bool = Field(True, description="drop stream examples whose completion is a feedback example's (feedback stays held out)")
    feedback: str | None = Field(None, description="feedback set: prompt/completion JSONL of verified answers (v-pretraining)")
    feedback_examples: int | None = Field(None, ge=1, description="use only the first N feedback examples")
    block_size: int = Field(256, ge=8, description="tokens per packed block / max example length")
    feedback_length: int = Field(512, ge=8, description="max tokens of a feedback example (paper: 512)")
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    resume: bool = Field(False, description="continue from the latest checkpoint in the run folder")
    train: TrainConfig = Field(default_factory=_default_train)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: EvalAfter = Field(default_factory=EvalAfter)


__all__ = ["FixedTargetOptions", "LoraOptions", "VPretrainOptions", "VPretrainingOptions"]
