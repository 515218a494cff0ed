"""Model loading and saving: formats, safety, atomic writes, the reload check, the adapter."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch

from lifecycle.errors import LifecycleError, UnsupportedArchitectureError
from lifecycle.model.adapter import adapter_for, logits_for_check
from lifecycle.model.io import load_model, save_checkpoint

from conftest import make_tiny_model


def test_save_reload_in_fresh_process_matches_logits(tiny_checkpoint, tiny_model):
    expected = logits_for_check(tiny_model, tiny_model.config.vocab_size)
    code = (
        "import torch, sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from lifecycle.model.adapter import logits_for_check\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_checkpoint)!r})\n"
        f"AutoTokenizer.from_pretrained({str(tiny_checkpoint)!r})\n"
        "torch.save(logits_for_check(m.eval(), m.config.vocab_size), sys.argv[1])\n"
    )
    out = tiny_checkpoint.parent / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True)
    got = torch.load(out, weights_only=True)
    assert torch.allclose(got, expected, atol=1e-5)
    files = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "lifecycle.json", "generation_config.json"} <= files
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in tiny_checkpoint.iterdir())


def test_load_folder_roundtrip_keeps_lineage(tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint))
    assert loaded.lineage["command"] == "test"
    assert loaded.tokenizer.pad_token is not None
    assert loaded.source == str(tiny_checkpoint.resolve())


def test_pickled_weights_refused_unless_allowed(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "pickled"
    folder.mkdir()
    tiny_model.config.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(LifecycleError, match="pickled"):
        load_model(str(folder))
    loaded = load_model(str(folder), allow_pickle=True)
    assert loaded.model.config.num_hidden_layers == 2


def test_missing_model_and_offline_hub_id_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(LifecycleError, match="not found"):
        load_model(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LifecycleError) as info:
        load_model("someone/not-a-real-model-xyz")
    assert "\n" not in str(info.value)


def test_file_that_is_not_gguf_rejected(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(LifecycleError, match="not a GGUF"):
        load_model(str(fake))
    with pytest.raises(LifecycleError, match="GGUF file not found"):
        load_model(f"gguf:{tmp_path / 'missing.gguf'}")


def test_non_llama_family_rejected(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*not supported"):
        load_model(str(folder))


def test_existing_output_needs_overwrite(tiny_checkpoint, tiny_model, tiny_tokenizer):
    with pytest.raises(LifecycleError, match="exists"):
        save_checkpoint(tiny_model, tiny_tokenizer, tiny_checkpoint)
    save_checkpoint(tiny_model, tiny_tokenizer, tiny_checkpoint, overwrite=True, lineage={"command": "again"})
    assert json.loads((tiny_checkpoint / "lifecycle.json").read_text())["command"] == "again"
    assert [p.name for p in tiny_checkpoint.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("failure", ["disk_full", "crash"])
def test_failed_save_leaves_nothing(tmp_path, tiny_model, tiny_tokenizer, failure):
    def fail(_tmp):
        if failure == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("boom")

    out = tmp_path / "out"
    expected = LifecycleError if failure == "disk_full" else RuntimeError
    with pytest.raises(expected) as info:
        save_checkpoint(tiny_model, tiny_tokenizer, out, write_extra=fail)
    if failure == "disk_full":
        assert "disk full" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_reload_check_catches_a_model_that_does_not_round_trip(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    import lifecycle.model.io as io

    real = io.logits_for_check
    calls = {"n": 0}

    def drifting(model, vocab, *a, **k):
        calls["n"] += 1
        out = real(model, vocab, *a, **k)
        return out + (1.0 if calls["n"] == 2 else 0.0)  # the reloaded model "differs"

    monkeypatch.setattr(io, "logits_for_check", drifting)
    with pytest.raises(LifecycleError, match="does not reproduce"):
        save_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_adapter_set_layers_reindexes_and_updates_config(tiny_tokenizer, model_type):
    model = make_tiny_model(len(tiny_tokenizer), model_type, layers=3)
    adapter = adapter_for(model)
    assert adapter.tied_embeddings
    shape = adapter.attention_shape(0)
    assert (shape.num_heads, shape.num_kv_heads, shape.group_size) == (4, 2, 2)
    adapter.set_layers([adapter.copy_layer(i) for i in (0, 1, 2, 0, 1, 2)])
    assert model.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in adapter.layers] == list(range(6))
    if getattr(model.config, "layer_types", None):
        assert len(model.config.layer_types) == 6
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_parameter_count_counts_tied_head_once(tiny_model):
    adapter = adapter_for(tiny_model)
    total = adapter.num_parameters()
    assert total == sum(p.numel() for p in tiny_model.parameters())  # parameters() already dedups ties
    assert adapter.num_parameters(include_embeddings=False) == total - tiny_model.model.embed_tokens.weight.numel()


@pytest.mark.slow
def test_builtin_smollm2_gguf_loads_offline():
    loaded = load_model("smollm2")
    cfg = loaded.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("llama", 30, 9, 3)
    adapter = adapter_for(loaded.model)
    assert adapter.tied_embeddings
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = loaded.model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
