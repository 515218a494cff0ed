"""Tokenizers for models trained from scratch.

``bpe:N`` trains a byte-level BPE tokenizer with vocabulary N on the training corpus (deterministic
for a given corpus, cached by content hash); anything else is a model spec whose tokenizer is reused
(``smollm2``, a folder, a Hub id). Tiny models want small vocabularies: with hidden size 128 a 49k
vocabulary would put most of the compute in the output layer.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lifecycle.data.sources import Corpus
from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def train_bpe(corpus: Corpus, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus.train`` and wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise LifecycleError(f"BPE vocabulary must be at least 300 (256 bytes + merges), got {vocab_size}")
    key = hashlib.sha256(f"{corpus.fingerprint()}|{vocab_size}|v1".encode()).hexdigest()[:20]
    path = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{key}.json"
    if not path.is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus.train, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        model_max_length=1_000_000,
    )


def build_tokenizer(spec: str, corpus: Corpus | None = None) -> Any:
    """``bpe:N`` (needs the corpus) or a model spec whose tokenizer is loaded."""
    if spec.startswith("bpe:"):
        try:
            size = int(spec[4:])
        except ValueError:
            raise LifecycleError(f"tokenizer '{spec}': expected bpe:<vocab size>, e.g. bpe:4096") from None
        if corpus is None:
            raise LifecycleError("a bpe tokenizer needs training data")
        return train_bpe(corpus, size)
    from transformers import AutoTokenizer

    from lifecycle.model.io import resolve_model_spec

    location, gguf_file = resolve_model_spec(spec)
    try:
        tok = AutoTokenizer.from_pretrained(location, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"cannot load tokenizer {spec}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
