"""lifecycle merge: each method against hand-computed references, lazy sharded I/O, loadable output
with lineage, and every bad input as a one-line error that writes nothing."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.common import (
    MergeWarning, TensorJob, evaluate_setting, layer_t, merge_spec, resolve_parameters, task_arithmetic_merge,
)
from lifecycle.methods.merge.pipeline import merge_models
from lifecycle.methods.merge.slerp import slerp
from tests.conftest import make_tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(model, tokenizer, folder: Path, *, shard_bytes: int | None = None) -> Path:
    if shard_bytes is None:
        from lifecycle.model.io import save_checkpoint

        return save_checkpoint(model, tokenizer, folder, lineage={"command": "test", "name": folder.name})
    from lifecycle.model.tensors import ShardedWriter

    with ShardedWriter(folder, max_shard_bytes=shard_bytes) as writer:
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            writer.add(name, tensor)
        return writer.finish(model.config, tokenizer=tokenizer, lineage={"command": "test", "name": folder.name})


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    """Three tiny LLaMAs of one config (base, a, b); b is also saved in several shards."""
    root = tmp_path_factory.mktemp("merge-inputs")
    vocab = len(tiny_tokenizer)
    out = {}
    for seed, name in enumerate(("base", "a", "b")):
        out[name] = _save(make_tiny_model(vocab, seed=seed), tiny_tokenizer, root / name)
    out["a_copy"] = _save(make_tiny_model(vocab, seed=1), tiny_tokenizer, root / "a_copy")
    out["b_sharded"] = _save(make_tiny_model(vocab, seed=2), tiny_tokenizer, root / "b_sharded", shard_bytes=20_000)
    out["wide"] = _save(make_tiny_model(vocab, seed=3, intermediate=48), tiny_tokenizer, root / "wide")
    tok2 = copy.deepcopy(tiny_tokenizer)
    tok2.add_special_tokens({"eos_token": tok2.convert_ids_to_tokens(5)})  # same vocabulary, other eos
    out["other_tok"] = _save(make_tiny_model(vocab, seed=4), tok2, root / "other_tok")
    from lifecycle.data.sources import Corpus
    from lifecycle.data.tokenizer import train_bpe

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text() * 3
    tok3 = train_bpe(Corpus(name="readme", train=[text]), vocab)  # same size, other merges
    assert len(tok3) == vocab
    out["other_vocab"] = _save(make_tiny_model(vocab, seed=5), tok3, root / "other_vocab")
    return out


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from lifecycle.model.tensors import TensorReader

    with TensorReader(folder) as reader:
        return {name: reader.get(name).clone() for name in reader.keys()}


def _job(tensors, base_index, params, model_params, name="model.layers.0.mlp.up_proj.weight"):
    return TensorJob(name=name, tensors=tensors, sources=[f"m{i}" for i in range(len(tensors))], base_index=base_index,
                     params=params, model_params=model_params)


# -- parameter settings: gradients and filters ------------------------------------------------------------


def test_gradients_interpolate_over_layers_and_filters_pick_the_first_matching_rule():
    assert layer_t("model.embed_tokens.weight", 5) == 0
    assert layer_t("model.norm.weight", 5) == 0
    assert layer_t("model.layers.0.self_attn.q_proj.weight", 5) == 0
    assert layer_t("model.layers.2.mlp.up_proj.weight", 5) == 0.5
    assert layer_t("model.layers.4.mlp.up_proj.weight", 5) == 1
    assert layer_t("model.layers.0.mlp.up_proj.weight", 1) == 1  # mergekit: one layer is t = 1
    assert evaluate_setting("x", [0, 0.5, 1], 0.25) == pytest.approx(0.25)
    assert evaluate_setting("x", [0, 1, 0], 0.75) == pytest.approx(0.5)
    assert evaluate_setting("x", [0.2, 0.8], 1.0) == pytest.approx(0.8)
    rules = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.9}, {"value": 0.5}]
    assert evaluate_setting("model.layers.1.self_attn.o_proj.weight", rules, 0.5) == pytest.approx(0.5)
    assert evaluate_setting("model.layers.1.self_attn.o_proj.weight", rules, 1.0) == pytest.approx(1.0)
    assert evaluate_setting("model.layers.1.mlp.down_proj.weight", rules, 0.5) == 0.9
    assert evaluate_setting("model.embed_tokens.weight", rules, 0) == 0.5
    assert evaluate_setting("model.embed_tokens.weight", rules[:2], 0) is None  # no rule: falls through


def test_a_models_own_parameter_wins_over_the_global_one_and_defaults_fill_the_rest():
    spec = merge_spec("ties")
    params, per_model = resolve_parameters(
        spec, "model.layers.1.mlp.up_proj.weight", 1.0, ["base", "a", "b"], 0,
        [None, {"weight": 0.7}, {"density": [0.2, 0.6]}], {"weight": 0.3, "density": 0.5})
    assert params == {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 1.0}
    assert per_model[1] == {"weight": 0.7, "density": 0.5}
    assert per_model[2] == {"weight": 0.3, "density": pytest.approx(0.6)}
    with pytest.raises(LifecycleError, match="missing required parameter weight for a"):
        resolve_parameters(spec, "w", 0, ["base", "a"], 0, [None, None], None)


# -- methods against hand-computed references --------------------------------------------------------------


def test_linear_is_the_weighted_average():
    a, b = torch.tensor([1.0, 2.0, -4.0]), torch.tensor([3.0, 0.0, 4.0])
    from lifecycle.methods.merge.linear import merge_linear

    out = merge_linear(_job([a, b], None, {"normalize": True}, [{"weight": 1.0}, {"weight": 3.0}]))
    assert torch.allclose(out, torch.tensor([2.5, 0.5, 2.0]))
    out = merge_linear(_job([a, b], None, {"normalize": False}, [{"weight": 1.0}, {"weight": 3.0}]))
    assert torch.allclose(out, torch.tensor([10.0, 2.0, 8.0]))


def test_task_arithmetic_adds_weighted_task_vectors_times_lambda():
    base, a, b = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])
    params = {"normalize": False, "rescale": False, "lambda": 2.0, "int8_mask": False}
    out = task_arithmetic_merge(_job([base, a, b], 0, params, [{}, {"weight": 0.5, "density": 1.0}, {"weight": 1.0, "density": 1.0}]),
                                sparsify=None, consensus=False)
    # deltas (1, -1) and (0, 2): 0.5·(1, -1) + 1·(0, 2) = (0.5, 1.5); × lambda 2 = (1, 3); + base
    assert torch.allclose(out, torch.tensor([2.0, 4.0]))


def test_ties_trims_elects_signs_and_averages_the_agreeing_entries():
    base = torch.ones(4)
    d1 = torch.tensor([2.0, -2.5, 3.0, 0.1])
    d2 = torch.tensor([-3.0, 1.0, 0.5, 0.2])
    params = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False}
    mp = [{}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = task_arithmetic_merge(_job([base, base + d1, base + d2], 0, params, mp), sparsify="magnitude", consensus=True)
    # trim to the top 2 magnitudes: d1 → (0, -2.5, 3, 0), d2 → (-3, 1, 0, 0)
    # elected sign of the sum (-3, -1.5, 3, 0) → (-, -, +, +); d2's +1 at entry 1 disagrees and is dropped
    # agreeing sums (-3, -2.5, 3, 0) over agreeing weights (1, 1, 1, 0→1)
    assert torch.allclose(out, base + torch.tensor([-3.0, -2.5, 3.0, 0.0]))
    # with weights 1 and 2 the per-entry divisor is the agreeing models' weight sum
    mp[2]["weight"] = 2.0
    out = task_arithmetic_merge(_job([base, base + d1, base + d2], 0, params, mp), sparsify="magnitude", consensus=True)
    assert torch.allclose(out, base + torch.tensor([-3.0, -2.5, 3.0, 0.0]))  # (-6/2, -2.5/1, 3/1, 0)
    # without normalize the weighted entries are summed
    params["normalize"] = False
    out = task_arithmetic_merge(_job([base, base + d1, base + d2], 0, params, mp), sparsify="magnitude", consensus=True)
    assert torch.allclose(out, base + torch.tensor([-6.0, -2.5, 3.0, 0.0]))


def test_dare_drops_at_the_density_and_rescales_by_l1_norm_with_a_fixed_seed():
    n = 20_000
    base = torch.zeros(n)
    delta = torch.linspace(0.5, 1.5, n)
    params = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}
    mp = [{}, {"weight": 1.0, "density": 0.3}]
    torch.manual_seed(0)
    out = task_arithmetic_merge(_job([base, delta], 0, params, mp), sparsify="random", consensus=False)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.3, abs=0.015)
    # mergekit's rescale matches the L1 norm of the undropped task vector (not 1/density)
    assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    scale = delta.abs().sum() / delta[kept].abs().sum()
    assert torch.allclose(out[kept], delta[kept] * scale)
    torch.manual_seed(0)
    mask = torch.bernoulli(torch.full_like(delta, 0.3))
    assert torch.equal(kept, mask.bool())  # the global generator, one draw per task vector, as mergekit
    torch.manual_seed(0)
    again = task_arithmetic_merge(_job([base, delta], 0, params, mp), sparsify="random", consensus=False)
    assert torch.equal(out, again)
    # rescale false: the kept entries are unchanged
    params["rescale"] = False
    torch.manual_seed(0)
    plain = task_arithmetic_merge(_job([base, delta], 0, params, mp), sparsify="random", consensus=False)
    assert torch.equal(plain[kept], delta[kept])


def test_dare_ties_applies_the_sign_election_after_the_drop():
    base = torch.zeros(4)
    a, b = torch.tensor([1.0, 2.0, -1.0, 1.0]), torch.tensor([-3.0, 1.0, -1.0, 0.5])
    params = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": True}
    mp = [{}, {"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}]
    out = task_arithmetic_merge(_job([base, a, b], 0, params, mp), sparsify="random", consensus=True)
    assert torch.allclose(out, torch.tensor([-3.0, 3.0, -2.0, 1.5]))  # entry 0: only b's -3 agrees


def test_slerp_at_0_1_a_known_angle_and_the_colinear_fallback():
    v0, v1 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(slerp(0.0, v0, v1), v0)
    assert torch.allclose(slerp(1.0, v0, v1), v1, atol=1e-6)
    half = math.sqrt(2.0)  # 90° apart: sin(45°)/sin(90°) · 2 in each coordinate
    assert torch.allclose(slerp(0.5, v0, v1), torch.tensor([[half, half]]))
    third = slerp(1 / 3, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    # |dot| > 0.9995: linear interpolation of the raw tensors
    assert torch.allclose(slerp(0.5, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])), torch.tensor([1.5, 1.5]))


# -- whole models ------------------------------------------------------------------------------------------


def test_linear_merge_of_sharded_inputs_loads_and_records_every_parent(models, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lifecycle.model.tensors import TensorReader

    reads: dict[tuple[str, str], int] = {}
    original = TensorReader.get

    def counting_get(self, name):
        reads[(self.source, name)] = reads.get((self.source, name), 0) + 1
        return original(self, name)

    monkeypatch.setattr(TensorReader, "get", counting_get)
    config = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(models["a"]), "parameters": {"weight": 0.25}},
                         {"model": str(models["b_sharded"]), "parameters": {"weight": 0.75}}]}
    out = merge_models(config, tmp_path / "merged", max_shard_bytes=30_000)
    assert (out / "model.safetensors.index.json").is_file()  # the output is sharded too
    assert len({v for v in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values()}) > 1
    assert all(count == 1 for count in reads.values())  # each input tensor read once, one at a time
    a, b, merged = _state(models["a"]), _state(models["b_sharded"]), _state(out)
    assert set(merged) == set(a)
    for name in a:
        assert torch.allclose(merged[name], 0.25 * a[name] + 0.75 * b[name], atol=1e-6), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(model.model.embed_tokens.weight, 0.25 * a["model.embed_tokens.weight"] + 0.75 * b["model.embed_tokens.weight"], atol=1e-6)
    lineage = json.loads((out / "lifecycle.json").read_text())
    assert lineage["command"] == "merge" and lineage["base_model_relation"] == "merge"
    assert [p["weight"] for p in lineage["merge"]["parents"]] == [0.25, 0.75]
    assert len(lineage["parents"]) == 2 and [h["name"] for h in lineage["history"]] == ["a", "b_sharded"]
    card = (out / "README.md").read_text()
    assert "0.25" in card and "0.75" in card


def test_a_merge_of_one_models_fine_tunes_loads_one_tokenizer_and_never_a_whole_model(models, tmp_path, monkeypatch):
    """Preflight and merge read each input's tokenizer files, not its tokenizer, when they are identical;
    the written folder is checked without loading it (it still loads)."""
    from transformers import AutoModelForCausalLM

    from lifecycle.methods.merge import pipeline
    from lifecycle.model.tensors import ShardedWriter

    loaded: list[str] = []
    load = pipeline._load_tokenizer
    monkeypatch.setattr(pipeline, "_load_tokenizer", lambda source: loaded.append(source) or load(source))

    def no_full_load(self):
        raise AssertionError("a weight merge must not load the whole output back")

    monkeypatch.setattr(ShardedWriter, "_verify", no_full_load)
    out = tmp_path / "merged"
    _run({"merge_method": "task_arithmetic", "base_model": str(models["base"]), "output": str(out),
          "models": [{"model": str(models["a"]), "parameters": {"weight": 0.5}},
                     {"model": str(models["b"]), "parameters": {"weight": 0.5}}]})
    assert loaded == [str(models["base"])]  # the output's tokenizer, once
    monkeypatch.undo()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.state_dict()["model.norm.weight"], _state(out)["model.norm.weight"])


def test_the_written_folder_is_refused_when_a_tensor_is_missing(models, tmp_path):
    from lifecycle.model.tensors import ShardedWriter, TensorReader

    with TensorReader(models["a"]) as reader:
        config = reader.config
        with ShardedWriter(tmp_path / "out") as writer:
            for name in reader.keys():
                if name != "model.norm.weight":
                    writer.add(name, reader.get(name))
            with pytest.raises(LifecycleError, match="written checkpoint is not complete: .*model.norm.weight"):
                writer.finish(config, verify="structure")
    assert not (tmp_path / "out").exists()


def test_ties_and_slerp_with_filters_on_whole_models(models, tmp_path):
    base, a, b = _state(models["base"]), _state(models["a"]), _state(models["b"])
    out = merge_models({"merge_method": "ties", "base_model": str(models["base"]),
                        "models": [{"model": str(models["a"]), "parameters": {"weight": 1.0, "density": 0.5}},
                                   {"model": str(models["b"]), "parameters": {"weight": 1.0, "density": 0.5}}]},
                       tmp_path / "ties")
    merged = _state(out)
    name = "model.layers.1.mlp.down_proj.weight"
    job = _job([base[name], a[name], b[name]], 0, {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False},
               [{}, {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}], name=name)
    assert torch.allclose(merged[name], task_arithmetic_merge(job, sparsify="magnitude", consensus=True))

    t = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": [1, 0]}, {"value": 0.5}]
    out = merge_models({"merge_method": "slerp", "base_model": str(models["base"]), "models": [{"model": str(models["a"])}],
                        "parameters": {"t": t}}, tmp_path / "slerp")
    merged = _state(out)
    assert torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.allclose(merged["model.layers.1.self_attn.q_proj.weight"], a["model.layers.1.self_attn.q_proj.weight"], atol=1e-6)
    assert torch.allclose(merged["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"], atol=1e-6)
    name = "model.embed_tokens.weight"
    assert torch.allclose(merged[name], slerp(0.5, base[name], a[name]))


def test_a_one_slice_slerp_config_as_mergekit_examples_write_it_equals_the_models_form(models, tmp_path):
    t = [{"filter": "self_attn", "value": [0, 0.5]}, {"filter": "mlp", "value": [0.7, 0.3]}, {"value": 0.5}]
    sliced = merge_models({"merge_method": "slerp", "base_model": str(models["base"]), "parameters": {"t": t},
                           "slices": [{"sources": [{"model": str(models["base"]), "layer_range": [0, 2]},
                                                   {"model": str(models["a"]), "layer_range": [0, 2]}]}],
                           "dtype": "float32"}, tmp_path / "sliced")
    plain = merge_models({"merge_method": "slerp", "base_model": str(models["base"]), "parameters": {"t": t},
                          "models": [str(models["base"]), str(models["a"])], "dtype": "float32"}, tmp_path / "plain")
    one, two = _state(sliced), _state(plain)
    assert all(torch.equal(one[name], two[name]) for name in one)


def test_a_tensor_that_comes_out_all_zeros_is_warned_about(models, tmp_path):
    # a and its copy with weights 1 and -1, not normalised: every merged tensor is zero
    cfg = {"merge_method": "linear", "parameters": {"normalize": False},
           "models": [{"model": str(models["a"]), "parameters": {"weight": 1.0}},
                      {"model": str(models["a_copy"]), "parameters": {"weight": -1.0}}]}
    with pytest.warns(MergeWarning, match="is all zeros"):
        out = merge_models(cfg, tmp_path / "zeros")
    lineage = json.loads((out / "lifecycle.json").read_text())
    assert "model.norm.weight" in lineage["merge"]["all_zero_tensors"]


# -- bad inputs: one line, nothing written -----------------------------------------------------------------


def _run(values: dict) -> None:
    """What the CLI does: validate, preflight, run."""
    from lifecycle.cli import run_command

    run_command("merge", values, [])


def _bad_cases(models, out):
    a, b = str(models["a"]), str(models["b"])
    return {
        "shapes": ({"merge_method": "linear", "models": [a, str(models["wide"])], "parameters": {"weight": 0.5}},
                   "intermediate_size: 64 in .*, 48 in"),
        "tokenizer": ({"merge_method": "linear", "models": [a, str(models["other_tok"])], "parameters": {"weight": 0.5}},
                      "tokenizers differ in special token eos_token"),
        "vocabulary": ({"merge_method": "linear", "models": [a, str(models["other_vocab"])], "parameters": {"weight": 0.5}},
                       "tokenizers differ: token id [0-9]+ is .* in .* but .* in"),
        "single": ({"merge_method": "linear", "models": [a], "parameters": {"weight": 1.0}}, "at least two models, got 1"),
        "method": ({"merge_method": "frankenstein", "models": [a, b]}, "unknown merge method 'frankenstein'"),
        "field": ({"merge_method": "linear", "models": [a, b], "parameters": {"weight": 0.5}, "normalise": True},
                  "normalise: unknown option"),
        "parameter": ({"merge_method": "linear", "models": [a, b], "parameters": {"weight": 0.5, "density": 0.5}},
                      "parameters.density: not a parameter of linear"),
        "zero weights": ({"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 0}},
                                                                {"model": b, "parameters": {"weight": 0.0}}]},
                         "every model's weight is 0"),
        "no base": ({"merge_method": "ties", "models": [a, b], "parameters": {"weight": 0.5}}, "ties needs base_model"),
        "frankenmerge": ({"merge_method": "slerp", "base_model": a, "parameters": {"t": 0.5},
                          "slices": [{"sources": [{"model": a, "layer_range": [0, 1]}, {"model": b, "layer_range": [0, 1]}]}]},
                         r"layer_range \[0, 1\] of .* is not all its 2 layers"),
        "two slices": ({"merge_method": "slerp", "base_model": a, "parameters": {"t": 0.5},
                        "slices": [{"sources": [{"model": a, "layer_range": [0, 1]}]},
                                   {"sources": [{"model": b, "layer_range": [1, 2]}]}]},
                       "several slices .* not supported"),
    }


@pytest.mark.parametrize("case", ["shapes", "tokenizer", "vocabulary", "single", "method", "field", "parameter", "zero weights",
                                  "no base", "frankenmerge", "two slices"])
def test_bad_inputs_are_one_line_errors_that_write_nothing(case, models, tmp_path):
    out = tmp_path / "out"
    values, message = _bad_cases(models, out)[case]
    with pytest.raises(LifecycleError, match=message) as info:
        _run({**values, "output": str(out)})
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_the_cli_runs_a_mergekit_yaml_unchanged_and_refuses_an_unknown_field(models, tmp_path, cli_runner):
    mergekit_yaml = f"""
