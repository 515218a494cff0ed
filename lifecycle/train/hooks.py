"""The engine's callbacks: how a method changes training without a loop of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class TrainHooks:
    """Ways a method changes training without writing its own loop (all optional).

    Model conversion
    - ``prepare_model(model) -> model``: before the optimizer and ``accelerator.prepare`` (QAT swaps
      its linears here); resume checkpoints hold the converted model.
    - ``export_model(model) -> model``: on the final plain model, before it is returned for saving
      (QAT folds its quantizers back into plain weights here).

    Loss
    - ``compute_loss(model, batch, outputs, indices, step) -> Tensor``: replaces the LM loss. The model
      is then called without labels; ``batch`` still holds them (-100 where no loss is taken),
      ``indices`` are the examples' positions in the training set, ``step`` the 0-based optimizer step.
      :func:`causal_lm_loss` is the LM loss, per token or per sample, for methods that reweight it.
    - ``extra_loss(model, batch, outputs) -> Tensor | None``: added to the loss (distillation,
      regularisers).

    Gradients and weights
    - ``after_backward(model, step)``: gradients are complete and unclipped (projection, masking);
      a one-argument ``after_backward(model)`` is accepted too. Not available under DeepSpeed, which
      steps inside backward.
    - ``after_step(model, step)``: after the optimizer step (re-masking pruned weights, quantizing).
    - ``trainable_parameters(model) -> list``: which parameters the optimizer sees (default: all with
      ``requires_grad``); or a list of groups ``{"params": [...], "lr_scale": s}``, each at ``s`` times
      the scheduled LR (SLCA's slow backbone).

    Data and state
    - ``sampler(epoch) -> LongTensor``: the order of training examples for an epoch (default
      ``data.epoch_order(seed, epoch)``); must be a pure function of the epoch so resume stays exact.
    - ``state_dict() -> dict`` / ``load_state_dict(state)``: the callback's own state, written into
      every resume checkpoint (tensors as safetensors, the rest as JSON) and restored on resume.
    - ``should_stop(row) -> bool``: called after every held-out evaluation with the logged row
      (``step``, ``tokens``, ``val_loss``, ...); True ends training after that step, and the result
      then reports the steps and tokens actually trained. It must depend on the row only (every
      process sees the same held-out loss), so all processes stop at the same step.
    - ``auxiliary_models``: teachers and other models the hooks call; moved to the accelerator's
      device, in eval mode, before training starts.
    """

    extra_loss: Callable[[nn.Module, Any, Any], torch.Tensor | None] | None = None
    compute_loss: Callable[[nn.Module, dict, Any, torch.Tensor, int], torch.Tensor] | None = None
    after_backward: Callable[..., None] | None = None
    after_step: Callable[[nn.Module, int], None] | None = None
    trainable_parameters: Callable[[nn.Module], list] | None = None
    prepare_model: Callable[[nn.Module], nn.Module] | None = None
    export_model: Callable[[nn.Module], nn.Module] | None = None
    sampler: Callable[[int], torch.Tensor] | None = None
    state_dict: Callable[[], dict] | None = None
    load_state_dict: Callable[[dict], None] | None = None
    should_stop: Callable[[dict], bool] | None = None
    auxiliary_models: list[nn.Module] = field(default_factory=list)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
    """Next-token cross-entropy as Hugging Face computes it (labels shifted inside, -100 ignored).

    ``per_sample=True`` returns each example's mean over its own loss tokens, so a method can weight
    samples; the plain mean over all loss tokens otherwise.
    """
    import torch.nn.functional as F

    shifted = labels[:, 1:]
    flat = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                           ignore_index=-100, reduction="none").view_as(shifted)
    mask = (shifted != -100).float()
    if per_sample:
        return (flat * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (flat * mask).sum() / mask.sum().clamp(min=1)


def place_auxiliary(models: list[nn.Module], device: Any) -> None:
    """Teachers and other helper models live where the batches are: the accelerator's device."""
    for aux in models:
        aux.to(device)
        aux.eval()
        for p in aux.parameters():
            p.requires_grad_(False)


def _call_after_backward(fn: Callable[..., None], model: nn.Module, step: int) -> None:
    import inspect

    try:
        takes_step = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_step = True
    fn(model, step) if takes_step else fn(model)


def _split_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, rest
