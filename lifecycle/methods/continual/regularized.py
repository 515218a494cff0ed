"""Rehearsal-free regularisers toward the previous task's weights: L2 and EWC.

- ``l2``: ``λ Σ (θ - θ_{t-1})²`` over every parameter, with ``θ_{t-1}`` the weights when the task starts
  (the pretrained weights for the first). Smith et al. 2023, "A Closer Look at Rehearsal-Free Continual
  Learning" (arXiv:2203.17269), Sec. 4: this plain L2 beats EWC in their study.
- ``ewc``: ``λ/2 Σ F (θ - θ_{t-1})²`` with ``F`` the diagonal empirical Fisher (squared gradients of
  the LM loss, one example at a time) on the finished tasks' training data, summed over tasks and
  anchored at the latest task's weights (online EWC, Schwarz et al. 2018; Kirkpatrick et al. 2017,
  "Overcoming catastrophic forgetting", Eq. 3). No penalty on the first task (no Fisher yet).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.methods.continual.base import ContinualMethod, TaskContext
from lifecycle.methods.registry import register_method
from lifecycle.train.hooks import TrainHooks


class L2Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="λ of λ Σ (θ - θ_prev)²")


class EWCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(100.0, ge=0, description="λ of λ/2 Σ F (θ - θ_prev)²")
    fisher_examples: int = Field(32, ge=1, description="training examples per task for the diagonal Fisher")


def _penalty_hooks(weights: dict[str, torch.Tensor] | None, anchor: dict[str, torch.Tensor], scale: float) -> TrainHooks:
    """extra_loss = scale · Σ w (θ - anchor)² (w = 1 without weights), on the parameters by name."""
    named: dict[str, nn.Parameter] = {}

    def prepare(model: nn.Module) -> nn.Module:
        named.clear()
        named.update(dict(model.named_parameters()))
        return model

    def extra_loss(model, batch, outputs):
        total = outputs.logits.new_zeros((), dtype=torch.float32)
        for name, ref in anchor.items():
            p = named[name]
            diff = (p.float() - ref.to(p.device)) ** 2
            total = total + ((weights[name].to(p.device) * diff).sum() if weights is not None else diff.sum())
        return scale * total

    return TrainHooks(prepare_model=prepare, extra_loss=extra_loss)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


class L2(ContinualMethod):
    def begin_task(self, ctx: TaskContext) -> TrainHooks:
        return _penalty_hooks(None, _snapshot(ctx.model), self.group.weight)


def diagonal_fisher(model: nn.Module, data, examples: int) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the LM loss per parameter, one training example at a time."""
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    n = min(examples, data.num_train)
    for i in range(n):
        model.zero_grad(set_to_none=True)
        batch = data.train_batch(torch.tensor([i]))
        model(**batch).loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None and name in fisher:
                fisher[name] += p.grad.detach().float() ** 2 / n
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return fisher


class EWC(ContinualMethod):
    def __init__(self, opts):
        super().__init__(opts)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def begin_task(self, ctx: TaskContext) -> TrainHooks | None:
        if not self.fisher:
            return None
        return _penalty_hooks(self.fisher, self.anchor, self.group.weight / 2)

    def end_task(self, ctx: TaskContext) -> None:
        new = diagonal_fisher(ctx.model, ctx.data, self.group.fisher_examples)
        for name, f in new.items():
            self.fisher[name] = self.fisher[name] + f if name in self.fisher else f
        self.anchor = {n: t for n, t in _snapshot(ctx.model).items() if n in self.fisher}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({f"fisher/{n}": t for n, t in self.fisher.items()})
        state.update({f"anchor/{n}": t for n, t in self.anchor.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.fisher = {k[len("fisher/"):]: v for k, v in state.items() if k.startswith("fisher/")}
        self.anchor = {k[len("anchor/"):]: v for k, v in state.items() if k.startswith("anchor/")}


@register_method("continual", "l2", paper="Smith et al. 2023, A Closer Look at Rehearsal-Free CL (arXiv:2203.17269), Sec. 4",
                 options=L2Options, summary="L2 toward the previous task's weights")
def make_l2(opts) -> L2:
    return L2(opts)


@register_method("continual", "ewc", paper="Kirkpatrick et al. 2017, EWC (PNAS), Eq. 3; online form of Schwarz et al. 2018",
                 options=EWCOptions, summary="Fisher-weighted L2 toward the previous task's weights")
def make_ewc(opts) -> EWC:
    return EWC(opts)


__all__ = ["EWC", "L2", "diagonal_fisher"]
