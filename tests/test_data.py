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


# -- the batch protocol on packed blocks ---------------------------------------------------------
def test_packed_batches_are_the_old_blocks(tiny_corpus, tiny_tokenizer):
    from lifecycle.data.packing import epoch_order

    data = pack(tiny_corpus, tiny_tokenizer, 64, val_fraction=0.1)
    assert (data.num_train, data.num_validation) == (data.train.shape[0], data.validation.shape[0])
    idx = epoch_order(data.num_train, 3, 1)[:8]
    batch = data.train_batch(idx)
    assert set(batch) == {"input_ids", "labels"}  # no padding, so no attention mask
    assert torch.equal(batch["input_ids"], data.train[idx]) and torch.equal(batch["labels"], data.train[idx])
    assert torch.equal(data.validation_batch(torch.arange(2))["labels"], data.validation[:2])
    assert torch.equal(data.validation_batch(slice(0, 3))["input_ids"], data.validation[:3])
    assert torch.equal(data.epoch_order(3, 1), epoch_order(data.num_train, 3, 1))
    assert data.block_source is None and "parts" not in data.describe()


def test_unweighted_keys_are_unchanged(tiny_corpus, tiny_tokenizer, tmp_path):
    """Plain data keeps the cache key (and so the run fingerprint) it had before mixture weights."""
    import hashlib

    from lifecycle.data.packing import tokenizer_fingerprint

    data = pack(tiny_corpus, tiny_tokenizer, 64, val_fraction=0.1)
    old_key = json.dumps({"corpus": tiny_corpus.fingerprint(), "tokenizer": tokenizer_fingerprint(tiny_tokenizer),
                          "block": 64, "val": 0.1, "max": None, "v": 1}, sort_keys=True)
    assert data.fingerprint == hashlib.sha256(old_key.encode()).hexdigest()[:24]
    (tmp_path / "a.txt").write_text("alpha beta\n")
    (tmp_path / "b.txt").write_text("gamma delta\n")
    joined = load_corpus(f"{tmp_path / 'a.txt'}+{tmp_path / 'b.txt'}")
    assert joined.train == ["alpha beta\n", "gamma delta\n"] and joined.weights is None
    assert joined.fingerprint() == Corpus("x", ["alpha beta\n", "gamma delta\n"]).fingerprint()
    assert [p.train_docs for p in joined.parts] == [1, 1]


# -- mixture weights -----------------------------------------------------------------------------
def test_parse_mixture_weights(tmp_path):
    from lifecycle.data.sources import parse_data_spec

    assert parse_data_spec("shakespeare:0.3+wikitext:0.7") == [("shakespeare", 0.3), ("wikitext", 0.7)]
    assert parse_data_spec("shakespeare+wikitext") == [("shakespeare", None), ("wikitext", None)]
    assert parse_data_spec("hf:org/name:config") == [("hf:org/name:config", None)]
    assert parse_data_spec("hf:org/name:config@train:2+x.jsonl#content:1e-1") == [
        ("hf:org/name:config@train", 2.0), ("x.jsonl#content", 0.1)]
    odd = tmp_path / "notes:2"  # a file whose own name ends in ':<number>'
    odd.write_text("text")
    assert parse_data_spec(str(odd)) == [(str(odd), None)]
    for bad, pattern in [("shakespeare:0+wikitext:1", "positive"), ("shakespeare:-1+wikitext:1", "positive"),
                         ("shakespeare:nan+wikitext:1", "positive"), ("shakespeare:inf+wikitext:1", "positive"),
                         ("shakespeare:0.5+wikitext", "give every part a weight or none")]:
        with pytest.raises(LifecycleError, match=pattern) as exc:
            parse_data_spec(bad)
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("spec", ["shakespeare+", "+wikitext", "shakespeare++wikitext", "a+ "])
def test_empty_spec_part_is_an_error(spec):
    with pytest.raises(LifecycleError, match="has an empty part") as exc:
        load_corpus(spec)
    assert str(exc.value) == f"data spec '{spec}' has an empty part"


@pytest.fixture
def two_parts(tmp_path, tiny_corpus):
    text = tiny_corpus.train[0]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(text[:12_000])
    b.write_text(text[30_000:42_000].upper())  # different tokens, so blocks show their part
    return a, b


