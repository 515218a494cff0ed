"""The value of a pretraining target and the designer's meta-objective (Ke & Fanti 2026, §3 and App. B).

- ``S``: the learner's trainable parameters in its last ``n`` decoder layers (``n = 2``; with LoRA these
  are the LoRA matrices of those layers, as in the paper's LoRA branch) — :func:`alignment_parameters`.
- ``g_down``: the detached gradient on ``S`` of the feedback loss, teacher-forced NLL of the verified
  answers (loss on completion tokens only) — :func:`feedback_gradient`.
- ``g_pre(φ)``: the gradient on ``S`` of the learner's loss to the designer's target ``q(φ)``, built with
  ``create_graph=True`` so it stays a function of φ — :func:`meta_loss`.
- ``V = g_downᵀ g_pre``: plain dot product, no Adam preconditioning and no random projection (App. B.4);
  ``L_meta = −Align(g_down, g_pre(φ)) + λ·R(φ)`` with Align the dot product or the cosine and ``R`` the
  mass moved off the true token. Its gradient in φ is a mixed second derivative (a Hessian-vector
  product through ``create_graph``); it never touches the learner's ``.grad``.

Forward-mode route (:func:`meta_loss_jvp`, dot Align only). ``q`` enters the learner's loss linearly and
does not depend on θ, so ``V = −mean_t Σ_{v∈C_t} q_t(v)·D_t(v)`` with ``D_t(v) = g_downᵀ∇_θ log p(v|x<t)``: one
JVP of the log-probabilities along ``g_down`` gives ``D``, and ``−V`` is then first-order in φ. A test
checks that its meta-gradient equals the create_graph route's.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.vpretrain.targets import (candidate_set, mass_off_true, masked_mean, next_tokens,
                                                  soft_cross_entropy, soft_targets, wide)
from lifecycle.train.hooks import causal_lm_loss

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def alignment_parameters(model: nn.Module, last_n: int = 2) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters of the last ``last_n`` decoder layers (LoRA ones under peft), by name."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    indices = sorted({int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))})
    if not indices:
        raise LifecycleError("V-Pretraining: the learner has no trainable decoder layers (model.layers.N) to align on")
    keep = set(indices[-last_n:])
    return [(n, p) for n, p in named if (m := _LAYER.search(n)) and int(m.group(1)) in keep]


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Plain-math attention while the block runs: fused SDPA kernels have no double backward, which the
    mixed Hessian-vector product needs (transformers reads ``config._attn_implementation`` per call)."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "_attn_implementation")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = before[key]


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def feedback_gradient(model: nn.Module, batch: dict, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached ``∇_S`` of the teacher-forced NLL of the feedback answers (``labels`` -100 on prompts)."""
    logits = model(**_model_inputs(batch)).logits
    loss = causal_lm_loss(logits, batch["labels"])
    return [g.detach() for g in torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)]


