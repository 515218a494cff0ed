"""Text data: sources (built-in corpora, files, Hub datasets), tokenizers, packed blocks, supervised examples."""

from lifecycle.data.packing import PackedData, pack
from lifecycle.data.sources import BUILTIN_CORPORA, Corpus, load_corpus, parse_data_spec
from lifecycle.data.supervised import SupervisedData, load_supervised
from lifecycle.data.tokenizer import build_tokenizer

__all__ = [
    "BUILTIN_CORPORA",
    "Corpus",
    "PackedData",
    "SupervisedData",
    "build_tokenizer",
    "load_corpus",
    "load_supervised",
    "pack",
    "parse_data_spec",
]
