"""``icm_fusion`` — EXPERIMENTAL: a reconstruction of ICM-Fusion (Shao et al. 2025, arXiv:2508.04153).

ICM-Fusion ("In-Context Meta-Optimized LoRA Fusion for Multi-Task Adaptation") has no public method
text beyond the abstract and no code. The abstract: task LoRAs are task vectors; learned in-context
"manifold projections" re-orient them in a latent space to reduce conflicts; a Fusion-VAE decodes
the fused LoRA. This module rebuilds that from the abstract and the authors' predecessor ICM-LoRA
(github YihuaJerry/ICM-LoRA). Every choice below is ours unless marked ICM-LoRA:

1. **Task vector** (ICM-LoRA ``ICL/last_time_step_icl.py``): the mean last-token hidden state of the
   base model's last decoder layer over up to 30 of the task's prompts (per-model ``data``: a JSONL
   of ``prompt`` rows or a text file of one prompt per line), then unit-normalised (ours).
2. **LoRA as a vector** (ICM-LoRA ``utils/normalizeLoraWeight_small.py``): every A and B of the
   adapter, in module order, z-scored per tensor, concatenated. The per-tensor means and stds are
   kept to undo the normalisation.
3. **Manifold projection** (ours, from the abstract): a learned linear map ``P`` (hidden → ``cond``
   dims) applied to each task vector; the loss adds ``λ·mean_{i≠j} cos²(P tᵢ, P tⱼ)`` so the
   projected task directions are pushed towards orthogonality (fewer conflicts), while the VAE
   loss needs them to stay informative. We do not meta-learn it in context (no text says how).
4. **Fusion VAE** (ICM-LoRA ``model/CVAE_design.py``: a conditional VAE, condition concatenated to
   the encoder features and to the latent, loss MSE + 0.005·KL): here two-layer MLPs, not ICM-LoRA's
   12 Conv1d layers, since these vectors are small; one sample per task plus Gaussian jitter
   (σ = ``noise``) in place of ICM-LoRA's many saved epochs per task.
5. **Fusion**: the condition is ``normalise(Σ wᵢ P tᵢ)``; the decoder runs at ``z = 0`` (the prior
   mean, for a deterministic output; ICM-LoRA samples ``z ~ N(0, I)``); the per-tensor statistics
   are the ``wᵢ``-weighted means of the tasks'. The result is written as a peft adapter with the
   inputs' rank; B carries the inputs' common scaling so the output's is 1.
6. **Training loop**: a few hundred Adam steps over N vectors, written here because the engine
   (``train/engine.py``) trains causal LMs on token batches and this model is neither.

Inputs must share rank, modules and scaling. Nothing here is claimed to reproduce the paper's results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.common import ParamDef, merge_method
from lifecycle.methods.merge.lora_io import LoraAdapter, fusion_lineage, lora_inputs, write_adapter

MAX_PROMPTS = 30  # ICM-LoRA's in-context example count


@dataclass
class Flat:
    """Adapters as normalised vectors, with what is needed to undo it."""

    modules: list[str]
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]]
    vectors: torch.Tensor  # (tasks, dim)
    means: torch.Tensor  # (tasks, 2·modules)
    stds: torch.Tensor


def flatten(adapters: list[LoraAdapter]) -> Flat:
    modules = sorted(adapters[0].modules)
    for adapter in adapters[1:]:
        if sorted(adapter.modules) != modules:
            raise LifecycleError(f"icm_fusion: {adapter.folder} adapts other modules than {adapters[0].folder}")
    shapes = [(tuple(adapters[0].modules[m][0].shape), tuple(adapters[0].modules[m][1].shape)) for m in modules]
    rows, means, stds = [], [], []
    for adapter in adapters:
        parts, mu, sd = [], [], []
        for module, shape in zip(modules, shapes):
            a, b, _ = adapter.modules[module]
            if (tuple(a.shape), tuple(b.shape)) != shape:
                raise LifecycleError(f"icm_fusion: {adapter.folder} has another rank at {module} (all inputs need one rank)")
            for tensor in (a.float(), b.float()):
                m, s = tensor.mean(), tensor.std().clamp_min(1e-8)
                parts.append(((tensor - m) / s).flatten())
                mu.append(m)
                sd.append(s)
        rows.append(torch.cat(parts))
        means.append(torch.stack(mu))
        stds.append(torch.stack(sd))
    return Flat(modules, shapes, torch.stack(rows), torch.stack(means), torch.stack(stds))


def unflatten(flat: Flat, vector: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out, offset, k = {}, 0, 0
    for module, (shape_a, shape_b) in zip(flat.modules, flat.shapes):
        pair = []
        for shape in (shape_a, shape_b):
            n = int(torch.tensor(shape).prod())
            pair.append(vector[offset:offset + n].view(shape) * stds[k] + means[k])
            offset, k = offset + n, k + 1
        out[module] = (pair[0], pair[1])
    return out


class FusionVAE(nn.Module):
    """Conditional VAE over LoRA vectors; the condition is the projected task vector."""

    def __init__(self, dim: int, hidden_size: int, cond: int, latent: int, width: int):
        super().__init__()
        self.project = nn.Linear(hidden_size, cond, bias=False)  # the "manifold projection"
        self.encoder = nn.Sequential(nn.Linear(dim + cond, width), nn.LeakyReLU(), nn.Linear(width, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent + cond, width), nn.LeakyReLU(), nn.Linear(width, dim))
        self.latent = latent

    def condition(self, task_vectors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.project(task_vectors), dim=-1)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, cond], dim=-1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(torch.cat([x, cond], dim=-1)).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z, cond), mu, logvar


def conflict(cond: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between distinct projected task vectors (0 when orthogonal)."""
    n = cond.shape[0]
    if n < 2:
        return cond.new_zeros(())
    gram = cond @ cond.T
    return (gram.pow(2).sum() - gram.diagonal().pow(2).sum()) / (n * (n - 1))


