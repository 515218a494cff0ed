"""Importance scores for structured pruning, computed on calibration text, and a cache for them.

Scores (all per decoder layer, over the layer's *current* structures):

* **Taylor** (LLM-Pruner ``param_first``, Ma et al. 2023, arXiv:2305.11627, Eq. 4 with the
  first-order term; Adapt-Pruner, Pan et al. 2025, arXiv:2502.03460, Sec. 3.2): the loss change
  from zeroing a weight is estimated by ``|w · ∂L/∂w|``; a coupled structure scores
  ``Σ |W ⊙ ∇W|`` over every weight (and bias) it owns — for a KV group its ``k``/``v`` rows, its query
  heads' ``q`` rows and ``o`` columns; for an MLP channel its ``gate``/``up`` rows and ``down`` column.
  Gradients are of the mean LM loss over all calibration samples. LLM-Pruner's second-order
  estimators ``param_second`` (``|w·H·w|``) and ``param_mix`` (``|w·g − ½·w·H·w|``) use a Fisher
  diagonal for ``H`` (:func:`_weight_salience`).
* **Layer importance** (Adapt-Pruner Sec. 3.1, Eq. 2): ``I_l = −mean_tokens cos(h_in, h_out)`` of
  decoder layer ``l``; a layer that barely changes its input (cos ≈ 1) is unimportant. The same
  forward pass as the Taylor gradients collects it. :func:`normalize_layer_importance` centres the
  scores and divides by ``max |·|`` (``Î_l ∈ [−1, 1]``, mean 0), as the reference implementation does.
* **Depth score** (Minitron, Muralidharan et al. 2024, arXiv:2407.14679, Sec. 2.2): ``1 − cos``, the
  same statistic without the sign flip.
* **FLAP fluctuation** (An et al. 2024, arXiv:2312.11983, Eq. 4, metric WIFV): for input channel ``j``
  of ``o_proj`` / ``down_proj``, ``Var_tokens(x_j) · ‖W[:, j]‖²``; the calibration means are kept for
  bias compensation.

Cache: scores depend only on the weights, the calibration tokens and the scorer's settings, so they are
stored under ``cache_dir()/prune-scores`` (safetensors + JSON, never pickles) keyed by a hash of all
three. Pruning the same model to another size reuses them without a calibration pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.model.adapter import DecoderAdapter
from lifecycle.paths import cache_dir

SCORES_VERSION = 1


# -- calibration data ------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Token blocks every scorer sees: ``tokens`` is [samples, length] (int64).

    ``pool`` holds every block of the calibration text, so :meth:`draw` can give a pruning step its
    own fresh sample (Adapt-Pruner's reference draws new calibration examples at every step).
    """

    tokens: torch.Tensor
    source: str
    seed: int
    fingerprint: str
    pool: torch.Tensor | None = None
    pool_fingerprint: str | None = None
    draw_index: int = 0

    @property
    def samples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def draw(self, index: int) -> "Calibration":
        """The ``index``-th sample of ``samples`` blocks from the pool: draw 0 is this one, every other
        index a different seeded draw, so a run stays deterministic for its seed. Without a pool (or
        when the pool has no more blocks than a sample) every draw is this sample."""
        if index == 0 or self.pool is None or self.pool.shape[0] <= self.samples:
            return self
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        order = torch.randperm(self.pool.shape[0], generator=g)[: self.samples]
        tokens = self.pool[order.sort().values].clone()
        return Calibration(tokens=tokens, source=self.source, seed=self.seed, fingerprint=_digest(tokens),
                           pool=self.pool, pool_fingerprint=self.pool_fingerprint, draw_index=index)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "length": self.length,
            "tokens": self.samples * self.length,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "pool_blocks": int(self.pool.shape[0]) if self.pool is not None else self.samples,
        }


def _digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.contiguous().numpy().tobytes()).hexdigest()[:20]


def build_calibration(tokenizer: Any, data: str, *, samples: int, length: int, seed: int = 0) -> Calibration:
    """``samples`` random blocks of ``length`` tokens from a data spec (seeded, so reruns match).

    The whole set of blocks is kept as the pool that :meth:`Calibration.draw` samples from.
    Empty or too-short data is a one-line :class:`LifecycleError` from :func:`lifecycle.data.pack`.
    """
    from lifecycle.data import load_corpus, pack

    if samples < 1 or length < 2:
        raise LifecycleError(f"calibration needs at least 1 sample of 2 tokens (got {samples} × {length})")
    corpus = load_corpus(data)
    packed = pack(corpus, tokenizer, length, val_fraction=0.0)
    blocks = packed.train
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(blocks.shape[0], generator=g)[: min(samples, blocks.shape[0])]
    tokens = blocks[order.sort().values].clone()
    return Calibration(tokens=tokens, source=str(data), seed=seed, fingerprint=_digest(tokens), pool=blocks,
                       pool_fingerprint=_digest(blocks))


