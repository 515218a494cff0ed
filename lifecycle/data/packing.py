"""Tokenize documents and pack them into fixed-length blocks, with a held-out split and a cache.

Documents are tokenized, joined with the EOS token between them and cut into blocks of
``block_size`` tokens (the model shifts labels itself). The held-out split is the corpus's own
validation set when it has one, otherwise the *last* ``val_fraction`` of the token stream: a
contiguous tail, so no held-out block overlaps a training block's context. Packed tensors are cached
under ``cache_dir()/blocks`` keyed by the content hash of text, tokenizer and settings, stored as
safetensors (never pickles).

A weighted mixture (``shakespeare:0.3+wikitext:0.7``, see :mod:`lifecycle.data.sources`) is packed
part by part: each part is tokenized and cut into blocks on its own (no block spans two parts), holds
out its own validation (its dedicated set, or the tail of its own stream), and ``block_source``
records which part each training block came from. :meth:`PackedData.epoch_order` then gives each
part its weight's share of an epoch's samples (see :func:`weighted_epoch_order`); the validation
blocks are interleaved by weight so that any prefix of them (the engine evaluates the first
``eval_blocks``) mixes the parts in proportion. ``max_train_tokens`` caps each part at its weight's
share of the budget.

Every training data object follows one batch protocol (this class and
:class:`lifecycle.data.supervised.SupervisedData`): ``block_size``, ``source``, ``fingerprint``,
``describe()``, ``num_train``, ``num_validation``, ``train_batch(idx)`` / ``validation_batch(idx)``
returning ``{"input_ids", "labels"[, "attention_mask"]}`` (labels are -100 where no loss is taken;
the model shifts them), and ``epoch_order(seed, epoch)``, a LongTensor of ``num_train`` example
indices that depends only on (seed, epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lifecycle.data.sources import Corpus, load_corpus
from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir


def as_index(idx: Any, n: int) -> torch.Tensor:
    """A 1-D LongTensor of row indices from a tensor, a list, an int or a slice over ``n`` rows."""
    if isinstance(idx, slice):
        return torch.arange(n)[idx]
    idx = torch.as_tensor(idx, dtype=torch.long)
    return idx.reshape(1) if idx.dim() == 0 else idx.reshape(-1)


@dataclass
class PackedData:
    """Token blocks ready for training: ``train`` is [N, T], ``validation`` is [M, T] (int64).

    For a weighted mixture, ``block_source`` [N] / ``validation_source`` [M] give each block's part
    (an index into ``part_names``) and ``weights`` each part's share of the samples (summing to 1);
    all four are None for plain data.
    """

    train: torch.Tensor
    validation: torch.Tensor
    block_size: int
    source: str
    fingerprint: str
    block_source: torch.Tensor | None = None
    validation_source: torch.Tensor | None = None
    part_names: tuple[str, ...] | None = None
    weights: tuple[float, ...] | None = None

    @property
    def train_tokens(self) -> int:
        return self.train.numel()

    @property
    def num_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def num_validation(self) -> int:
        return int(self.validation.shape[0])

    def train_batch(self, idx: Any) -> dict[str, torch.Tensor]:
        """Blocks ``idx`` as ``input_ids`` and ``labels`` (the same tokens: every position is scored)."""
        blocks = self.train[as_index(idx, self.num_train)]
        return {"input_ids": blocks, "labels": blocks.clone()}

    def validation_batch(self, idx: Any) -> dict[str, torch.Tensor]:
        blocks = self.validation[as_index(idx, self.num_validation)]
        return {"input_ids": blocks, "labels": blocks.clone()}

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """The blocks of one epoch: a permutation, or for a weighted mixture a draw by weight."""
        if self.weights is not None and self.block_source is not None:
            return weighted_epoch_order(self.block_source, self.weights, seed, epoch)
        return epoch_order(self.num_train, seed, epoch)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "block_size": self.block_size,
            "train_blocks": int(self.train.shape[0]),
            "validation_blocks": int(self.validation.shape[0]),
            "train_tokens": int(self.train.numel()),
        }
        if self.weights is not None and self.part_names is not None and self.block_source is not None:
            train_counts = torch.bincount(self.block_source, minlength=len(self.weights)).tolist()
            val_counts = (
                torch.bincount(self.validation_source, minlength=len(self.weights)).tolist()
                if self.validation_source is not None else [0] * len(self.weights)
            )
            info["parts"] = [
                {"data": name, "weight": round(w, 6), "train_blocks": int(t), "validation_blocks": int(v)}
                for name, w, t, v in zip(self.part_names, self.weights, train_counts, val_counts)
            ]
        return info


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's full definition, so a changed vocabulary never reuses a cache."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _tokenize_stream(docs: list[str], tokenizer: Any) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    batch = 64
    for start in range(0, len(docs), batch):
        encoded = tokenizer(docs[start:start + batch], add_special_tokens=False)["input_ids"]
        for seq in encoded:
            ids.extend(seq)
            if eos is not None:
                ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _blocks(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    n = stream.numel() // block_size
    return stream[: n * block_size].view(n, block_size).clone()


def pack(
    corpus: Corpus | str,
    tokenizer: Any,
    block_size: int,
    *,
    val_fraction: float = 0.05,
    max_train_tokens: int | None = None,
    use_cache: bool = True,
    encoding: str = "utf-8",
) -> PackedData:
    """Tokenize and pack a corpus (or a data spec) into train/validation blocks.

    ``encoding`` is passed to :func:`load_corpus` when ``corpus`` is a data spec. A cached file that
    cannot be read (truncated, corrupt) is rebuilt, not an error.
    """
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, encoding=encoding)
    if block_size < 2:
        raise LifecycleError(f"block size must be at least 2, got {block_size}")
    weights = corpus.weights
    key_fields: dict[str, Any] = {
        "corpus": corpus.fingerprint(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block": block_size,
        "val": val_fraction,
        "max": max_train_tokens,
        "v": 1,
    }
    if weights is not None:
        # Only weighted data adds fields, so plain data keeps its keys (and caches, and run fingerprints).
        key_fields["mixture"] = [
            {"docs": p.train_docs, "weight": round(w, 12), "validation": _docs_fingerprint(p.validation)}
            for p, w in zip(corpus.parts, weights)
        ]
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = cache_dir() / "blocks" / f"{key}.safetensors"
    if weights is not None:
        names = tuple(p.name for p in corpus.parts)
        t = _load_cache(cache_file, ("train", "validation", "block_source", "validation_source")) if use_cache else None
        if t is not None:
            return PackedData(t["train"], t["validation"], block_size, corpus.name, key,
                              t["block_source"], t["validation_source"], names, weights)
        data = _pack_mixture(corpus, weights, tokenizer, block_size, val_fraction, max_train_tokens, key)
        if use_cache:
            _save_cache(cache_file, {"train": data.train, "validation": data.validation,
                                     "block_source": data.block_source, "validation_source": data.validation_source})
        return data
    tensors = _load_cache(cache_file, ("train", "validation")) if use_cache else None
    if tensors is not None:
        return PackedData(tensors["train"], tensors["validation"], block_size, corpus.name, key)

    train_stream = _tokenize_stream(corpus.train, tokenizer)
    if corpus.validation:
        val_stream = _tokenize_stream(corpus.validation, tokenizer)
    else:
        n_val = int(train_stream.numel() * val_fraction)
        n_val = max(n_val, block_size) if val_fraction > 0 else 0
        val_stream = train_stream[train_stream.numel() - n_val:] if n_val else train_stream[:0]
        train_stream = train_stream[: train_stream.numel() - n_val]
    if max_train_tokens is not None:
        train_stream = train_stream[:max_train_tokens]
    train = _blocks(train_stream, block_size)
    validation = _blocks(val_stream, block_size)
    if train.shape[0] == 0:
        raise LifecycleError(
            f"data {corpus.name} has {train_stream.numel()} training tokens, fewer than one block of {block_size}"
        )
    if use_cache:
        _save_cache(cache_file, {"train": train, "validation": validation})
    return PackedData(train, validation, block_size, corpus.name, key)


def _load_cache(cache_file: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when there is no cache or it cannot be read (then it is rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        tensors = load_file(cache_file)
    except (SafetensorError, OSError, ValueError):
        return None
    if not all(name in tensors for name in names):
        return None
    return tensors


def _save_cache(cache_file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write safetensors atomically; a cache that cannot be written is not an error."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)


def _docs_fingerprint(docs: Any) -> str | None:
    if not docs:
        return None
    h = hashlib.sha256(str(len(docs)).encode())
    for doc in docs:
        h.update(hashlib.sha256(doc.encode()).digest())
    return h.hexdigest()[:20]


def _pack_mixture(
    corpus: Corpus,
    weights: tuple[float, ...],
    tokenizer: Any,
    block_size: int,
    val_fraction: float,
    max_train_tokens: int | None,
    key: str,
) -> PackedData:
    """Blocks of each part on their own, with per-part held-out sets interleaved by weight."""
    train_parts, val_parts = [], []
    start = 0
    for part, share in zip(corpus.parts, weights):
        docs = corpus.train[start:start + part.train_docs]
        start += part.train_docs
        stream = _tokenize_stream(docs, tokenizer)
        if part.validation:
            val_stream = _tokenize_stream(list(part.validation), tokenizer)
        else:
            n_val = int(stream.numel() * val_fraction)
            n_val = max(n_val, block_size) if val_fraction > 0 else 0
            n_val = min(n_val, stream.numel())
            val_stream = stream[stream.numel() - n_val:] if n_val else stream[:0]
            stream = stream[: stream.numel() - n_val]
        if max_train_tokens is not None:
            stream = stream[: int(max_train_tokens * share)]
        blocks = _blocks(stream, block_size)
        if blocks.shape[0] == 0:
            raise LifecycleError(
                f"data part {part.name} of {corpus.name} has {stream.numel()} training tokens, "
                f"fewer than one block of {block_size}"
            )
        train_parts.append(blocks)
        val_parts.append(_blocks(val_stream, block_size))
    train = torch.cat(train_parts)
    block_source = torch.cat([torch.full((b.shape[0],), i, dtype=torch.long) for i, b in enumerate(train_parts)])
    validation = torch.cat(val_parts)
    validation_source = torch.cat([torch.full((b.shape[0],), i, dtype=torch.long) for i, b in enumerate(val_parts)])
    mix = _interleave_by_weight(validation_source, weights)
    names = tuple(p.name for p in corpus.parts)
    return PackedData(train, validation[mix], block_size, corpus.name, key,
                      block_source, validation_source[mix], names, weights)


def _interleave_by_weight(source: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """An order of rows in which every prefix holds each part's rows in proportion to its weight
    (while the part lasts): row j of part i sorts at (j + 0.5) / weight_i, ties to the earlier part."""
    keys = torch.empty(source.numel(), dtype=torch.float64)
    for i, w in enumerate(weights):
        rows = (source == i).nonzero().flatten()
        keys[rows] = (torch.arange(rows.numel(), dtype=torch.float64) + 0.5) / w
    return torch.sort(keys, stable=True).indices


def batches_for_step(data: torch.Tensor, order: torch.Tensor, position: int, count: int) -> torch.Tensor:
    """``count`` blocks starting at ``position`` of the (wrapping) permutation ``order``."""
    idx = torch.arange(position, position + count) % order.numel()
    return data[order[idx]]


def epoch_order(num_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """A fixed permutation of the training blocks for one epoch (depends only on seed and epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_blocks, generator=g)


