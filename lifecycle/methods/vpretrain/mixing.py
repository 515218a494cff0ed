"""The stream's composition: the feedback set held out of it, and a general corpus mixed into it (the
paper's setting: GSM8K train minus the feedback solutions, plus general text; Ke & Fanti 2026 §5).

Held out: a prompt/completion stream loses every example whose completion (tokenized alone, so
prompt truncation does not matter) equals a feedback example's, so ``--data gsm8k --feedback gsm8k
feedback_examples=N`` trains on the rest of GSM8K train, never on the feedback answers.

Mixed: the engine trains on one dataset in one batch protocol, so the mixture is made inside the
supervised one. The general corpus is packed into pieces as long as the stream's mean example (at
most ``block_size``; so a batch that draws one is not padded far beyond its other examples), and
each piece becomes an example whose loss covers every token but the first (the first is never
predicted in a packed block either: the model shifts labels). The pieces are appended to the
prompt/completion examples and the engine's seeded per-epoch shuffle interleaves the two.
``weight`` is the general corpus's share of the loss-bearing tokens; the pieces are the corpus's
first ones (deterministic, so every arm and seed sees the same mixture). The held-out split stays the supervised one.
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


def _completion_keys(examples: Examples) -> list[bytes]:
    ids, offsets, prompts = examples.ids, examples.offsets.tolist(), examples.prompt_lens.tolist()
    return [ids[offsets[i] + prompts[i]:offsets[i + 1]].numpy().tobytes() for i in range(len(examples))]


def drop_feedback_examples(data: SupervisedData, feedback: SupervisedData) -> SupervisedData:
    """``data`` without the training examples whose completion is one of ``feedback``'s (same tokenizer)."""
    held = set(_completion_keys(feedback.train_examples))
    keys = _completion_keys(data.train_examples)
    keep = [i for i, key in enumerate(keys) if key not in held]
    if len(keep) == len(keys):
        return data
    if not keep:
        raise LifecycleError(f"every example of the stream {data.source} is in the feedback set; nothing is left to train on")
    ex = data.train_examples
    train = Examples.build([(ex.ids[int(ex.offsets[i]):int(ex.offsets[i]) + int(ex.prompt_lens[i])].tolist(),
                             ex.ids[int(ex.offsets[i]) + int(ex.prompt_lens[i]):int(ex.offsets[i + 1])].tolist())
                            for i in keep])
    key = f"{data.fingerprint}|minus|{feedback.fingerprint}"
    info = dict(data.info, feedback_examples_dropped=len(keys) - len(keep))
    return SupervisedData(train, data.validation_examples, data.block_size, data.source,
                          hashlib.sha256(key.encode()).hexdigest()[:24], data.pad_id, data.layout, data.pad_to, info)


def mix_general_corpus(data: SupervisedData, spec: str, tokenizer: Any, weight: float) -> SupervisedData:
    """``data`` plus blocks of the general corpus ``spec`` making up ``weight`` of the loss tokens."""
    from lifecycle.data import pack

    if not 0 < weight < 1:
        raise LifecycleError(f"mix_weight must be in (0, 1), got {weight}")
    block = max(16, min(data.block_size, round(float(data.train_examples.lengths.float().mean()))))
    supervised = loss_tokens(data.train_examples)
    wanted = supervised * weight / (1 - weight)
    blocks = max(1, math.ceil(wanted / (block - 1)))
    general = pack(spec, tokenizer, block, val_fraction=0.0, max_train_tokens=blocks * block)
    if general.num_train < blocks:
        raise LifecycleError(f"mix: {spec} has {general.num_train} pieces of {block} tokens, {blocks} are needed "
                             f"for mix_weight {weight}; lower mix_weight or give a larger corpus")
    ids = general.train_batch(torch.arange(blocks))["input_ids"]
    extra = Examples(ids.reshape(-1).clone(), torch.arange(0, blocks * block + 1, block, dtype=torch.long),
                     torch.ones(blocks, dtype=torch.long))
    train = _concat(data.train_examples, extra)
    share = loss_tokens(extra) / max(loss_tokens(train), 1)
    key = f"{data.fingerprint}|{general.fingerprint}|{blocks}"
    info = dict(data.info, mix={"corpus": spec, "weight": weight, "blocks": blocks, "block_size": block,
                                "loss_token_share": round(share, 4), "fingerprint": general.fingerprint})
    return SupervisedData(train, data.validation_examples, data.block_size, f"{data.source}+{spec}",
                          hashlib.sha256(key.encode()).hexdigest()[:24], data.pad_id, data.layout, data.pad_to, info)


__all__ = ["drop_feedback_examples", "loss_tokens", "mix_general_corpus"]