# -- hooks -----------------------------------------------------------------------------------------

@contextmanager
def _layer_cosine_hooks(adapter: DecoderAdapter) -> Iterator[list[list[float]]]:
    """Accumulate Σ cos(h_in, h_out) and the token count per decoder layer during forwards."""
    sums: list[list[float]] = [[0.0, 0.0] for _ in adapter.layers]
    handles = []

    def make(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            cos = F.cosine_similarity(h_in.detach().float(), h_out.detach().float(), dim=-1)
            sums[index][0] += float(cos.sum())
            sums[index][1] += cos.numel()

        return hook

    for i, layer in enumerate(adapter.layers):
        handles.append(layer.register_forward_hook(make(i), with_kwargs=True))
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


def _mean_cos(sums: list[list[float]]) -> torch.Tensor:
    return torch.tensor([s / max(c, 1) for s, c in sums], dtype=torch.float64)


def normalize_layer_importance(raw: torch.Tensor) -> torch.Tensor:
    """Centre and scale by max|·| (Adapt-Pruner): mean 0, values in [−1, 1]; all-equal → zeros."""
    centred = raw.double() - raw.double().mean()
    scale = centred.abs().max()
    return centred / scale if float(scale) > 0 else torch.zeros_like(centred)


def _batches(calib: Calibration, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, calib.samples, max(1, batch_size)):
        yield calib.tokens[start:start + batch_size]


# -- Taylor + layer importance ---------------------------------------------------------------------

@dataclass
class TaylorScores:
    """Per layer: KV-group scores [K_l], channel scores [M_l]; raw layer importance −mean cos [L]."""

    kv_groups: list[torch.Tensor]
    channels: list[torch.Tensor]
    layer_importance: torch.Tensor
    loss: float

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.layer_importance": self.layer_importance, f"{prefix}.loss": torch.tensor([self.loss], dtype=torch.float64)}
        for i, (kv, ch) in enumerate(zip(self.kv_groups, self.channels)):
            out[f"{prefix}.kv.{i}"] = kv
            out[f"{prefix}.ch.{i}"] = ch
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "TaylorScores | None":
        if f"{prefix}.layer_importance" not in tensors:
            return None
        imp = tensors[f"{prefix}.layer_importance"]
        n = imp.numel()
        return cls(
            kv_groups=[tensors[f"{prefix}.kv.{i}"] for i in range(n)],
            channels=[tensors[f"{prefix}.ch.{i}"] for i in range(n)],
            layer_importance=imp,
            loss=float(tensors[f"{prefix}.loss"][0]),
        )


TAYLOR_ORDERS = ("param_first", "param_second", "param_mix")


def _weight_salience(p: torch.Tensor | None, order: str, fisher: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Per-weight |salience|, as LLM-Pruner's ``TaylorImportance`` (``hf_llama_pruner.py``) computes it:

    * ``param_first``: ``|w·g|``, ``g`` the gradient of the mean calibration loss;
    * ``param_second``: ``|w·H·w|`` with the diagonal Hessian approximated by the Fisher
      ``H ≈ (1/n) Σ_j g_j²`` over per-sample gradients ``g_j`` (as ``hf_prune.py`` accumulates it);
    * ``param_mix``: ``|w·g − ½·w·H·w|``, the first- and second-order terms together.
    """
    if p is None or p.grad is None:
        return None
    # float32 products, float64 only for the (small) reduced sums of the caller
    w = p.detach().float()
    first = w * p.grad.detach().float()
    if order == "param_first":
        return first.abs_()
    second = w * fisher[id(p)] * w
    if order == "param_second":
        return second.abs_()
    return (first - 0.5 * second).abs_()


def _structure_salience(adapter: DecoderAdapter, index: int, order: str = "param_first",
                        fisher: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ|salience| per KV group and per MLP channel of one layer (gradients must be populated)."""
    shape = adapter.attention_shape(index)
    hd, n_rep, groups = shape.head_dim, shape.group_size, shape.num_kv_heads
    layer = adapter.layers[index]

    def sal(p: torch.Tensor | None) -> torch.Tensor | None:
        return _weight_salience(p, order, fisher or {})

    attn = adapter.attention_projections(layer)
    kv = torch.zeros(groups, dtype=torch.float64)
    for key, rows_per_group in (("q", n_rep * hd), ("k", hd), ("v", hd)):
        s = sal(attn[key].weight)
        if s is not None:
            kv += s.sum(1, dtype=torch.float64).view(groups, rows_per_group).sum(1).cpu()
        b = sal(attn[key].bias)
        if b is not None:
            kv += b.double().view(groups, rows_per_group).sum(1).cpu()
    s = sal(attn["o"].weight)
    if s is not None:
        kv += s.sum(0, dtype=torch.float64).view(groups, n_rep * hd).sum(1).cpu()

    mlp = adapter.mlp_projections(layer)
    width = mlp["gate"].out_features
    ch = torch.zeros(width, dtype=torch.float64)
    for key in ("gate", "up"):
        s = sal(mlp[key].weight)
        if s is not None:
            ch += s.sum(1, dtype=torch.float64).cpu()
        b = sal(mlp[key].bias)
        if b is not None:
            ch += b.double().cpu()
    s = sal(mlp["down"].weight)
    if s is not None:
        ch += s.sum(0, dtype=torch.float64).cpu()
    return kv, ch


def _projection_parameters(adapter: DecoderAdapter) -> list[nn.Parameter]:
    params = []
    for layer in adapter.layers:
        for lin in [*adapter.attention_projections(layer).values(), *adapter.mlp_projections(layer).values()]:
            params.append(lin.weight)
            if lin.bias is not None:
                params.append(lin.bias)
    return params


def _fisher_diagonal(model: nn.Module, scored: list[nn.Parameter], calib: Calibration, device: Any) -> dict[int, torch.Tensor]:
    """``(1/n) Σ_j g_j²`` per weight over the n calibration samples, one backward each (LLM-Pruner's
    ``acc_grad`` for ``param_second``/``param_mix``)."""
    fisher = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in scored}
    n = calib.samples
    for j in range(n):
        sample = calib.tokens[j:j + 1].to(device)
        model(input_ids=sample, labels=sample, use_cache=False).loss.backward()
        for p in scored:
            if p.grad is not None:
                fisher[id(p)].add_(p.grad.detach().float().square(), alpha=1.0 / n)
                p.grad = None
    return fisher


def taylor_scores(adapter: DecoderAdapter, calib: Calibration, *, batch_size: int = 16,
                  order: str = "param_first") -> TaylorScores:
    """One forward/backward pass over the calibration set: Taylor salience and layer importance.

    ``order`` picks LLM-Pruner's estimator (:func:`_weight_salience`); the second-order ones first
    take one extra backward per calibration sample for the Fisher diagonal.

    Only the projection weights get gradients (embeddings, norms and the head are not scored), which
    saves the 49k × d embedding gradient on SmolLM2-size vocabularies. The model's train/eval mode and
    ``requires_grad`` flags are restored afterwards and no gradient is left behind.
    """
    if order not in TAYLOR_ORDERS:
        raise LifecycleError(f"unknown Taylor order {order!r}; choose one of {', '.join(TAYLOR_ORDERS)}")
    model = adapter.model
    was_training = model.training
    flags = {id(p): p.requires_grad for p in model.parameters()}
    scored = _projection_parameters(adapter)
    scored_ids = {id(p) for p in scored}
    for p in model.parameters():
        p.requires_grad_(id(p) in scored_ids)
        p.grad = None
    model.eval()  # no dropout; gradients flow in eval mode too
    device = next(model.parameters()).device
    total_loss = 0.0
    try:
        fisher = _fisher_diagonal(model, scored, calib, device) if order != "param_first" else {}
        with _layer_cosine_hooks(adapter) as sums:
            for batch in _batches(calib, batch_size):
                batch = batch.to(device)
                out = model(input_ids=batch, labels=batch, use_cache=False)
                # Gradient of the mean loss over all samples, whatever the batching.
                loss = out.loss * (batch.shape[0] / calib.samples)
                loss.backward()
                total_loss += float(loss.detach())
        kv, ch = [], []
        for i in range(len(adapter.layers)):
            k, c = _structure_salience(adapter, i, order, fisher)
            kv.append(k)
            ch.append(c)
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags.get(id(p), True))
        model.train(was_training)
    if not torch.isfinite(torch.tensor(total_loss)):
        raise LifecycleError(f"calibration loss is {total_loss}: the model produces non-finite outputs")
    return TaylorScores(kv_groups=kv, channels=ch, layer_importance=-_mean_cos(sums), loss=total_loss)


