"""OSFT: constrained full fine-tuning in the orthogonal complement of each matrix's top singular subspace.

Nayak et al. 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning"
(arXiv:2504.07097); code: Red-Hat-AI-Innovation-Team/mini_trainer ``osft_utils.py`` and peft's OSF
tuner (``tuners/osf/utils.py``). Per target matrix (q, k, v, o, gate, up, down of every block):

1. at the start of each task, ``U, S, Vᵀ = svd(W)`` in fp32; the top ``k`` triplets are frozen buffers
   (U_high, S_high, V_high), the rest trainable parameters initialised from the SVD, so W is
   unchanged at the start (:class:`OSFTLinear`, forward ``W = U_h S_h V_h + U_l S_l V_l``);
2. after backward, ``dU_l -= U_h (U_hᵀ dU_l)`` and ``dV_l -= (dV_l V_hᵀ) V_h`` (S_l unprojected);
3. after the optimizer step the same projection on the parameters themselves, because AdamW's
   elementwise rescaling leaks updates into the frozen subspace (mini_trainer ``project_parameters``);
4. at the end of the task the dense W is rebuilt (the output is a plain HF checkpoint) and the next
   task decomposes the updated W again with its own ranks.

Preserved ranks (``k`` = peft's ``effective_rank``) come from layer importance, the paper's rule
(from AdaSVD): importance ``I`` = mean cosine similarity between a block's input and output hidden
states on the previous task's data, min-max normalised over blocks to ``I_n``, and the preserved
fraction ``mrr + I_n (trr - mrr)``: high similarity (the block changes its input little) keeps more.
Deviation, said plainly: ``cos(X, WX)`` is undefined for a non-square matrix, so importance is per
block and the block's fraction applies to its 7 matrices; ``mrr``/``trr`` are centred on a budget that
grows by ``preserve_step`` per task (peft's docs: freeze more capacity on each later task; their
example 0.3 → 0.5 → 0.7); the first task has no previous task and uses its own data. ``k`` is capped at
``min(out, in) - 1`` (mini_trainer caps at full rank − 1) so every matrix keeps a direction to train.
Other parameters (embeddings, norms, head) are frozen as peft's tuner freezes them (``train_other``).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.continual.base import ContinualMethod, TaskContext
from lifecycle.methods.registry import register_method
from lifecycle.train.hooks import TrainHooks

PAPER = "Nayak et al. 2025, Sculpting Subspaces / OSFT (arXiv:2504.07097), Sec. 3; mini_trainer osft_utils"


class OSFTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preserve_start: float = Field(0.3, ge=0, le=1, description="mean preserved rank fraction on the first task")
    preserve_step: float = Field(0.2, ge=0, le=1, description="added to the mean preserved fraction per later task")
    preserve_max: float = Field(0.9, ge=0, le=1, description="largest preserved fraction of any matrix")
    spread: float = Field(0.2, ge=0, le=1, description="trr - mrr: how far importance moves a block's fraction")
    preserved_rank: int | None = Field(None, ge=0, description="a fixed preserved rank k for every matrix (peft effective_rank); "
                                       "overrides the importance rule")
    importance_batches: int = Field(4, ge=1, description="batches of the previous task's data for layer importance")
    train_other: bool = Field(False, description="also train embeddings, norms and the head without constraint")


class OSFTLinear(nn.Module):
    """A linear layer as ``U_h S_h V_h + U_l S_l V_l``: the top-k part frozen, the rest trainable."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        weight = linear.weight.detach()
        U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
        dtype = weight.dtype
        self.register_buffer("U_high", U[:, :k].contiguous().to(dtype).clone())
        self.register_buffer("S_high", S[:k].contiguous().to(dtype).clone())
        self.register_buffer("V_high", Vh[:k].contiguous().to(dtype).clone())
        self.U_low = nn.Parameter(U[:, k:].contiguous().to(dtype).clone())
        self.S_low = nn.Parameter(S[k:].contiguous().to(dtype).clone())
        self.V_low = nn.Parameter(Vh[k:].contiguous().to(dtype).clone())
        self.bias = linear.bias
        self.in_features, self.out_features, self.rank_high = linear.in_features, linear.out_features, k

    def dense_weight(self) -> torch.Tensor:
        return (self.U_high * self.S_high) @ self.V_high + (self.U_low * self.S_low) @ self.V_low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(), self.bias)

    @torch.no_grad()
    def project_gradients(self) -> None:
        if self.U_low.grad is not None:
            self.U_low.grad -= self.U_high @ (self.U_high.T @ self.U_low.grad)
        if self.V_low.grad is not None:
            self.V_low.grad -= (self.V_low.grad @ self.V_high.T) @ self.V_high

    @torch.no_grad()
    def project_parameters(self) -> None:
        self.U_low -= self.U_high @ (self.U_high.T @ self.U_low)
        self.V_low -= (self.V_low @ self.V_high.T) @ self.V_high

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.U_low.device, dtype=self.U_low.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def target_linears(model: nn.Module) -> list[tuple[int, str, nn.Module, str]]:
    """(block index, parent module, attribute) of every target matrix: q, k, v, o, gate, up, down."""
    from lifecycle.model.adapter import adapter_for

    adapter = adapter_for(model)
    out = []
    for i, layer in enumerate(adapter.layers):
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                              (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            out.extend((i, parent, name) for name in names)  # type: ignore[misc]
    return out


@torch.no_grad()
def layer_importance(model: nn.Module, data, batches: int, batch_size: int = 8) -> list[float]:
    """Mean cosine similarity between each block's input and output hidden states (non-pad tokens)."""
    from lifecycle.model.adapter import adapter_for

    layers = adapter_for(model).layers
    sums = [0.0] * len(layers)
    count = [0] * len(layers)
    mask_box: dict[str, torch.Tensor] = {}

    def hook(index: int):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
            m = mask_box["mask"].to(cos.dtype)
            sums[index] += float((cos * m).sum())
            count[index] += int(m.sum())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        n = min(data.num_train, batches * batch_size)
        for start in range(0, n, batch_size):
            batch = data.train_batch(torch.arange(start, min(start + batch_size, n)))
            mask_box["mask"] = batch["attention_mask"]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s / max(c, 1) for s, c in zip(sums, count)]


