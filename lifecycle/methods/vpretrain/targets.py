"""V-Pretraining's target construction, as pure functions (Ke & Fanti 2026, §3, LM instantiation).

- candidate set ``C_t = {y_t} ∪ TopK_{K−1}(sg p_θ(·|x<t) \\ {y_t})`` (:func:`candidate_set`): slot 0 is
  always the true token, slots 1..K−1 the learner's most likely other tokens;
- target ``q = (1−α)·onehot(y_t) + α·r``, zero outside ``C_t`` (:func:`soft_targets`);
- the learner's loss, cross-entropy to the detached ``q`` (:func:`soft_cross_entropy`); with ``α = 0``
  it is plain next-token cross-entropy, bit for bit (the same log-softmax, gather and mean).

Positions follow Hugging Face's shift: logits at ``t`` predict ``labels[t+1]``; positions whose label is
-100 carry no loss and their candidates are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision logits, as the LM loss computes them; fp64 stays fp64 (gradient checks)."""
    return x if x.dtype == torch.float64 else x.float()


def next_tokens(input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, T−1], loss mask [B, T−1]): the true next token at each position and where loss is taken.

    Where the label is -100, ``y`` is the next input id (a valid id for the designer to embed)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return torch.where(mask, shifted, input_ids[:, 1:]), mask


def candidate_set(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """``C_t`` as ids [B, T, k]: ``y_t`` in slot 0, then the top-(k−1) other ids of the detached logits."""
    scores = wide(logits.detach())
    if k == 1:
        return y.unsqueeze(-1)
    scores = scores.scatter(-1, y.unsqueeze(-1), float("-inf"))  # y_t is slot 0, never again
    others = scores.topk(k - 1, dim=-1).indices
    return torch.cat([y.unsqueeze(-1), others], dim=-1)


def soft_targets(alpha: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``q`` over the candidate slots [B, T, K]: ``(1−α)`` on slot 0 (the true token) plus ``α·r``."""
    onehot = torch.zeros_like(r)
    onehot[..., 0] = 1.0
    a = alpha.unsqueeze(-1)
    return (1 - a) * onehot + a * r


def soft_cross_entropy(logits: torch.Tensor, candidates: torch.Tensor, q: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """``−Σ_v q(v) log p_θ(v|x<t)`` averaged over loss positions; ``q`` is detached here.

    ``logits`` [B, T, V] are the learner's at the T positions (already shifted)."""
    log_probs = F.log_softmax(wide(logits), dim=-1).gather(-1, candidates)
    per_token = -(q.detach() * log_probs).sum(-1)
    m = mask.float()
    return (per_token * m).sum() / m.sum().clamp(min=1)


def mass_off_true(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean probability mass the target moves away from the true token, ``1 − q(y_t)``, over loss positions."""
    m = mask.float()
    return ((1 - q[..., 0]) * m).sum() / m.sum().clamp(min=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return (values * m).sum() / m.sum().clamp(min=1)


def uniform_r(candidates: torch.Tensor) -> torch.Tensor:
    """Baseline "uniform top-K smoothing": ``r`` uniform over ``C_t``."""
    return torch.full(candidates.shape, 1.0 / candidates.shape[-1], device=candidates.device)


def self_r(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Baseline "self top-K distillation": ``r`` = the learner's own detached distribution renormalised on ``C_t``."""
    return F.softmax(wide(logits.detach()).gather(-1, candidates), dim=-1)


__all__ = ["candidate_set", "wide", "mass_off_true", "masked_mean", "next_tokens", "self_r", "soft_cross_entropy",
           "soft_targets", "uniform_r"]
