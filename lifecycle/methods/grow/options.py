"""Options of ``lifecycle grow``: the source (a trained model or a target config), the depth, the budget."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.methods.registry import MethodOptions
from lifecycle.options import CommandOptions, EvalAfter, TextDataOptions, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


class LayerwiseOptions(CommandOptions):
    """Settings of layer-wise growth (method: layerwise)."""

    layers_per_stage: int = Field(1, ge=1, description="layers added (and trained) per stage")
    embedding: Literal["model", "hashed", "unit"] = Field(
        "model",
        description="frozen substrate: the model's own embedding; hashed: a Gaussian per token string at the init scale; "
        "unit: the same vectors at L2 norm 1 (the paper's normalised glyph vectors)",
    )
    head: Literal["train", "frozen"] = Field("train", description="train the LM head (untied from the embedding) or keep it frozen")
    new_layer_init: Literal["identity", "random"] = Field(
        "identity", description="identity: random layer with zeroed output projections (adding it changes nothing)"
    )
    lora_rank: int = Field(0, ge=0, description="LoRA rank on the old layers during each stage (0 = old layers frozen)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2 × rank)")
    stop_patience: int = Field(
        0, ge=0, description="end a stage after this many held-out evaluations (train.eval_every) in a row without an "
        "improvement of more than stop_min_delta; 0 = train every stage for its full steps",
    )
    stop_min_delta: float = Field(0.0, ge=0, description="smallest held-out loss drop that counts as an improvement")


class GrowOptions(MethodOptions, TextDataOptions):
    """Options of ``lifecycle grow``; ``method`` names a registered grow method (``lifecycle ls``)."""

    method_command: ClassVar[str] = "grow"

    method: str = Field("gstack", description="grow method: gstack (stack layers) or layerwise (frozen substrate)")
    model: str | None = Field(None, description="trained source checkpoint to grow (folder, Hub id, .gguf)")
    config: str | None = Field(None, description="target config to grow from scratch: micro, tiny, small or a .json")
    output: str = Field(..., description="folder for the grown checkpoint")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    plan: bool = Field(False, description="print the G_stack growth plan and exit; nothing is trained or written")
    target_layers: int | None = Field(None, ge=1, description="depth of the grown model")
    factor: float | None = Field(None, description="growth factor g (target = g × source depth); default 4")
    order: Literal["stack", "interleave"] = Field("stack", description="G_stack layer order: 0123 0123 or 0011 2233")
    layer_map: list[int] | None = Field(None, description="explicit source layer for every target layer: 0,1,2,3,0,1,2,3")
    budget_tokens: int | None = Field(None, ge=1, description="total token budget D (default: train.steps × tokens per step)")
    growth_tokens: int | None = Field(None, ge=1, description="d: tokens for the small model (default: the paper's formula)")
    small_lr: float | None = Field(None, gt=0, description="peak LR of the small model's phase (default train.lr)")
    grown_lr: float | None = Field(
        None, gt=0, description="peak LR after stacking (default train.lr, the target's own LR; prts lowers it 1e-3 → 3e-4)"
    )
    growth_point: Literal["peak", "annealed"] = Field(
        "peak",
        description="G_stack from a config: stack the small model at its LR peak (prts: mid-schedule, no anneal) or "
        "after annealing it to train.min_lr_ratio (the earlier default)",
    )
    skip_seen_tokens: bool = Field(True, description="skip the tokens the source already saw of this data")
    seen_tokens: int | None = Field(None, ge=0, description="tokens of this data the source saw (default: from its lineage)")
    allow_pickle: bool = False
    trust_remote_code: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalAfter = Field(default_factory=EvalAfter)

    @field_validator("layer_map", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        from lifecycle.methods.grow.gstack import parse_layer_map

        return parse_layer_map(value)

    @model_validator(mode="after")
    def _one_source(self) -> "GrowOptions":
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of model (a trained source to grow) or config (grow from scratch)")
        return self

    @property
    def layerwise(self) -> LayerwiseOptions:
        """Settings of method layerwise (its defaults under any other method)."""
        return self.method_options if isinstance(self.method_options, LayerwiseOptions) else LayerwiseOptions()
