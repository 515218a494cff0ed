"""Text data: sources (built-in corpora, files, Hub datasets), tokenizers, packed blocks."""

from lifecycle.data.packing import PackedData, pack
from lifecycle.data.sources import BUILTIN_CORPORA, Corpus, load_corpus
from lifecycle.data.tokenizer import build_tokenizer

__all__ = ["BUILTIN_CORPORA", "Corpus", "PackedData", "build_tokenizer", "load_corpus", "pack"]