merge_method: dare_ties
base_model: {models['base']}
models:
  - model: {models['a']}
    parameters:
      weight: 0.6
      density: [0.9, 0.5]
  - model: {models['b']}
    parameters:
      weight: 0.4
      density: 0.7
parameters:
  normalize: true
  int8_mask: true
dtype: bfloat16
"""
    config = tmp_path / "merge.yml"
    config.write_text(mergekit_yaml)
    code, text = cli_runner("merge", "--config", str(config), "-o", str(tmp_path / "merged"), "--random-seed", "1")
    assert code == 0, text
    merged = _state(tmp_path / "merged")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}  # one dtype throughout
    lineage = json.loads((tmp_path / "merged" / "lifecycle.json").read_text())
    assert lineage["method"] == "dare_ties" and lineage["seed"] == 1

    bad = yaml.safe_load(mergekit_yaml)
    bad["merge_methd"] = "ties"
    config.write_text(yaml.safe_dump(bad))
    code, text = cli_runner("merge", "--config", str(config), "-o", str(tmp_path / "again"))
    assert code != 0
    assert "merge_methd: unknown option" in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "again").exists()


def test_recipe_merge_linear_is_shipped_and_plans():
    from lifecycle.recipe import plan_recipe

    recipe, planned, _ = plan_recipe(Path(__file__).resolve().parents[1] / "recipes" / "merge_linear.yaml")
    merge = [s for s in planned if s.command.name == "merge"]
    assert merge and merge[0].models_refs == ["steps.expert_a", "steps.expert_b"]


def _write_gguf(path: Path) -> Path:
    """A tiny llama GGUF (2 layers, F32 tensors, a valid 8-token BPE) written with the gguf package."""
    import gguf
    import numpy as np

    hidden, inter, layers, heads, kv, vocab = 16, 32, 2, 2, 1, 8
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c", "d", "e", "t", "0", "t0"])
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
        for name, shape in (("attn_norm", (hidden,)), ("attn_q", (heads * head_dim, hidden)),
                            ("attn_k", (kv * head_dim, hidden)), ("attn_v", (kv * head_dim, hidden)),
                            ("attn_output", (hidden, heads * head_dim)), ("ffn_norm", (hidden,)),
                            ("ffn_gate", (inter, hidden)), ("ffn_up", (inter, hidden)), ("ffn_down", (hidden, inter))):
            tensor(f"blk.{i}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_input_is_dequantized_tensor_by_tensor(tmp_path):
    from lifecycle.model.io import load_model

    gguf_file = _write_gguf(tmp_path / "tiny.gguf")
    loaded = load_model(str(gguf_file))
    with torch.no_grad():
        for param in loaded.model.parameters():
            param.mul_(3.0)
    loaded.model.config.quantization_config = None
    tripled = _save(loaded.model, loaded.tokenizer, tmp_path / "tripled", shard_bytes=10**9)
    out = merge_models({"merge_method": "linear", "parameters": {"weight": 0.5},
                        "models": [str(gguf_file), str(tripled)]}, tmp_path / "merged")
    from lifecycle.model.tensors import TensorReader

    with TensorReader(gguf_file) as reader:
        original = {name: reader.get(name) for name in reader.keys()}
    merged = _state(out)
    for name, tensor in original.items():
        assert torch.allclose(merged[name], 2.0 * tensor, atol=1e-5), name  # (g + 3g) / 2


def test_recipe_steps_merge_earlier_steps_with_mergekit_style_entries(models, tmp_path):
    from lifecycle.recipe import run_recipe

    recipe = tmp_path / "merges.yaml"
    recipe.write_text(yaml.safe_dump({"name": "merges", "output_dir": str(tmp_path / "runs"), "steps": [
        {"name": "avg", "command": "merge", "merge_method": "linear", "parameters": {"weight": 0.5},
         "models": [str(models["a"]), str(models["b"])]},
        {"name": "mix", "command": "merge", "merge_method": "linear",
         "models": [{"model": "steps.avg", "parameters": {"weight": 0.25}},
                    {"model": str(models["base"]), "parameters": {"weight": 0.75}}]},
    ]}))
    outputs = run_recipe(recipe)
    a, b, base, mix = _state(models["a"]), _state(models["b"]), _state(models["base"]), _state(outputs[-1])
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"):
        expected = 0.25 * (0.5 * a[name] + 0.5 * b[name]) + 0.75 * base[name]
        assert torch.allclose(mix[name], expected, atol=1e-6), name
    lineage = json.loads((outputs[-1] / "lifecycle.json").read_text())
    assert [p["weight"] for p in lineage["merge"]["parents"]] == [0.25, 0.75]
    assert lineage["history"][0]["command"] == "merge"  # the avg step's own lineage comes along
    assert run_recipe(recipe) == outputs  # re-run: both steps skipped, same folders


def test_a_model_loaded_from_gguf_saves_as_safetensors(tmp_path):
    # transformers keeps the GGUF quantizer on the dequantized model and refuses save_pretrained with it;
    # `lifecycle train --model smollm2` (the merge bench's fine-tuned parents) must still write its checkpoint
    from lifecycle.model.io import load_model, save_checkpoint

    loaded = load_model(str(_write_gguf(tmp_path / "tiny.gguf")))
    out = save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "saved", lineage={"command": "test"})
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, load_model(str(out)).model(ids).logits)