def preserved_fractions(importance: list[float], budget: float, spread: float, cap: float) -> list[float]:
    """``mrr + I_n (trr - mrr)`` with ``mrr, trr = budget ∓ spread/2``; monotone in importance."""
    lo, hi = min(importance), max(importance)
    normed = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in importance]
    mrr, trr = budget - spread / 2, budget + spread / 2
    return [min(max(mrr + n * (trr - mrr), 0.0), cap) for n in normed]


def check_preserved_rank(model: nn.Module, rank: int | None) -> None:
    if rank is None:
        return
    for i, parent, name in target_linears(model):
        w = getattr(parent, name).weight
        if rank > min(w.shape) - 1:
            raise LifecycleError(f"osft.preserved_rank {rank} exceeds what layer {i} {name} (rank {min(w.shape)}) "
                                 f"can preserve and still train (at most {min(w.shape) - 1})")


class OSFT(ContinualMethod):
    def __init__(self, opts):
        super().__init__(opts)
        self.stats = {"boundaries": []}

    def ranks_for(self, ctx: TaskContext) -> tuple[list[int], list[float] | None, list[float]]:
        g: OSFTOptions = self.group
        targets = target_linears(ctx.model)
        if g.preserved_rank is not None:
            check_preserved_rank(ctx.model, g.preserved_rank)
            return [g.preserved_rank] * len(targets), None, []
        source = ctx.previous_data if ctx.previous_data is not None else ctx.data
        importance = layer_importance(ctx.model, source, g.importance_batches)
        budget = min(g.preserve_start + ctx.index * g.preserve_step, g.preserve_max)
        fractions = preserved_fractions(importance, budget, g.spread, g.preserve_max)
        ranks = []
        for i, parent, name in targets:
            full = min(getattr(parent, name).weight.shape)
            ranks.append(min(round(fractions[i] * full), full - 1))
        return ranks, importance, fractions

    def begin_task(self, ctx: TaskContext) -> TrainHooks:
        started, cpu = time.perf_counter(), time.process_time()
        ranks, importance, fractions = self.ranks_for(ctx)
        rank_s, rank_cpu = time.perf_counter() - started, time.process_time() - cpu
        # wall and CPU seconds: on a shared machine the CPU time is the steadier cost measure
        boundary = {"task": ctx.task.name, "importance": importance, "preserved_fraction": fractions,
                    "preserved_ranks": ranks, "importance_s": round(rank_s, 3), "importance_cpu_s": round(rank_cpu, 3)}
        self.stats["boundaries"].append(boundary)
        train_other = self.group.train_other
        modules: list[OSFTLinear] = []

        def prepare(model: nn.Module) -> nn.Module:
            t0, c0 = time.perf_counter(), time.process_time()
            for p in model.parameters():
                p.requires_grad_(train_other)
            modules.clear()
            for (_, parent, name), k in zip(target_linears(model), ranks):
                wrapped = OSFTLinear(getattr(parent, name), k)
                setattr(parent, name, wrapped)
                modules.append(wrapped)
            boundary["svd_s"] = round(time.perf_counter() - t0, 3)
            boundary["svd_cpu_s"] = round(time.process_time() - c0, 3)
            total = sum(p.numel() for p in model.parameters() if p.requires_grad)
            boundary["trainable_params"] = total
            return model

        def export(model: nn.Module) -> nn.Module:
            for _, parent, name in target_linears(model):
                module = getattr(parent, name)
                if isinstance(module, OSFTLinear):
                    setattr(parent, name, module.to_linear())
            for p in model.parameters():
                p.requires_grad_(True)
            return model

        def after_backward(model: nn.Module, step: int) -> None:
            for m in modules:
                m.project_gradients()

        def after_step(model: nn.Module, step: int) -> None:
            for m in modules:
                m.project_parameters()

        return TrainHooks(prepare_model=prepare, export_model=export, after_backward=after_backward,
                          after_step=after_step)


@register_method("continual", "osft", paper=PAPER, options=OSFTOptions,
                 summary="SVD per matrix; train only the orthogonal complement of the top subspace; ranks from layer importance")
def make_osft(opts) -> OSFT:
    return OSFT(opts)


__all__ = ["OSFT", "OSFTLinear", "OSFTOptions", "check_preserved_rank", "layer_importance", "preserved_fractions",
           "target_linears"]