def train_fusion_vae(vectors: torch.Tensor, task_vectors: torch.Tensor, *, steps: int = 400, latent: int = 16,
                     cond: int = 16, width: int = 256, kl_weight: float = 0.005, conflict_weight: float = 0.1,
                     noise: float = 0.05, lr: float = 3e-3, seed: int = 0) -> FusionVAE:
    """Fit the projection and the VAE on (LoRA vector, task vector) pairs."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = FusionVAE(vectors.shape[1], task_vectors.shape[1], cond, latent, width)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            c = model.condition(task_vectors)
            x = vectors + noise * torch.randn_like(vectors)
            recon, mu, logvar = model(x, c)
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
            loss = nn.functional.mse_loss(recon, vectors) + kl_weight * kl + conflict_weight * conflict(c)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def decode_fused(model: FusionVAE, task_vectors: torch.Tensor, weights: list[float]) -> torch.Tensor:
    w = torch.tensor(weights, dtype=task_vectors.dtype)[:, None]
    with torch.no_grad():
        c = nn.functional.normalize((w * model.condition(task_vectors)).sum(0, keepdim=True), dim=-1)
        return model.decode(torch.zeros(1, model.latent), c)[0]


def read_prompts(path: str | Path) -> list[str]:
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise LifecycleError(f"icm_fusion: task data {path} not found")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if file.suffix == ".jsonl":
        try:
            lines = [str(json.loads(line)["prompt"]) for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LifecycleError(f"icm_fusion: {path} must hold JSON rows with a 'prompt' field") from None
    if not lines:
        raise LifecycleError(f"icm_fusion: task data {path} holds no prompts")
    return lines[:MAX_PROMPTS]


def task_vector(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Mean last-token hidden state of the last decoder layer (ICM-LoRA), unit-normalised."""
    states = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer.encode(prompt)[-512:]])
            states.append(model(ids, output_hidden_states=True).hidden_states[-1][0, -1].float())
    return nn.functional.normalize(torch.stack(states).mean(0), dim=0)


def _settings(opts: Any) -> tuple[list[str], dict]:
    entries = [m for m in opts.models if m.model != opts.base_model]
    data = [(m.parameters or {}).get("data") for m in entries]
    if any(d is None or not isinstance(d, str) for d in data):
        raise LifecycleError("icm_fusion: every adapter needs parameters.data, a file of the task's prompts")
    for d in data:
        read_prompts(d)
    params = {k: v for k, v in (opts.parameters or {}).items()}
    steps = params.get("steps", 400)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LifecycleError(f"icm_fusion: parameters.steps must be a positive integer, got {steps!r}")
    return data, params


def check_icm_fusion(opts: Any) -> None:
    lora_inputs(opts)
    _settings(opts)


@merge_method("icm_fusion", paper="EXPERIMENTAL reconstruction of Shao et al. 2025, ICM-Fusion (arXiv:2508.04153), "
              "from its abstract and the authors' ICM-LoRA code",
              summary="EXPERIMENTAL: LoRAs decoded by a conditional VAE from projected task vectors",
              parameters=(ParamDef("steps", default=400), ParamDef("seed", default=0)),
              tensor_parameters=(ParamDef("weight", default=1.0), ParamDef("data", required=True)),
              needs_base=True, whole_model=True, check=check_icm_fusion, adapter_inputs=True)
def merge_icm_fusion(opts: Any) -> Path:
    from lifecycle.model.io import load_model

    adapters, weights, base = lora_inputs(opts)
    data, params = _settings(opts)
    scalings = {round(s, 9) for ad in adapters for _, _, s in ad.modules.values()}
    if len(scalings) != 1:
        raise LifecycleError("icm_fusion: the adapters must share one scaling (lora_alpha / r)")
    flat = flatten(adapters)
    loaded = load_model(base)
    vectors = torch.stack([task_vector(loaded.model.eval(), loaded.tokenizer, read_prompts(d)) for d in data])
    model = train_fusion_vae(flat.vectors, vectors, steps=int(params.get("steps", 400)), seed=int(params.get("seed", 0)))
    w = torch.tensor(weights)[:, None] / sum(weights)
    fused = unflatten(flat, decode_fused(model, vectors, weights), (w * flat.means).sum(0), (w * flat.stds).sum(0))
    scaling = scalings.pop()
    dtype = adapters[0].modules[flat.modules[0]][0].dtype
    tensors = {m: (a.to(dtype), (b * scaling).to(dtype)) for m, (a, b) in fused.items()}
    rank = flat.shapes[0][0][0]
    lineage = fusion_lineage(opts, adapters, weights, rank=rank, experimental=True)
    return write_adapter(opts.output, adapters[0].config, tensors, rank, lineage, overwrite=opts.overwrite)


__all__ = ["FusionVAE", "conflict", "decode_fused", "flatten", "merge_icm_fusion", "task_vector", "train_fusion_vae",
           "unflatten"]