def random_like_gradient(g_down: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Ablation "random g_down": Gaussian directions with the same overall norm as the real one."""
    noise = [torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device) for g in g_down]
    scale = _norm(g_down) / _norm(noise).clamp(min=1e-12)
    return [n * scale for n in noise]


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((wide(t) ** 2).sum() for t in tensors))


@dataclass
class Targets:
    """The learner's targets at one batch: candidate ids, ``q`` over them, the gate, the loss mask."""

    candidates: torch.Tensor  # [B, T-1, K]
    q: torch.Tensor  # [B, T-1, K]
    alpha: torch.Tensor  # [B, T-1]
    mask: torch.Tensor  # [B, T-1]

    def stats(self) -> dict[str, float]:
        return {"gate_mean": float(masked_mean(self.alpha.detach(), self.mask)),
                "mass_off_true": float(mass_off_true(self.q.detach(), self.mask))}


def designer_targets(designer: nn.Module, batch: dict, learner_logits: torch.Tensor, k: int) -> Targets:
    """``C_t`` from the detached learner logits, then ``q(φ)`` from the designer (differentiable in φ)."""
    input_ids = batch["input_ids"]
    y, mask = next_tokens(input_ids, batch["labels"])
    candidates = candidate_set(learner_logits[:, :-1], y, k)
    attention = batch.get("attention_mask")
    scores, alpha = designer(input_ids[:, :-1], y, candidates,
                             attention_mask=attention[:, :-1] if attention is not None else None)
    q = soft_targets(alpha, torch.softmax(wide(scores), dim=-1))
    return Targets(candidates, q, alpha, mask)


def meta_loss(model: nn.Module, designer: nn.Module, batch: dict, params: list[torch.Tensor],
              g_down: list[torch.Tensor], *, k: int, align: str = "cosine", reg_weight: float = 0.0,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_meta(φ) = −Align(g_down, g_pre(φ)) + λ·R(φ)`` on one pretraining batch, differentiable in φ.

    Returns the loss and its parts (``value`` = the plain dot product V, ``cosine``, ``mass_off_true``)."""
    with eager_attention(model):
        logits = model(**_model_inputs(batch)).logits
    targets = designer_targets(designer, batch, logits, k)
    # q stays attached here (not soft_cross_entropy's detach): g_pre must be a function of φ.
    log_probs = torch.log_softmax(wide(logits[:, :-1]), dim=-1).gather(-1, targets.candidates)
    pre_loss = masked_mean(-(targets.q * log_probs).sum(-1), targets.mask)
    g_pre = torch.autograd.grad(pre_loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
    value = sum((wide(a) * wide(b)).sum() for a, b in zip(g_down, g_pre))
    cosine = value / (_norm(g_down) * _norm(list(g_pre))).clamp(min=1e-12)
    moved = mass_off_true(targets.q, targets.mask)
    aligned = cosine if align == "cosine" else value
    loss = -aligned + reg_weight * moved
    return loss, {"value": float(value.detach()), "cosine": float(cosine.detach()), "meta_loss": float(loss.detach()),
                  **targets.stats()}


def meta_loss_jvp(model: nn.Module, designer: nn.Module, batch: dict, named_params: list[tuple[str, torch.Tensor]],
                  g_down: list[torch.Tensor], *, k: int, reg_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``−V(φ) + λ·R(φ)`` (dot Align) via one forward-mode JVP instead of a double backward; same gradient in φ."""
    from torch.func import functional_call, jvp

    names = [n for n, _ in named_params]
    inputs = _model_inputs(batch)

    def logits_of(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values)), args=(), kwargs=inputs).logits

    with eager_attention(model):
        logits, tangent = jvp(logits_of, tuple(p.detach() for _, p in named_params), tuple(g_down))
    targets = designer_targets(designer, batch, logits.detach(), k)
    shifted, dshift = wide(logits[:, :-1].detach()), wide(tangent[:, :-1].detach())
    # d/dε log softmax(z + ε·dz) = dz − Σ softmax(z)·dz
    dlogp = dshift - (torch.softmax(shifted, dim=-1) * dshift).sum(-1, keepdim=True)
    directional = dlogp.gather(-1, targets.candidates)
    value = -masked_mean((targets.q * directional).sum(-1), targets.mask)
    moved = mass_off_true(targets.q, targets.mask)
    loss = -value + reg_weight * moved
    return loss, {"value": float(value.detach()), "meta_loss": float(loss.detach()), **targets.stats()}


def learner_loss(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """The learner's loss: cross-entropy to the detached targets (logits unshifted, [B, T, V])."""
    return soft_cross_entropy(logits[:, :-1], targets.candidates, targets.q, targets.mask)


__all__ = ["Targets", "alignment_parameters", "designer_targets", "eager_attention", "feedback_gradient", "learner_loss", "meta_loss", "meta_loss_jvp",
           "random_like_gradient"]
