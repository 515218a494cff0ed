"""The task designer of V-Pretraining (Ke & Fanti 2026, arXiv 2601.22108, §3 "task designer" for LMs).

A small LLaMA-style decoder that reads the context and the embedding of the true next token and
outputs, at each position, scores over the learner's candidate ids only and a sigmoid gate
``α ∈ [0, α_max]``. The paper's designer has 6 layers, hidden 256, 4 heads (fp32); the default here
is 2 layers, hidden 64, 4 heads, which is what the 2 shared CPU cores allow (``DesignerConfig``).

How the two inputs are combined is not specified in the paper (choice, documented in
docs/vpretrain.md): the decoder's final hidden state ``h_t`` (context x≤t) plus the embedding of the
true next token ``e(y_t)`` gives ``f_t``; a candidate ``c`` scores ``⟨W f_t, u(c)⟩`` with an output
embedding ``u`` (so only the K candidate rows are ever touched), and the gate is
``α_max · σ(w·f_t + b)``. The score head starts at zero (``r`` uniform over ``C_t``) and the gate bias
at ``logit(gate_init)`` so the first targets stay close to the true token.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class DesignerConfig(BaseModel):
    """Size of the task designer (the paper: 6 layers, hidden 256, 4 heads)."""

    model_config = ConfigDict(extra="forbid")

    layers: int = Field(2, ge=1, description="decoder layers (paper: 6)")
    hidden: int = Field(64, ge=8, description="hidden size (paper: 256)")
    heads: int = Field(4, ge=1, description="attention heads (paper: 4)")
    intermediate: int = Field(128, ge=8, description="MLP width")
    gate_init: float = Field(0.1, gt=0, lt=1, description="initial gate as a fraction of alpha_max (σ(b) at start)")


class TaskDesigner(nn.Module):
    """Scores over candidate ids and a gate per position; see the module docstring."""

    def __init__(self, vocab_size: int, alpha_max: float, config: DesignerConfig | None = None,
                 max_positions: int = 2048, seed: int = 0):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        config = config or DesignerConfig()
        self.config = config
        self.vocab_size = vocab_size
        self.alpha_max = float(alpha_max)
        llama = LlamaConfig(vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
                            num_hidden_layers=config.layers, num_attention_heads=config.heads,
                            num_key_value_heads=config.heads, max_position_embeddings=max_positions,
                            attn_implementation="eager")
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the designer's init is a function of the seed, not of what ran before
        try:
            self.decoder = LlamaModel(llama)
            self.next_token = nn.Embedding(vocab_size, config.hidden)  # e(y_t): the true next token
            self.candidate = nn.Embedding(vocab_size, config.hidden)  # u(c): candidate ids
            self.query = nn.Linear(config.hidden, config.hidden, bias=False)
            self.gate = nn.Linear(config.hidden, 1)
        finally:
            torch.random.set_rng_state(generator_state)
        nn.init.normal_(self.next_token.weight, std=0.02)
        nn.init.normal_(self.candidate.weight, std=0.02)
        nn.init.zeros_(self.query.weight)  # r starts uniform over C_t
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, math.log(config.gate_init / (1 - config.gate_init)))

    def forward(self, input_ids: torch.Tensor, next_ids: torch.Tensor, candidates: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` [B, T] context, ``next_ids`` [B, T] the true next token at each position,
        ``candidates`` [B, T, K] ids → (scores [B, T, K], alpha [B, T] in [0, alpha_max])."""
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = hidden + self.next_token(next_ids)
        scores = torch.einsum("bth,btkh->btk", self.query(features), self.candidate(candidates))
        alpha = self.alpha_max * torch.sigmoid(self.gate(features).squeeze(-1))
        return scores, alpha

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "alpha_max": self.alpha_max, **self.config.model_dump(),
                "parameters": sum(p.numel() for p in self.parameters())}


__all__ = ["DesignerConfig", "TaskDesigner"]
