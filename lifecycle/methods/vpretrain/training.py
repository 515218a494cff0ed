"""V-Pretraining on the one engine: the designer's schedule and state as :class:`TrainHooks`.

Algorithm 1 of Ke & Fanti 2026 at learner step ``s`` (0-based) when ``s ≥ burn_in`` and
``(s − burn_in) % every == 0``: (1) one designer step on ``L_meta`` (feedback batch → ``g_down``, this
step's pretraining batch → ``g_pre(φ)``), (2) the targets are rebuilt with the updated designer and
detached, (3) the learner steps on them. On the hooks:

- ``compute_loss(model, batch, outputs, indices, step)`` runs before the learner's backward. On an
  update step (first micro-batch only) it does (1) with its own forwards (``autograd.grad`` only, so the
  learner's ``.grad`` is untouched), then (2) from the engine's learner logits, and returns the learner
  loss; the engine's backward + optimizer step is (3). Between updates the latest designer shapes the
  targets; during the burn-in the targets are the true tokens (plain next-token loss; a choice).
- ``state_dict`` / ``load_state_dict``: designer weights, its AdamW state, the update count and the
  metrics rows, so a resumed run equals an uninterrupted one.

The baselines of the paper's ablation reuse the same path with a fixed gate: ``uniform`` (``r`` uniform
on ``C_t``) and ``self`` (``r`` = the learner's own renormalised top-K distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lifecycle.data.packing import epoch_order
from lifecycle.errors import LifecycleError
from lifecycle.methods.vpretrain.targets import candidate_set, next_tokens, self_r, soft_targets, uniform_r
from lifecycle.methods.vpretrain.value import (Targets, alignment_parameters, designer_targets, feedback_gradient,
                                               learner_loss, meta_loss, meta_loss_jvp, random_like_gradient)
from lifecycle.train.hooks import TrainHooks

Mode = Literal["designer", "uniform", "self"]


@dataclass
class Schedule:
    """When the designer steps: every ``every`` learner steps from ``burn_in`` on."""

    every: int = 8
    burn_in: int = 16

    def updates_at(self, step: int) -> bool:
        return step >= self.burn_in and (step - self.burn_in) % self.every == 0

    def shaping(self, step: int) -> bool:
        return step >= self.burn_in


class VPretrainHooks:
    """The state V-Pretraining keeps across learner steps; :meth:`hooks` hands it to the engine."""

    def __init__(self, *, mode: Mode, k: int, schedule: Schedule, designer: nn.Module | None = None,
                 feedback: Any = None, designer_lr: float = 1e-4, align: str = "cosine", reg_weight: float = 0.0,
                 align_layers: int = 2, feedback_batch_size: int = 8, meta_length: int = 256,
                 random_g_down: bool = False, fixed_alpha: float = 0.0, seed: int = 0, meta_gradient: str = "hvp"):
        if mode == "designer" and (designer is None or feedback is None):
            raise LifecycleError("V-Pretraining needs a designer and a feedback set")
        self.mode, self.k, self.schedule = mode, k, schedule
        self.designer, self.feedback = designer, feedback
        self.align, self.reg_weight, self.align_layers = align, reg_weight, align_layers
        self.feedback_batch_size, self.meta_length = feedback_batch_size, meta_length
        self.random_g_down, self.fixed_alpha, self.seed = random_g_down, fixed_alpha, seed
        self.meta_gradient = meta_gradient
        self.optimizer = (torch.optim.AdamW(designer.parameters(), lr=designer_lr, weight_decay=0.0)
                          if designer is not None else None)
        self.updates = 0
        self.updated_at: list[int] = []  # learner steps (0-based) at which the designer stepped
        self.rows: list[dict] = []
        self._last_update_step: int | None = None

    # -- the engine's callbacks ------------------------------------------------------------------
    def hooks(self) -> TrainHooks:
        return TrainHooks(compute_loss=self.compute_loss, state_dict=self.state_dict,
                          load_state_dict=self.load_state_dict)

    def compute_loss(self, model: nn.Module, batch: dict, outputs: Any, indices: torch.Tensor, step: int) -> torch.Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise LifecycleError("vpretrain runs in one process (the designer's updates are not synchronised across ranks)")
        learner = getattr(model, "module", model)
        logits = outputs.logits
        if self.mode == "designer":
            self._place(logits.device)
            if self.schedule.updates_at(step) and self._last_update_step != step:
                self._designer_step(learner, batch, step)
            if not self.schedule.shaping(step):
                targets = self._true_token_targets(batch, logits)
            else:
                with torch.no_grad():
                    targets = designer_targets(self.designer, batch, logits, self.k)
        else:
            targets = self._fixed_targets(batch, logits)
        self._record(step, targets)
        return learner_loss(logits, targets)

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"updates": self.updates, "updated_at": list(self.updated_at), "rows": list(self.rows)}
        if self.designer is not None:
            state.update({f"designer.{k}": v for k, v in self.designer.state_dict().items()})
            for pid, entry in self.optimizer.state_dict()["state"].items():
                for key, value in entry.items():
                    state[f"designer_opt.{pid}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))
        self.updated_at = list(state.get("updated_at", []))
        self.rows = list(state.get("rows", []))
        if self.designer is None:
            return
        weights = {k[len("designer."):]: v for k, v in state.items() if k.startswith("designer.")}
        self.designer.load_state_dict(weights, strict=True)
        opt_state: dict[int, dict] = {}
        for key, value in state.items():
            if key.startswith("designer_opt."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})

    # -- internals -------------------------------------------------------------------------------
    def _place(self, device: torch.device) -> None:
        """The designer is no auxiliary model (those are frozen): it follows the batches here."""
        if next(self.designer.parameters()).device != device:
            self.designer.to(device)
        for entry in self.optimizer.state.values():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and key != "step" and value.device != device:
                    entry[key] = value.to(device)

    def feedback_batch(self, update: int, device: torch.device) -> dict:
        """The feedback examples of designer update ``update``: a pure function of (seed, update)."""
        n = self.feedback.num_train
        positions = range(update * self.feedback_batch_size, (update + 1) * self.feedback_batch_size)
        orders: dict[int, torch.Tensor] = {}
        idx = []
        for pos in positions:
            epoch, within = divmod(pos, n)
            if epoch not in orders:
                orders[epoch] = epoch_order(n, self.seed, epoch)
            idx.append(int(orders[epoch][within]))
        return {k: v.to(device) for k, v in self.feedback.train_batch(torch.tensor(idx)).items()}

    def _designer_step(self, learner: nn.Module, batch: dict, step: int) -> None:
        device = batch["input_ids"].device
        named = alignment_parameters(learner, self.align_layers)
        params = [p for _, p in named]
        g_down = feedback_gradient(learner, self.feedback_batch(self.updates, device), params)
        if self.random_g_down:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.updates)
            g_down = random_like_gradient(g_down, generator)
        meta_batch = {k: v[:, : self.meta_length] for k, v in batch.items()}
        if self.meta_gradient == "jvp":
            loss, parts = meta_loss_jvp(learner, self.designer, meta_batch, named, g_down, k=self.k,
                                        reg_weight=self.reg_weight)
        else:
            loss, parts = meta_loss(learner, self.designer, meta_batch, params, g_down, k=self.k, align=self.align,
                                    reg_weight=self.reg_weight)
        designer_params = [p for p in self.designer.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, designer_params, allow_unused=True, materialize_grads=True)
        for p, g in zip(designer_params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        self.updated_at.append(step)
        self._last_update_step = step
        self.rows.append({"step": step + 1, "kind": "designer", **{k: round(v, 6) for k, v in parts.items()}})

    def _true_token_targets(self, batch: dict, logits: torch.Tensor) -> Targets:
        y, mask = next_tokens(batch["input_ids"], batch["labels"])
        candidates = y.unsqueeze(-1)
        ones = torch.ones(candidates.shape, device=logits.device)
        return Targets(candidates, ones, torch.zeros(y.shape, device=logits.device), mask)

    def _fixed_targets(self, batch: dict, logits: torch.Tensor) -> Targets:
        y, mask = next_tokens(batch["input_ids"], batch["labels"])
        shifted = logits[:, :-1]
        candidates = candidate_set(shifted, y, self.k)
        r = uniform_r(candidates) if self.mode == "uniform" else self_r(shifted, candidates)
        alpha = torch.full(y.shape, float(self.fixed_alpha), device=logits.device)
        return Targets(candidates, soft_targets(alpha, r), alpha, mask)

    def _record(self, step: int, targets: Targets) -> None:
        if self.rows and self.rows[-1].get("kind") == "targets" and self.rows[-1]["step"] == step + 1:
            return  # one row per learner step (the first micro-batch's)
        self.rows.append({"step": step + 1, "kind": "targets", **{k: round(v, 6) for k, v in targets.stats().items()}})


__all__ = ["Schedule", "VPretrainHooks"]
