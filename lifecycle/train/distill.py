"""Logit distillation from a teacher model, as engine hooks (used by prune's recovery, quantize, merge).

Two forms, both with ``T² · KL(teacher ‖ student)`` per token (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network"):

* :func:`distillation_hooks` — *added*: ``CE + weight · T²·KL`` (the LM loss stays, KD is added);
* :func:`reference_kd_hooks` — *mixed*: ``α · T²·KL + (1 − α) · CE``, AdaptPruner's ``LogitsTrainer``
  (``LLMPruner/post_training/trainer.py``: T = 2, α = 1 by default, i.e. pure KD), with the KL
  averaged over the tokens that carry a label.

The teacher is handed to the engine as an auxiliary model, so it sits on the accelerator's device next
to the batches (a CPU teacher fed GPU batches fails on any GPU).
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


def reference_kd_hooks(teacher: nn.Module, alpha: float, temperature: float = 2.0) -> TrainHooks:
    """``compute_loss`` replacing the LM loss by ``α · T²·KL + (1 − α) · CE`` (AdaptPruner's form).

    ``α = 1`` is pure KD: the data's labels then only choose which tokens count. The KL is averaged
    over the positions whose label is not ``-100``, as the reference masks it.
    """
    from lifecycle.train.hooks import causal_lm_loss

    def compute_loss(model: nn.Module, batch: dict, outputs: Any, indices: Any, step: int) -> torch.Tensor:
        labels = batch["labels"]
        with torch.no_grad():
            target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = alpha * kd_loss(outputs.logits, target, temperature, mask=labels != -100)
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * causal_lm_loss(outputs.logits, labels)
        return loss

    return TrainHooks(compute_loss=compute_loss, auxiliary_models=[teacher])


__all__ = ["distillation_hooks", "frozen_copy", "kd_loss", "reference_kd_hooks"]
