"""``lifecycle grow``: G_stack surgery, the growth-timing formula, layer-wise frozen-substrate growth.

Everything runs on micro models built in memory (conftest.make_tiny_model) and a 60k-character slice
of the shared Shakespeare corpus; the CLI tests spawn ``python -m lifecycle`` like a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_tiny_model
from lifecycle.errors import LifecycleError
from lifecycle.methods.grow import gstack, layerwise
from lifecycle.methods.grow.gstack import growth_plan, growth_tokens, layer_order, stack_layers
from lifecycle.model.adapter import adapter_for


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------- order


def test_layer_order_stack_interleave_and_uneven_depths():
    assert layer_order(4) == [0, 1, 2, 3] * 4  # the paper's default g = 4, whole-stack order
    assert layer_order(3, factor=2) == [0, 1, 2, 0, 1, 2]
    assert layer_order(4, factor=2, order="interleave") == [0, 0, 1, 1, 2, 2, 3, 3]
    # not a multiple: whole copies, then the top layers, so the last layer stays last
    assert layer_order(4, target_layers=10) == [0, 1, 2, 3, 0, 1, 2, 3, 2, 3]
    assert layer_order(4, target_layers=6, order="interleave") == [0, 0, 1, 2, 2, 3]
    assert layer_order(4, factor=1.5) == [0, 1, 2, 3, 2, 3]
    assert layer_order(2, layer_map=[1, 0, 1]) == [1, 0, 1]
    assert layer_order(3, factor=1) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(factor=0.5), "growth factor must be at least 1"),
        (dict(layer_map=[0, 1, 4]), "names layer 4, but the source has 2 layers"),
        (dict(layer_map=[0, -1]), "names layer -1"),
        (dict(target_layers=1), "smaller than the source"),
        (dict(layer_map=[]), "empty"),
    ],
)
def test_layer_order_rejects_bad_input(kwargs, message):
    with pytest.raises(LifecycleError, match=message):
        layer_order(2, **kwargs)


# ------------------------------------------------------------------------------------------- surgery


ARCHS = {
    # llama with GQA (4 query heads, 2 KV heads) and tied embeddings
    "llama-gqa-tied": dict(model_type="llama", tie=True),
    # qwen2 has layer_types/max_window_layers; use sliding windows on the top layer so types differ
    "qwen2-sliding": dict(model_type="qwen2", tie=False, use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "mistral": dict(model_type="mistral", tie=False, kv_heads=1, sliding_window=None),
}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("order", ["stack", "interleave"])
def test_stacked_layers_equal_their_source_layer(tiny_tokenizer, arch, order):
    spec = dict(ARCHS[arch])
    model_type = spec.pop("model_type")
    source = make_tiny_model(len(tiny_tokenizer), model_type, layers=3, **spec)
    grown = make_tiny_model(len(tiny_tokenizer), model_type, layers=3, **spec)
    grown.load_state_dict(source.state_dict())
    old_types = list(getattr(source.config, "layer_types", None) or [])

    stack_layers(grown, 7, order=order)
    mapping = layer_order(3, target_layers=7, order=order)
    src, dst = adapter_for(source), adapter_for(grown)
    assert grown.config.num_hidden_layers == 7 == len(dst.layers)
    for i, j in enumerate(mapping):
        assert _same(dst.layers[i], src.layers[j]), f"layer {i} should be a copy of source layer {j}"
        assert dst.layers[i].self_attn.layer_idx == i
    # two copies of one source layer are independent tensors, not shared ones
    ptrs = [layer.mlp.up_proj.weight.data_ptr() for layer in dst.layers]
    assert len(set(ptrs)) == len(ptrs)
    assert torch.equal(dst.embed_tokens.weight, src.embed_tokens.weight)
    assert _same(dst.final_norm, src.final_norm)
    assert torch.equal(dst.lm_head.weight, src.lm_head.weight)
    assert dst.tied_embeddings == spec.get("tie", True)
    assert dst.attention_shape(6) == src.attention_shape(0)  # GQA shape kept
    if old_types:
        assert grown.config.layer_types == [old_types[j] for j in mapping]


def test_stack_order_is_applied_to_the_real_weights(tiny_tokenizer):
    """Tag each source layer with a distinctive norm weight and read the tags back after stacking."""
    model = make_tiny_model(len(tiny_tokenizer), layers=4)
    with torch.no_grad():
        for i, layer in enumerate(adapter_for(model).layers):
            layer.input_layernorm.weight.fill_(float(i))
    stack_layers(model, factor=4)
    tags = [int(layer.input_layernorm.weight[0]) for layer in adapter_for(model).layers]
    assert tags == [0, 1, 2, 3] * 4


@pytest.mark.parametrize("arch", ["llama-gqa-tied", "qwen2-sliding"])
def test_grown_model_generates_the_same_with_and_without_kv_cache(tiny_tokenizer, arch):
    spec = dict(ARCHS[arch])
    model = make_tiny_model(len(tiny_tokenizer), spec.pop("model_type"), layers=2, seed=3, **spec)
    with torch.no_grad():  # make the layers differ enough that a cache mix-up changes the output
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    stack_layers(model, 6)
    ids = tiny_tokenizer("ROMEO: what light", return_tensors="pt").input_ids
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    cached = model.generate(ids, use_cache=True, **kw)
    uncached = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    # and the cache really holds one entry per grown layer
    out = model(ids, use_cache=True)
    assert len(out.past_key_values.layers) == 6


def test_grown_checkpoint_reloads_in_a_fresh_process(tmp_path, tiny_tokenizer):
    from lifecycle.model.adapter import logits_for_check
    from lifecycle.model.io import save_checkpoint

    model = make_tiny_model(len(tiny_tokenizer), "qwen2", layers=2, tie=True, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    stack_layers(model, 5)
    folder = save_checkpoint(model, tiny_tokenizer, tmp_path / "grown", lineage={"command": "grow"})
    expected = logits_for_check(model, model.config.vocab_size)
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "from lifecycle.model.adapter import logits_for_check\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); m.eval()\n"
        "assert m.config.num_hidden_layers == 5 and [l.self_attn.layer_idx for l in m.model.layers] == list(range(5))\n"
        "torch.save(logits_for_check(m, m.config.vocab_size), sys.argv[2])\n"
    )
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", script, str(folder), str(out)], check=True, timeout=120)
    got = torch.load(out, weights_only=True)
    assert torch.allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize(
    "name, n, d_train, expected",
    [  # prts README table: N, training tokens D, d; C = 6·N·D reproduces every row
        ("Llama2-7B", 7e9, 2e12, 11.11e9),
        ("Llama2-13B", 13e9, 2e12, 15.84e9),
        ("Llama2-70B", 70e9, 2e12, 42.48e9),
        ("Llama3-8B", 8e9, 15e12, 6.58e9),
    ],
)
def test_growth_timing_formula_reproduces_the_paper_table(name, n, d_train, expected):
    d = growth_tokens(n, gstack.flops_budget(n, d_train))
    assert abs(d - expected) < 0.006e9, f"{name}: {d / 1e9:.3f}B"


def test_growth_plan_accounting():
    plan = growth_plan(7_000_000_000, budget_tokens=2e12, g=4, target_layers=32)
    assert plan.compute_flops == pytest.approx(8.4e22)
    assert plan.growth_tokens == pytest.approx(11.11e9, rel=1e-3)
    assert plan.small_layers == 8 and plan.small_params == 1_750_000_000
    assert plan.grown_tokens == pytest.approx(2e12 - plan.growth_tokens)
    # the first d tokens cost a quarter: saving = 3/4 · d / D
    assert plan.flops_saved_fraction == pytest.approx(0.75 * plan.growth_tokens / 2e12, rel=1e-6)
    assert not plan.warnings
    with pytest.raises(LifecycleError, match="smaller than the growth point"):
        growth_plan(2_000_000, budget_tokens=1_000_000)  # tiny C: the fitted formula explodes


# ------------------------------------------------------------------------------------------ layerwise


@pytest.fixture(scope="module")
def tiny_data(tiny_corpus, tiny_tokenizer):
    from lifecycle.data import pack

    return pack(tiny_corpus, tiny_tokenizer, 32, val_fraction=0.1)


def _cfg(**kw):
    from lifecycle.train.engine import TrainConfig

    base = dict(steps=3, lr=5e-3, warmup_steps=1, micro_batch_size=4, eval_every=0, eval_blocks=4, log_every=1, weight_decay=0.1)
    return TrainConfig(**{**base, **kw})


def test_identity_init_new_layer_leaves_the_function_unchanged(tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer), layers=2)
    ids = torch.arange(12).unsqueeze(0)
    before = model(ids).logits
    new = layerwise.add_layers(model, 2, init="identity")
    assert new == [2, 3] and model.config.num_hidden_layers == 4
    assert [l.self_attn.layer_idx for l in adapter_for(model).layers] == [0, 1, 2, 3]
    assert torch.allclose(model(ids).logits, before, atol=1e-6)
    assert adapter_for(model).layers[3].mlp.up_proj.weight.abs().sum() > 0  # not an empty layer


def test_hashed_embedding_is_deterministic_and_keyed_by_token_text(tiny_tokenizer):
    a = layerwise.hashed_embedding(tiny_tokenizer, 40, 16, std=0.02)
    b = layerwise.hashed_embedding(tiny_tokenizer, 40, 16, std=0.02)
    assert torch.equal(a, b)
    assert a.pow(2).mean(dim=1).sqrt().allclose(torch.full((40,), 0.02), atol=1e-6)
    vocab = tiny_tokenizer.get_vocab()
    token = next(t for t, i in vocab.items() if i == 7)

    class Shuffled:  # the same token string at another id gets the same vector
        def get_vocab(self):
            return {token: 3}

    c = layerwise.hashed_embedding(Shuffled(), 8, 16, std=0.02)
    assert torch.equal(c[3], a[7])


def test_layerwise_trains_only_the_new_layers_with_a_frozen_substrate(tmp_path, tiny_tokenizer, tiny_data):
    model = make_tiny_model(len(tiny_tokenizer), layers=2, tie=True)
    layerwise.freeze_substrate(model, embedding="hashed", head="train", tokenizer=tiny_tokenizer)
    assert not adapter_for(model).tied_embeddings and model.config.tie_word_embeddings is False
    embedding = adapter_for(model).embed_tokens.weight.detach().clone()
    old_layers = [_snapshot(layer) for layer in adapter_for(model).layers]
    saved: list[tuple[int, dict]] = []

    def on_stage(report, m):
        saved.append((report.layers, [_snapshot(layer) for layer in adapter_for(m).layers]))

    run = layerwise.grow_layerwise(model, tiny_data, _cfg(), tmp_path / "run", target_layers=4, layers_per_stage=1,
                                   on_stage=on_stage, progress=False)
    grown = adapter_for(run.model)
    assert len(grown.layers) == 4 and [s.layers for s in run.stages] == [3, 4]
    assert torch.equal(grown.embed_tokens.weight, embedding)
    for i in (0, 1):  # the source layers are untouched, bit for bit
        assert all(torch.equal(v, old_layers[i][k]) for k, v in grown.layers[i].state_dict().items())
    # stage 2 did not touch the layer stage 1 trained
    stage1_layer2 = saved[0][1][2]
    assert all(torch.equal(v, stage1_layer2[k]) for k, v in grown.layers[2].state_dict().items())
    # and each stage really trained its new layer (away from its identity start)
    assert grown.layers[3].self_attn.o_proj.weight.abs().sum() > 0
    assert run.stages[0].trainable_params < sum(p.numel() for p in run.model.parameters())
    assert run.stages[1].flops > run.stages[0].flops  # deeper forward in stage 2
    assert run.tokens_seen == 2 * 3 * 4 * 32


def test_layerwise_lora_changes_old_layers_but_saves_a_plain_model(tmp_path, tiny_tokenizer, tiny_data):
    from lifecycle.model.io import save_checkpoint

    model = make_tiny_model(len(tiny_tokenizer), layers=1, tie=True)
    layerwise.freeze_substrate(model, embedding="model", head="frozen")
    assert adapter_for(model).tied_embeddings
    embedding = adapter_for(model).embed_tokens.weight.detach().clone()
    old = _snapshot(adapter_for(model).layers[0])
    run = layerwise.grow_layerwise(model, tiny_data, _cfg(lr=2e-2), tmp_path / "run", target_layers=2, lora_rank=2,
                                   progress=False)
    grown = adapter_for(run.model)
    assert type(run.model).__name__ == "LlamaForCausalLM"  # LoRA merged and unwrapped
    assert not any("lora" in k for k in run.model.state_dict())
    assert not torch.equal(grown.layers[0].self_attn.q_proj.weight, old["self_attn.q_proj.weight"])
    assert torch.equal(grown.layers[0].input_layernorm.weight, old["input_layernorm.weight"])  # LoRA only on linears
    assert torch.equal(grown.embed_tokens.weight, embedding)
    assert grown.tied_embeddings
    save_checkpoint(run.model, tiny_tokenizer, tmp_path / "plain", lineage={"command": "grow"})  # verifies the reload


def test_phase_configs_peak_holds_the_lr_and_annealed_decays_it():
    from lifecycle.train.engine import lr_at

    base = _cfg(steps=100, lr=1e-3, warmup_steps=5, min_lr_ratio=0.1)
    small, grown = gstack.phase_configs(base, 20, 80)
    assert (small.steps, grown.steps) == (20, 80)
    assert lr_at(19, small) == pytest.approx(1e-3)  # prts: taken mid-schedule, LR still at its peak
    assert lr_at(0, small) < 1e-3  # the warmup is kept
    small, _ = gstack.phase_configs(base, 20, 80, growth_point="annealed")
    assert lr_at(19, small) < 0.15e-3  # the earlier default: annealed towards 10% before stacking
    small, grown = gstack.phase_configs(base, 20, 80, small_lr=1e-3, grown_lr=3e-4)  # prts' 1e-3 -> 3e-4
    assert small.lr == 1e-3 and grown.lr == 3e-4 and lr_at(10, grown) == pytest.approx(3e-4, rel=0.05)
    with pytest.raises(LifecycleError, match="growth point"):
        gstack.phase_configs(base, 20, 80, growth_point="late")


def test_unit_substrate_is_the_hashed_direction_at_norm_one(tiny_tokenizer):
    hashed = layerwise.hashed_embedding(tiny_tokenizer, 40, 16, std=0.02)
    unit = layerwise.hashed_embedding(tiny_tokenizer, 40, 16, std=0.02, unit_norm=True)
    assert unit.norm(dim=1).allclose(torch.ones(40), atol=1e-6)
    assert torch.nn.functional.cosine_similarity(unit, hashed, dim=1).allclose(torch.ones(40), atol=1e-5)
    model = make_tiny_model(len(tiny_tokenizer), layers=1, tie=True)
    layerwise.freeze_substrate(model, embedding="unit", head="train", tokenizer=tiny_tokenizer)
    emb = adapter_for(model).embed_tokens.weight
    assert not emb.requires_grad and emb.norm(dim=1).allclose(torch.ones(emb.shape[0]), atol=1e-5)


def test_plateau_rule_counts_evaluations_without_a_min_delta_improvement():
    rule = layerwise.PlateauStop(patience=2, min_delta=0.05)
    losses = [5.0, 4.9, 4.88, 4.87, 4.7, 4.69, 4.68]  # 4.88 and 4.87 are within 0.05 of 4.9; 4.7 resets
    stops = [rule({"step": i + 1, "val_loss": v}) for i, v in enumerate(losses)]
    assert stops == [False, False, False, True, False, False, True]
    assert rule.best == 4.7 and rule.stopped_at == 7
    with pytest.raises(LifecycleError, match="patience"):
        layerwise.PlateauStop(patience=0)


def test_layerwise_stage_stops_on_a_held_out_plateau(tmp_path, tiny_tokenizer, tiny_data):
    """A learning rate too small to move the loss: every stage stops after 1 + patience evaluations."""
    model = make_tiny_model(len(tiny_tokenizer), layers=1, tie=True)
    layerwise.freeze_substrate(model, embedding="hashed", head="train", tokenizer=tiny_tokenizer)
    run = layerwise.grow_layerwise(model, tiny_data, _cfg(steps=12, lr=1e-9, eval_every=2), tmp_path / "run", target_layers=3,
                                   stop_patience=2, stop_min_delta=1e-3, progress=False)
    assert [s.steps for s in run.stages] == [6, 6] and all(s.stopped_early for s in run.stages)
    assert run.tokens_seen == 2 * 6 * 4 * 32  # tokens and FLOPs count what was trained, not the maximum
    base = make_tiny_model(len(tiny_tokenizer), layers=1, tie=True)
    layerwise.freeze_substrate(base, embedding="hashed", head="train", tokenizer=tiny_tokenizer)
    full = layerwise.grow_layerwise(base, tiny_data, _cfg(steps=12, lr=1e-9, eval_every=2), tmp_path / "full", target_layers=2,
                                    progress=False)
    assert full.stages[0].steps == 12 and not full.stages[0].stopped_early  # off by default
    assert run.stages[0].flops == pytest.approx(full.stages[0].flops / 2)  # half the steps, half the FLOPs


def test_stage_flops_charge_frozen_weights_forward_and_activation_gradient_only(tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer), layers=3, tie=False)
    a = adapter_for(model)
    n = [sum(p.numel() for p in layer.parameters()) for layer in a.layers]
    top = sum(p.numel() for p in a.final_norm.parameters()) + a.lm_head.weight.numel()
    layerwise.set_trainable(model, [2])  # layers 0-1 frozen below the new one, head and norm trained
    assert layerwise.stage_flops_per_token(model, [2]) == 2 * (n[0] + n[1]) + 6 * n[2] + 6 * top
    # LoRA on the old layers: their frozen base weights sit on the backward path (4n), the adapters train (6)
    peft_model = layerwise._apply_lora(model, [0, 1], 2, 4)
    layerwise.set_trainable(peft_model.get_base_model(), [2])
    lora = 0
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            lora += p.numel()
    got = layerwise.stage_flops_per_token(peft_model.get_base_model(), [2], lora=True)
    assert got == 4 * (n[0] + n[1]) + 6 * lora + 6 * n[2] + 6 * top
    assert got < 6 * (n[0] + n[1] + n[2] + top)  # the earlier count charged the frozen weights as trained


# ------------------------------------------------------------------------------------------ command


def _grow_options(**kw):
    from lifecycle.commands.grow import GrowOptions

    base = dict(block_size=32, data=str(tiny_corpus_file()), tokenizer="bpe:300",
                train=dict(steps=4, micro_batch_size=4, warmup_steps=1, eval_every=0, eval_blocks=4, lr=5e-3))
    return GrowOptions.model_validate({**base, **kw})


_CORPUS_FILE: list[Path] = []


def tiny_corpus_file() -> Path:
    return _CORPUS_FILE[0]


@pytest.fixture(autouse=True)
def _corpus_file(tmp_path_factory, tiny_corpus):
    if not _CORPUS_FILE:
        path = tmp_path_factory.mktemp("corpus") / "shakespeare-slice.txt"
        path.write_text(tiny_corpus.train[0][:30_000])
        _CORPUS_FILE.append(path)


def test_gstack_from_a_checkpoint_records_lineage_and_skips_seen_tokens(tmp_path, tiny_checkpoint):
    from lifecycle.commands.grow import run_grow
    from lifecycle.model.card import read_lineage
    from lifecycle.model.io import load_model

    # give the source a lineage saying it saw 512 tokens of this very data stream
    opts = _grow_options(model=str(tiny_checkpoint), output=str(tmp_path / "g"), target_layers=5)
    lineage = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    from lifecycle.commands.grow import _pack, _resolve

    data = _pack(opts, _resolve(opts))
    lineage.update(tokens_seen=512, seed=0, data=data.describe())
    (tiny_checkpoint / "lifecycle.json").write_text(json.dumps(lineage))

    out = run_grow(opts)
    grown = read_lineage(out)
    assert grown["command"] == "grow" and grown["method"] == "gstack"
    assert grown["parents"] == [str(tiny_checkpoint)]
    g = grown["growth"]
    assert g["layer_map"] == [0, 1, 0, 1, 1] and g["source_layers"] == 2 and g["target_layers"] == 5
    assert g["skip_tokens"] == 512 and g["small_tokens"] == 512
    assert grown["tokens_seen"] == 512 + 4 * 4 * 32
    assert grown["history"][0]["command"] == "test"
    loaded = load_model(str(out))
    assert loaded.model.config.num_hidden_layers == 5
    assert "lifecycle-grow" in (out / "README.md").read_text()


def test_gstack_from_scratch_trains_small_then_grown(tmp_path):
    from lifecycle.commands.grow import run_grow
    from lifecycle.model.card import read_lineage

    opts = _grow_options(config="micro", target_layers=4, output=str(tmp_path / "g"), growth_tokens=300,
                         train=dict(steps=6, micro_batch_size=4, warmup_steps=1, eval_every=2, eval_blocks=4))
    out = run_grow(opts)
    g = read_lineage(out)["growth"]
    assert g["source_layers"] == 1 and g["layer_map"] == [0, 0, 0, 0]
    assert g["small_tokens"] == 3 * 128 and g["grown_tokens"] == 3 * 128 and g["skip_tokens"] == 3 * 128
    assert read_lineage(out)["tokens_seen"] == 6 * 128  # the same budget as `train --config micro train.steps=6`
    assert g["train_flops"] < 6 * g["grown_params"] * 6 * 128  # the small phase was cheaper
    small = read_lineage(out / "small")
    assert small["tokens_seen"] == 3 * 128
    phases = [json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert phases[0] == "small" and phases[-1] == "grown"
    assert (out / "loss.png").is_file()


def test_gstack_growth_point_and_grown_lr_reach_the_two_phases(tmp_path):
    """Default growth point: the small phase ends at its peak LR (no anneal); the grown phase runs at grown_lr."""
    from lifecycle.commands.grow import run_grow
    from lifecycle.model.card import read_lineage

    opts = _grow_options(config="micro", target_layers=4, output=str(tmp_path / "g"), growth_tokens=512, grown_lr=1e-3,
                         train=dict(steps=8, micro_batch_size=4, warmup_steps=1, eval_every=0, eval_blocks=4, lr=5e-3, log_every=1))
    out = run_grow(opts)
    g = read_lineage(out)["growth"]
    assert g["growth_point"] == "peak" and g["small_lr"] == 5e-3 and g["grown_lr"] == 1e-3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    small = [r["lr"] for r in rows if r["phase"] == "small"]
    grown = [r["lr"] for r in rows if r["phase"] == "grown"]
    assert len(small) == 4 and small[-1] == pytest.approx(5e-3)  # stacked at the peak
    assert max(grown) == pytest.approx(1e-3) and grown[-1] < 1e-3  # its own peak, then its own decay


def test_layerwise_command_writes_loadable_stage_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM

    from lifecycle.commands.grow import run_grow
    from lifecycle.model.card import read_lineage

    opts = _grow_options(method="layerwise", config="micro", target_layers=3, output=str(tmp_path / "lw"),
                         layerwise=dict(embedding="hashed"))
    out = run_grow(opts)
    g = read_lineage(out)["growth"]
    assert [s["layers"] for s in g["stages"]] == [1, 2, 3]
    for n, depth in ((1, 1), (2, 2)):
        stage = AutoModelForCausalLM.from_pretrained(out / "stages" / f"stage-{n}")
        assert stage.config.num_hidden_layers == depth
    final = AutoModelForCausalLM.from_pretrained(out)
    assert final.config.num_hidden_layers == 3
    s1 = AutoModelForCausalLM.from_pretrained(out / "stages" / "stage-1")
    assert torch.equal(s1.model.embed_tokens.weight, final.model.embed_tokens.weight)  # substrate frozen
    assert torch.equal(s1.model.layers[0].mlp.up_proj.weight, final.model.layers[0].mlp.up_proj.weight)


def _cli(*args: str, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "lifecycle", *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.fixture
def gpt2_checkpoint(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64))
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, tiny_checkpoint, gpt2_checkpoint):
    cases = [
        (["--model", str(tiny_checkpoint), "--factor", "0.5"], "growth factor must be at least 1"),
        (["--model", str(tiny_checkpoint), "--layer-map", "0,1,2"], "names layer 2, but the source has 2 layers"),
        (["--model", str(gpt2_checkpoint)], "architecture 'gpt2' is not supported"),
        (["--model", str(tiny_checkpoint), "--plan", "budget_tokens=1000"], "smaller than the growth point"),
        (["--config", "micro", "growth_point=late"], "growth_point"),
        (["--model", str(tiny_checkpoint), "grown_lr=0"], "grown_lr"),
        (["--method", "layerwise", "--config", "micro", "layerwise.stop_patience=-1"], "stop_patience"),
        (["--method", "layerwise", "--config", "micro", "layerwise.embedding=glyph"], "embedding"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, text = _cli("grow", *args, "--output", str(out), cwd=tmp_path)
        assert code != 0, text
        lines = [line for line in text.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], text
        assert not out.exists() and not (tmp_path / f".out{i}.run").exists()


def test_plan_prints_d_and_writes_nothing(tmp_path, tiny_checkpoint):
    code, text = _cli("grow", "--model", str(tiny_checkpoint), "--plan", "budget_tokens=100000", "growth_tokens=20000",
                      cwd=tmp_path)
    assert code == 0, text
    assert "d = 20,000 tokens" in text and "small model" in text and "less than training the target" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tiny-ckpt"])


@pytest.mark.parametrize("recipe", ["grow_gstack.yaml", "grow_layerwise.yaml"])
def test_recipes_validate(recipe):
    from lifecycle.recipe import plan_recipe

    _, steps, _ = plan_recipe(REPO_ROOT / "recipes" / recipe)
    assert any(step.command.name == "grow" for step in steps)


# ------------------------------------------------------------------------------------------ evidence


def test_grow_bench_runs_every_part_and_writes_its_summary(tmp_path):
    """bench/grow.py --smoke (about 30 s): every part of the full bench on a tiny budget, so the
    bench that backs docs/grow.md cannot rot. Its numbers are not evidence; the test below is."""
    out = tmp_path / "grow_smoke.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "grow.py"), "--smoke", "--out", str(out),
                    "--work", str(tmp_path / "work")], check=True, timeout=900, cwd=REPO_ROOT,
                   capture_output=True)
    summary = json.loads(out.read_text())["summary"]
    assert summary["seeds"] == 2 and summary["tokens_each_arm"] > 0
    assert len(summary["paired_gaps"]) == 2 and summary["margin"] > 0
    assert isinstance(summary["beats_scratch_by_more_than_noise"], bool)
    assert 0 <= summary["paired_p_one_sided"] <= 1
    # every part ran: the LR sweep (extended past an edge if needed), the variants, the d sweep, the ladder
    assert len(summary["scratch_by_lr"]) >= 3
    assert {"gstack", "annealed", "grown_lr_x0.3", "d=0.5T"} <= set(summary["arms"])
    for arm in summary["arms"].values():
        lo, hi = arm["token_saving"]["ci95"]
        assert lo <= hi and arm["token_saving"]["ratio"] >= 1.0 and "vs_scratch_at_1.3T" in arm
    assert out.with_suffix(".png").is_file()
    assert "| gstack |" in subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "grow.py"), "--table", str(out)],
                                          check=True, cwd=REPO_ROOT, capture_output=True, text=True).stdout


@pytest.mark.bench
def test_gstack_beats_scratch_at_equal_tokens_by_more_than_seed_noise(tmp_path):
    """bench/grow.py --quick: 5 seeds per arm, 8-layer width-64 target, 100k tokens each (about 5 minutes
    on one idle core); the same runs as the headline of the full bench (deterministic: 1 thread, fixed seeds).

    G_stack (default growth point: the small model at its LR peak) must win for every seed, with a
    paired t-test over seeds at one-sided p < 0.05, and by more than two standard errors of the
    difference of the means (2·σ·sqrt(2/5), σ the seed std pooled over both arms).
    """
    out = tmp_path / "grow_quick.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "grow.py"), "--quick", "--out", str(out),
                    "--work", str(tmp_path / "work")], check=True, timeout=3000, cwd=REPO_ROOT)
    summary = json.loads(out.read_text())["summary"]
    assert summary["seeds"] == 5 and summary["tokens_each_arm"] > 0
    assert all(gap > 0 for gap in summary["paired_gaps"]), summary
    assert summary["paired_p_one_sided"] < 0.05, summary
    assert summary["gap_at_equal_tokens"] > summary["margin"] > 0, summary
    assert summary["beats_scratch_by_more_than_noise"], summary
    assert out.with_suffix(".png").is_file()
