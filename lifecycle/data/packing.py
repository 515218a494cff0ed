"""Tokenize documents and pack them into fixed-length blocks, with a held-out split and a cache.

Documents are tokenized, joined with the EOS token between them and cut into blocks of
``block_size`` tokens (the model shifts labels itself). The held-out split is the corpus's own
validation set when it has one, otherwise the *last* ``val_fraction`` of the token stream: a
contiguous tail, so no held-out block overlaps a training block's context. Packed tensors are cached
under ``cache_dir()/blocks`` keyed by the content hash of text, tokenizer and settings, stored as
safetensors (never pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lifecycle.data.sources import Corpus, load_corpus
from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir


@dataclass
class PackedData:
    """Token blocks ready for training: ``train`` is [N, T], ``validation`` is [M, T] (int64)."""

    train: torch.Tensor
    validation: torch.Tensor
    block_size: int
    source: str
    fingerprint: str

    @property
    def train_tokens(self) -> int:
        return self.train.numel()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "block_size": self.block_size,
            "train_blocks": int(self.train.shape[0]),
            "validation_blocks": int(self.validation.shape[0]),
            "train_tokens": int(self.train.numel()),
        }


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
) -> PackedData:
    """Tokenize and pack a corpus (or a data spec) into train/validation blocks."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    if block_size < 2:
        raise LifecycleError(f"block size must be at least 2, got {block_size}")
    key_src = json.dumps(
        {
            "corpus": corpus.fingerprint(),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "block": block_size,
            "val": val_fraction,
            "max": max_train_tokens,
            "v": 1,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache_file = cache_dir() / "blocks" / f"{key}.safetensors"
    if use_cache and cache_file.is_file():
        tensors = load_file(cache_file)
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
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        try:
            save_file({"train": train, "validation": validation}, str(tmp))
            os.replace(tmp, cache_file)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache that cannot be written is not an error
    return PackedData(train, validation, block_size, corpus.name, key)


def batches_for_step(data: torch.Tensor, order: torch.Tensor, position: int, count: int) -> torch.Tensor:
    """``count`` blocks starting at ``position`` of the (wrapping) permutation ``order``."""
    idx = torch.arange(position, position + count) % order.numel()
    return data[order[idx]]


def epoch_order(num_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """A fixed permutation of the training blocks for one epoch (depends only on seed and epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_blocks, generator=g)


def save_blocks_note(path: Path, data: PackedData) -> None:
    path.write_text(json.dumps(data.describe(), indent=2))
