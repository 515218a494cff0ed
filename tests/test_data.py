"""Data: sources, built-in corpora, packing, held-out split, cache."""

from __future__ import annotations

import json

import pytest
import torch

from lifecycle.data import load_corpus, pack
from lifecycle.data.sources import Corpus
from lifecycle.data.tokenizer import build_tokenizer
from lifecycle.errors import LifecycleError


@pytest.mark.parametrize("name", ["shakespeare", "wikitext", "linux_c"])
def test_builtin_shared_corpora(name):
    corpus = load_corpus(name)
    assert sum(len(d) for d in corpus.train) > 100_000
    if name == "linux_c":
        assert corpus.validation  # its own held-out file


def test_python_stdlib_corpus_is_code():
    corpus = load_corpus("python_stdlib")
    assert len(corpus.train) > 100
    assert any("def " in doc for doc in corpus.train[:20])


def test_local_files_jsonl_txt_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    assert load_corpus(str(tmp_path / "b.jsonl")).train == ["first", "second"]
    assert load_corpus(f"{tmp_path / 'c.jsonl'}#content").train == ["x"]
    with pytest.raises(LifecycleError, match="no 'text' field"):
        load_corpus(str(tmp_path / "c.jsonl"))
    folder = load_corpus(str(tmp_path / "a.txt") + "+" + str(tmp_path / "b.jsonl"))
    assert folder.train == ["hello world\n", "first", "second"]


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", "beta"]}), tmp_path / "d.parquet")
    assert load_corpus(str(tmp_path / "d.parquet")).train == ["alpha", "beta"]


def test_empty_or_missing_data_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(LifecycleError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(LifecycleError, match="data not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(LifecycleError, match="no text files"):
        load_corpus(str(empty_dir))


def test_pack_split_is_a_contiguous_tail_and_cached(tiny_corpus, tiny_tokenizer):
    data = pack(tiny_corpus, tiny_tokenizer, 64, val_fraction=0.1)
    stream = torch.tensor(tiny_tokenizer(tiny_corpus.train[0], add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id])
    n_val = int(stream.numel() * 0.1)
    assert torch.equal(data.train.flatten(), stream[: data.train.numel()])
    assert torch.equal(data.validation[0], stream[stream.numel() - n_val: stream.numel() - n_val + 64])
    again = pack(tiny_corpus, tiny_tokenizer, 64, val_fraction=0.1)
    assert again.fingerprint == data.fingerprint and torch.equal(again.train, data.train)
    other = pack(tiny_corpus, tiny_tokenizer, 32, val_fraction=0.1)
    assert other.fingerprint != data.fingerprint


def test_too_little_data_for_one_block(tiny_tokenizer):
    with pytest.raises(LifecycleError, match="fewer than one block"):
        pack(Corpus("short", ["a b c"]), tiny_tokenizer, 512, val_fraction=0.0)


def test_bpe_tokenizer_is_deterministic_and_cached(tiny_corpus):
    a = build_tokenizer("bpe:400", tiny_corpus)
    b = build_tokenizer("bpe:400", tiny_corpus)
    text = "To be, or not to be"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    assert len(a) <= 400 and a.eos_token_id is not None
    assert a.decode(a(text)["input_ids"]) == text
    with pytest.raises(LifecycleError):
        build_tokenizer("bpe:abc", tiny_corpus)
