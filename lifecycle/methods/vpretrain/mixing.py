"""A prompt/completion stream mixed with a general corpus (the paper's stream: GSM8K-style answers plus
general text, Ke & Fanti 2026 §5 setup).

The engine trains on one dataset in one batch protocol, so the mixture is made inside the supervised
one: the general corpus is packed into blocks of ``block_size`` tokens and each block becomes an
example whose loss covers every token but the first (the first is never predicted in a packed block
either: the model shifts labels). The blocks are appended to the prompt/completion examples and the
engine's seeded per-epoch shuffle interleaves the two. ``weight`` is the general corpus's share of
the loss-bearing tokens; the general blocks are the corpus's first ones (deterministic, so every arm
and seed sees the same mixture). The held-out split stays the supervised one.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from lifecycle.data.examples import Examples
from lifecycle.data.supervised import SupervisedData
from lifecycle.errors import LifecycleError


def _concat(a: Examples, b: Examples) -> Examples:
    return Examples(torch.cat([a.ids, b.ids]), torch.cat([a.offsets, b.offsets[1:] + a.offsets[-1]]),
                    torch.cat([a.prompt_lens, b.prompt_lens]))


def loss_tokens(examples: Examples) -> int:
    """Tokens that carry loss: completions (+ EOS) of prompt/completion examples, all but the first of a block."""
    return int((examples.lengths - examples.prompt_lens).sum())


def mix_general_corpus(data: SupervisedData, spec: str, tokenizer: Any, weight: float) -> SupervisedData:
    """``data`` plus blocks of the general corpus ``spec`` making up ``weight`` of the loss tokens."""
    from lifecycle.data import pack

    if not 0 < weight < 1:
        raise LifecycleError(f"mix_weight must be in (0, 1), got {weight}")
    block = data.block_size
    supervised = loss_tokens(data.train_examples)
    wanted = supervised * weight / (1 - weight)
    blocks = max(1, math.ceil(wanted / (block - 1)))
    general = pack(spec, tokenizer, block, val_fraction=0.0, max_train_tokens=blocks * block)
    if general.num_train < blocks:
        raise LifecycleError(f"mix: {spec} has {general.num_train} blocks of {block} tokens, {blocks} are needed "
                             f"for mix_weight {weight}; lower mix_weight or give a larger corpus")
    ids = general.train_batch(torch.arange(blocks))["input_ids"]
    extra = Examples(ids.reshape(-1).clone(), torch.arange(0, blocks * block + 1, block, dtype=torch.long),
                     torch.ones(blocks, dtype=torch.long))
    train = _concat(data.train_examples, extra)
    share = loss_tokens(extra) / max(loss_tokens(train), 1)
    key = f"{data.fingerprint}|{general.fingerprint}|{blocks}"
    info = dict(data.info, mix={"corpus": spec, "weight": weight, "blocks": blocks, "block_size": block,
                                "loss_token_share": round(share, 4), "fingerprint": general.fingerprint})
    return SupervisedData(train, data.validation_examples, block, f"{data.source}+{spec}",
                          hashlib.sha256(key.encode()).hexdigest()[:24], data.pad_id, data.layout, data.pad_to, info)


__all__ = ["loss_tokens", "mix_general_corpus"]