def test_weighted_mixture_blocks_and_order(two_parts, tiny_tokenizer):
    from lifecycle.data.packing import _quotas

    a, b = two_parts
    data = pack(f"{a}:1+{b}:3", tiny_tokenizer, 32, val_fraction=0.1)
    assert data.weights == (0.25, 0.75) and data.part_names == (str(a), str(b))
    src = data.block_source
    assert src.shape == (data.num_train,) and set(src.tolist()) == {0, 1}
    # Each part is packed on its own: part 1's first block is b's own first 32 tokens.
    b_ids = tiny_tokenizer(b.read_text(), add_special_tokens=False)["input_ids"]
    assert data.train[(src == 1).nonzero()[0, 0]].tolist() == b_ids[:32]
    assert set(data.validation_source.tolist()) == {0, 1}
    # Any prefix of the held-out blocks mixes the parts by weight.
    head = data.validation_source[:8]
    assert int((head == 1).sum()) == 6
    quotas = _quotas(data.num_train, data.weights)
    counts = {0: int((src == 0).sum()), 1: int((src == 1).sum())}
    for epoch in range(3):
        order = data.epoch_order(0, epoch)
        assert order.shape == (data.num_train,) and order.dtype == torch.long
        drawn = src[order]
        assert [int((drawn == i).sum()) for i in (0, 1)] == quotas
        assert abs(int((drawn == 1).sum()) / data.num_train - 0.75) < 0.01
        assert torch.equal(order, data.epoch_order(0, epoch))  # a pure function of (seed, epoch)
    assert not torch.equal(data.epoch_order(0, 0), data.epoch_order(1, 0))
    # a (a quarter of the samples but about half the blocks) is down-sampled, b up-sampled: over any
    # run of epochs each block of a part comes up equally often, give or take one.
    assert quotas[0] < counts[0] and quotas[1] > counts[1]
    seen = torch.cat([data.epoch_order(5, e) for e in range(3)])
    assert data.epoch_order(5, 0)[src[data.epoch_order(5, 0)] == 0].unique().numel() == quotas[0]  # no repeats
    for part in (0, 1):
        times = torch.bincount(seen, minlength=data.num_train)[src == part]
        expected = 3 * quotas[part] / counts[part]
        assert int(times.min()) >= int(expected) and int(times.max()) <= int(expected) + 1
    info = data.describe()
    assert [p["weight"] for p in info["parts"]] == [0.25, 0.75]
    assert sum(p["train_blocks"] for p in info["parts"]) == data.num_train
    # Weights are part of the fingerprint; the cache returns the same blocks and sources.
    again = pack(f"{a}:1+{b}:3", tiny_tokenizer, 32, val_fraction=0.1)
    assert again.fingerprint == data.fingerprint and torch.equal(again.block_source, src)
    assert torch.equal(again.epoch_order(0, 1), data.epoch_order(0, 1))
    assert pack(f"{a}:2+{b}:6", tiny_tokenizer, 32, val_fraction=0.1).fingerprint == data.fingerprint
    assert pack(f"{a}:1+{b}:1", tiny_tokenizer, 32, val_fraction=0.1).fingerprint != data.fingerprint
    assert pack(f"{a}+{b}", tiny_tokenizer, 32, val_fraction=0.1).fingerprint != data.fingerprint


def test_weighted_part_too_small_is_an_error(two_parts, tmp_path, tiny_tokenizer):
    a, _ = two_parts
    (tmp_path / "tiny.txt").write_text("a b c")
    with pytest.raises(LifecycleError, match="tiny.txt .*fewer than one block"):
        pack(f"{a}:0.5+{tmp_path / 'tiny.txt'}:0.5", tiny_tokenizer, 32, val_fraction=0.0)


def test_corpus_jsonl_bad_bytes_and_rows(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(LifecycleError, match=r"latin\.jsonl is not UTF-8 text: byte 13 \(line 1\)"):
        load_corpus(str(tmp_path / "latin.jsonl"))
    (tmp_path / "rows.jsonl").write_text('{"text": "ok"}\n42\n')
    with pytest.raises(LifecycleError, match=r"rows\.jsonl:2 is a JSON number, not an object"):
        load_corpus(str(tmp_path / "rows.jsonl"))
