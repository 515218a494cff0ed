"""O-LoRA and sequential LoRA: a new peft LoRA per task, merged into the weights when the task ends.

O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning",
arXiv:2310.14152, Eq. 4-5; code cmnfriend/O-LoRA ``uie_trainer_lora.py``): each task trains a new LoRA
while the earlier ones are frozen, with the loss ``CE + λ1 Σ_layers Σ|A_old A_newᵀ| + λ2 Σ‖θ_new‖₂``
(λ1 = 0.5, λ2 = 0 in the authors' scripts). The authors keep the earlier adapters as a frozen,
concatenated ``lora_A``/``lora_B`` beside the new one; frozen adapters add a fixed ``B A x`` to each
forward, so here they are merged into the base weights when their task ends (the same function, and
the output stays a plain HF checkpoint) and only their A matrices are kept for the orthogonality
loss. ``seq-lora`` is the same without the loss (λ1 = λ2 = 0). Targets default to q and v, as the
authors' scripts; r = 8, alpha = 32, dropout 0.1, LR 1e-3 (their values on T5 / LLaMA).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.methods.continual.base import ContinualMethod, TaskContext
from lifecycle.methods.registry import register_method
from lifecycle.train.hooks import TrainHooks


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = Field(1e-3, gt=0, description="LR for the adapters (replaces train.lr)")


class OLoRAOptions(LoRAOptions):
    lambda_orth: float = Field(0.5, ge=0, description="λ1: weight of Σ|A_old A_newᵀ|")
    lambda_l2: float = Field(0.0, ge=0, description="λ2: weight of the L2 norm of the new LoRA's parameters")


def orthogonality_loss(old: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """``Σ_old Σ|A_old A_newᵀ|`` for one layer (A: [r, in]): zero exactly when the row spaces are orthogonal."""
    total = new.new_zeros(())
    for a in old:
        total = total + (a.to(new) @ new.T).abs().sum()
    return total


def _lora_a_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The new adapter's A matrices by the base module's name (peft's ``lora_A['default']``)."""
    found = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            found[name.replace("base_model.model.", "", 1)] = lora_a["default"]
    return found


class SequentialLoRA(ContinualMethod):
    orthogonal = False

    def __init__(self, opts):
        super().__init__(opts)
        self.old_a: dict[str, list[torch.Tensor]] = {}  # base module name -> A of each finished task

    def train_config(self, cfg, ctx):
        return cfg.model_copy(update={"lr": self.group.lr})

    def begin_task(self, ctx: TaskContext) -> TrainHooks:
        from peft import LoraConfig, get_peft_model

        g = self.group
        config = LoraConfig(r=g.r, lora_alpha=g.alpha, lora_dropout=g.dropout, target_modules=list(g.target_modules),
                            bias="none", task_type="CAUSAL_LM")
        lam_orth = getattr(g, "lambda_orth", 0.0) if self.orthogonal else 0.0
        lam_l2 = getattr(g, "lambda_l2", 0.0) if self.orthogonal else 0.0
        old = self.old_a
        new_a: dict[str, nn.Module] = {}

        def prepare(model: nn.Module) -> nn.Module:
            wrapped = get_peft_model(model, config)
            new_a.clear()
            new_a.update(_lora_a_modules(wrapped))
            return wrapped

        def extra_loss(model, batch, outputs):
            if not (lam_orth and old) and not lam_l2:
                return None
            loss = torch.zeros((), device=outputs.logits.device)
            if lam_orth:
                for name, module in new_a.items():
                    if old.get(name):
                        loss = loss + lam_orth * orthogonality_loss(old[name], module.weight)
            if lam_l2:
                params = [p for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
                loss = loss + lam_l2 * sum(p.norm() for p in params)
            return loss

        def export(model: nn.Module) -> nn.Module:
            for name, module in new_a.items():
                self.old_a.setdefault(name, []).append(module.weight.detach().cpu().clone())
            return model.merge_and_unload()

        return TrainHooks(prepare_model=prepare, extra_loss=extra_loss, export_model=export)

    def state_dict(self) -> dict:
        state = super().state_dict()
        for name, mats in self.old_a.items():
            for t, a in enumerate(mats):
                state[f"old_a/{name}/{t}"] = a
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.old_a = {}
        entries = []
        for key in state:
            if key.startswith("old_a/"):
                name, t = key[len("old_a/"):].rsplit("/", 1)
                entries.append((name, int(t), key))
        for name, _, key in sorted(entries):
            self.old_a.setdefault(name, []).append(state[key])


class OLoRA(SequentialLoRA):
    orthogonal = True


@register_method("continual", "olora", paper="Wang et al. 2023, O-LoRA (arXiv:2310.14152), Eq. 4-5; cmnfriend/O-LoRA",
                 options=OLoRAOptions, summary="a new LoRA per task, orthogonal to the earlier ones' A; merged at the end")
def make_olora(opts) -> OLoRA:
    return OLoRA(opts)


@register_method("continual", "seq-lora", paper="Hu et al. 2021, LoRA (arXiv:2106.09685), trained task after task",
                 options=LoRAOptions, summary="a new LoRA per task, merged when it ends (no constraint)")
def make_seq_lora(opts) -> SequentialLoRA:
    return SequentialLoRA(opts)


__all__ = ["LoRAOptions", "OLoRA", "OLoRAOptions", "SequentialLoRA", "orthogonality_loss"]