@torch.no_grad()
def layer_cosine(adapter: DecoderAdapter, calib: Calibration, *, batch_size: int = 16) -> torch.Tensor:
    """Mean cos(h_in, h_out) per decoder layer (no gradients)."""
    model = adapter.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with _layer_cosine_hooks(adapter) as sums:
            for batch in _batches(calib, batch_size):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        model.train(was_training)
    return _mean_cos(sums)


# -- FLAP statistics -------------------------------------------------------------------------------

@dataclass
class FlapStats:
    """Per layer: mean and variance over calibration tokens of o_proj's and down_proj's inputs."""

    attn_mean: list[torch.Tensor] = field(default_factory=list)
    attn_var: list[torch.Tensor] = field(default_factory=list)
    mlp_mean: list[torch.Tensor] = field(default_factory=list)
    mlp_var: list[torch.Tensor] = field(default_factory=list)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in ("attn_mean", "attn_var", "mlp_mean", "mlp_var"):
            for i, t in enumerate(getattr(self, name)):
                out[f"flap.{name}.{i}"] = t
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], layers: int) -> "FlapStats | None":
        if "flap.attn_mean.0" not in tensors:
            return None
        return cls(**{name: [tensors[f"flap.{name}.{i}"] for i in range(layers)]
                      for name in ("attn_mean", "attn_var", "mlp_mean", "mlp_var")})


