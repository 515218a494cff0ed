"""Options of ``lifecycle continual``: the model, the task sequence, training per task and scoring."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from lifecycle.methods.registry import MethodOptions
from lifecycle.options import EvalAfter, split_csv, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


def _default_train() -> TrainConfig:
    # One task = a short fine-tune at a constant LR (O-LoRA and OSFT scripts: constant schedule,
    # one epoch); tiny models need a higher LR than the papers' 1e-5 on 7B models.
    return TrainConfig(steps=30, lr=5e-5, warmup_steps=0, schedule="constant", micro_batch_size=8, eval_every=0,
                       weight_decay=0.0, log_every=10)


class ContinualOptions(MethodOptions):
    """Options of ``lifecycle continual``; ``method`` names a registered continual method (``lifecycle ls``)."""

    method_command: ClassVar[str] = "continual"

    model: str = Field(..., description="model to train: folder, Hub id, .gguf, smollm2")
    tasks: list[str] = Field(..., description="task sequence, in training order: task folders, prompt/completion .jsonl files (test split beside them) or names in shared/data/continual")
    output: str = Field(..., description="folder for the final model (per-task checkpoints go in its tasks/)")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    resume: bool = Field(False, description="continue an interrupted run: at the task boundary, and inside a task from its last checkpoint")
    method: str = Field("osft", description="continual method (lifecycle ls): osft, olora, seq-ft, seq-lora, l2, ewc, replay, slca, multitask")
    max_length: int = Field(256, ge=8, description="tokens per training example (prompt truncated from the left)")
    max_train_examples: int | None = Field(256, ge=1, description="training examples per task (the first ones); None = all")
    limit: int | None = Field(100, ge=1, description="test items scored per task (the first ones); None = all")
    score_all: bool = Field(False, description="after each task score every task, not only the seen ones (gives forward transfer)")
    zero_shot: bool = Field(True, description="score the untrained model on every task first (the floor, and FWT's reference)")
    eval_batch_size: int = Field(8, ge=1)
    train: TrainConfig = Field(default_factory=_default_train, description="engine settings for each task")
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: EvalAfter = Field(default_factory=EvalAfter, description="lm-eval tasks to score the final model with")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no tasks given")
        repeated = sorted({t for t in value if value.count(t) > 1})
        if repeated:
            raise ValueError(f"task {repeated[0]} is repeated in the sequence (each task is trained once)")
        return value


__all__ = ["ContinualOptions"]