def _quotas(total: int, weights: tuple[float, ...]) -> list[int]:
    """``total`` split by weight, rounded by largest remainder (ties to the earlier part)."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _part_seed(seed: int, part: int, round_: int) -> int:
    digest = hashlib.sha256(f"mixture|{seed}|{part}|{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def weighted_epoch_order(block_source: torch.Tensor, weights: tuple[float, ...], seed: int, epoch: int) -> torch.Tensor:
    """``len(block_source)`` block indices for one epoch, each part taking its weight's share.

    Stratified, not i.i.d.: part ``i`` gets exactly its largest-remainder quota ``q_i`` of the epoch's
    samples, taken as the next ``q_i`` entries of an endless stream of that part's blocks (fresh
    seeded permutations, one after another). So a down-sampled part shows every block once before
    any repeats, across epochs, and an up-sampled one repeats each block equally often (±1). The
    epoch's samples are then shuffled. A pure function of (seed, epoch).
    """
    n = block_source.numel()
    quotas = _quotas(n, weights)
    pieces = []
    for i, q in enumerate(quotas):
        members = (block_source == i).nonzero().flatten()
        m = members.numel()
        if q == 0 or m == 0:
            continue
        first, last = epoch * q, (epoch + 1) * q  # positions in the part's stream
        rounds = range(first // m, (last - 1) // m + 1)
        stream = torch.cat([
            members[torch.randperm(m, generator=torch.Generator().manual_seed(_part_seed(seed, i, r)))]
            for r in rounds
        ])
        offset = first - rounds[0] * m
        pieces.append(stream[offset: offset + q])
    order = torch.cat(pieces)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return order[torch.randperm(order.numel(), generator=g)]


def save_blocks_note(path: Path, data: PackedData) -> None:
    path.write_text(json.dumps(data.describe(), indent=2))
