"""Logit distillation from a teacher model, as engine hooks (used by prune's recovery, quantize, merge).

``weight · T² · KL(teacher ‖ student)`` per token (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"). The teacher is handed to the engine as an auxiliary model, so it sits on the
accelerator's device next to the batches (a CPU teacher fed GPU batches fails on any GPU).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lifecycle.train.hooks import TrainHooks


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with no gradients: the teacher before the student changes."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(teacher ‖ student)`` averaged over the tokens where ``mask`` is true (all by default)."""
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    target = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_token = F.kl_div(student, target, log_target=True, reduction="none").sum(-1)
    if mask is None:
        return t * t * per_token.mean()
    mask = mask.to(per_token.dtype)
    return t * t * (per_token * mask).sum() / mask.sum().clamp(min=1)


def distillation_hooks(teacher: nn.Module, weight: float, temperature: float) -> TrainHooks:
    """``extra_loss`` adding ``weight · T² · KL`` on the batch, with the teacher as an auxiliary model."""

    def extra_loss(model: nn.Module, batch: Any, outputs: Any) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"} if isinstance(batch, dict) else {"input_ids": batch}
        with torch.no_grad():
            target = teacher(**inputs).logits
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return weight * kd_loss(outputs.logits, target, temperature, mask=mask)

    return TrainHooks(extra_loss=extra_loss, auxiliary_models=[teacher])


__all__ = ["distillation_hooks", "frozen_copy", "kd_loss"]