@torch.no_grad()
def flap_statistics(adapter: DecoderAdapter, calib: Calibration, *, batch_size: int = 16) -> FlapStats:
    """Mean and (population) variance of every input channel of o_proj and down_proj, in float64.

    FLAP collects these layer by layer on the unpruned model; since nothing is pruned until all
    layers are scored, one full forward with hooks gives the same statistics.
    """
    model = adapter.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    acc: dict[tuple[int, str], list[Any]] = {}
    handles = []

    def make(index: int, kind: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            entry = acc.setdefault((index, kind), [0, torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                                   torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)])
            entry[0] += x.shape[0]
            entry[1] += x.sum(0)
            entry[2] += (x * x).sum(0)

        return hook

    for i, layer in enumerate(adapter.layers):
        handles.append(adapter.attention_projections(layer)["o"].register_forward_pre_hook(make(i, "attn")))
        handles.append(adapter.mlp_projections(layer)["down"].register_forward_pre_hook(make(i, "mlp")))
    try:
        for batch in _batches(calib, batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stats = FlapStats()
    for i in range(len(adapter.layers)):
        for kind in ("attn", "mlp"):
            n, s, sq = acc[(i, kind)]
            mean = (s / n).cpu()
            var = (sq / n).cpu() - mean * mean
            getattr(stats, f"{kind}_mean").append(mean)
            getattr(stats, f"{kind}_var").append(var.clamp_min(0.0))
    return stats


# -- cache -----------------------------------------------------------------------------------------

def model_fingerprint(model: nn.Module) -> str:
    """Hash of the config and every weight: the identity of 'the same model' for cached scores."""
    h = hashlib.blake2b(digest_size=16)
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class ScoreCache:
    """Scores of one (model, calibration, scorer settings) triple, as safetensors + JSON metadata."""

    def __init__(self, kind: str, model_fp: str, calib_fp: str, settings: dict[str, Any], enabled: bool = True):
        blob = json.dumps({"kind": kind, "model": model_fp, "calib": calib_fp, "settings": settings, "v": SCORES_VERSION},
                          sort_keys=True, default=str)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        self.kind = kind
        self.enabled = enabled
        self.path = cache_dir() / "prune-scores" / f"{kind}-{self.key}.safetensors"
        self.meta_path = self.path.with_suffix(".json")
        self.hit = False

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if not self.enabled or not self.path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(self.path))
            meta = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        except (OSError, ValueError):
            return None  # a damaged cache entry is recomputed, never an error
        self.hit = True
        return tensors, meta

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            os.replace(tmp, self.path)
            meta_tmp = self.meta_path.with_suffix(f".tmp{os.getpid()}")
            meta_tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(meta_tmp, self.meta_path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # an unwritable cache is not an error


def scores_with_cache(
    kind: str,
    model_fp: str,
    calib: Calibration,
    settings: dict[str, Any],
    compute: Any,
    *,
    use_cache: bool = True,
) -> tuple[dict[str, torch.Tensor], bool]:
    """``compute()`` (a dict of tensors), or its cached result for the same model/calibration/settings.

    Returns the tensors and whether they came from the cache.
    """
    cache = ScoreCache(kind, model_fp, calib.fingerprint, settings, enabled=use_cache)
    loaded = cache.load()
    if loaded is not None:
        return loaded[0], True
    tensors = compute()
    cache.save(tensors, {"kind": kind, "calibration": calib.describe(), "settings": settings})
    return tensors, False
