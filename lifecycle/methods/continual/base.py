"""What a continual method is: callbacks at the task boundaries around the one training engine.

A method is registered with ``register_method("continual", name, ...)`` on a function
``make(opts: ContinualOptions) -> ContinualMethod``. For each task in order the pipeline calls

1. ``begin_task(ctx) -> TrainHooks | None``: set up the task (OSFT's SVD and ranks, a new LoRA,
   the regulariser's anchor); may replace ``ctx.model``;
2. ``train_data(ctx)`` and ``train_config(cfg, ctx)``: what the engine trains on, and how (replay
   mixes in its buffer; LoRA methods use their own LR);
3. :func:`lifecycle.train.engine.train` with those hooks (exact resume inside the task);
4. ``end_task(ctx)``: after training, with ``ctx.model`` the trained plain model (EWC's Fisher,
   O-LoRA keeping its A matrices);

then scores the task sequence and checkpoints. ``state_dict()`` / ``load_state_dict()`` carry what
a method keeps across boundaries (tensors as safetensors, the rest as JSON) so a run resumes at a
boundary exactly. ``joint = True`` (multitask) trains once on every task together instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from lifecycle.train.engine import TrainConfig
from lifecycle.train.hooks import TrainHooks


@dataclass
class TaskContext:
    """One task of the sequence as a method sees it."""

    index: int
    tasks: list[Any]  # ContinualTask, in training order
    model: nn.Module
    tokenizer: Any
    data: Any  # this task's SupervisedData
    previous_data: Any | None  # the previous task's SupervisedData (None for the first task)
    seen_data: list[Any]  # every task's data up to and including this one
    opts: Any  # ContinualOptions
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> Any:
        return self.tasks[self.index]


class ContinualMethod:
    """Sequential fine-tuning: every callback a no-op. Methods override what they change."""

    joint: bool = False

    def __init__(self, opts: Any):
        self.opts = opts
        self.group = opts.method_options
        self.stats: dict[str, Any] = {}

    def begin_task(self, ctx: TaskContext) -> TrainHooks | None:
        return None

    def train_data(self, ctx: TaskContext) -> Any:
        return ctx.data

    def train_config(self, cfg: TrainConfig, ctx: TaskContext) -> TrainConfig:
        return cfg

    def end_task(self, ctx: TaskContext) -> None:
        return None

    def state_dict(self) -> dict:
        return {"stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.stats = dict(state.get("stats") or {})

    def report(self) -> dict:
        return dict(self.stats)


__all__ = ["ContinualMethod", "TaskContext"]
