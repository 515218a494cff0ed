"""logit_moe: the logit-averaging mixture of experts (Bochkov 2025) as one loadable checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.pipeline import merge_models
from tests.conftest import make_tiny_model
from tests.test_merge import _one_thread, _save  # noqa: F401 - _one_thread is an autouse fixture


@pytest.fixture(scope="module")
def experts(tmp_path_factory, tiny_tokenizer):
    """Two experts on one frozen embedding (b is deeper: a layer-wise grown model), and a third of
    another initialisation; all untied so the shared tensor is the input embedding alone."""
    root = tmp_path_factory.mktemp("moe-inputs")
    vocab = len(tiny_tokenizer)
    a = make_tiny_model(vocab, seed=1, tie=False)
    b = make_tiny_model(vocab, seed=2, layers=3, tie=False)
    c = make_tiny_model(vocab, seed=3, tie=True)
    with torch.no_grad():
        b.model.embed_tokens.weight.copy_(a.model.embed_tokens.weight)
    out = {"models": {"a": a, "b": b, "c": c}}
    for name, model in out["models"].items():
        out[name] = _save(model, tiny_tokenizer, root / name)
    return out


def _ids(tokenizer, text="ROMEO: what light through yonder window breaks"):
    return torch.tensor([tokenizer.encode(text)])


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("combine", ["logits", "log_probs", "probs"])
def test_the_moe_combines_the_experts_next_token_scores_as_configured(combine, experts, tmp_path, tiny_tokenizer):
    weights = [0.25, 0.75]
    out = merge_models({"merge_method": "logit_moe", "parameters": {"combine": combine},
                        "models": [{"model": str(experts["a"]), "parameters": {"weight": 1}},
                                   {"model": str(experts["c"]), "parameters": {"weight": 3}}]}, tmp_path / "moe")
    moe = _load(out)
    assert type(moe).__name__ == "LifecycleLogitMoEForCausalLM"
    ids = _ids(tiny_tokenizer)
    with torch.no_grad():
        za, zc = experts["models"]["a"](ids).logits, experts["models"]["c"](ids).logits
        got = moe(ids).logits
    if combine == "logits":
        want = weights[0] * za + weights[1] * zc
    elif combine == "log_probs":
        want = weights[0] * za.log_softmax(-1) + weights[1] * zc.log_softmax(-1)
    else:
        want = (weights[0] * za.softmax(-1) + weights[1] * zc.softmax(-1)).log()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if combine == "probs":  # a mixture: the outputs are normalised log-probabilities
        torch.testing.assert_close(got.exp().sum(-1), torch.ones(got.shape[:-1]), atol=1e-5, rtol=0)


def test_equal_weights_are_the_papers_mean_of_raw_logits_and_the_lineage_names_every_expert(experts, tmp_path, tiny_tokenizer):
    out = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["b"])]}, tmp_path / "moe")
    ids = _ids(tiny_tokenizer)
    with torch.no_grad():
        want = (experts["models"]["a"](ids).logits + experts["models"]["b"](ids).logits) / 2
        got = _load(out)(ids).logits
    assert torch.equal(got, want) or torch.allclose(got, want, atol=1e-6, rtol=0)
    lineage = json.loads((out / "lifecycle.json").read_text())
    assert [p["model"] for p in lineage["merge"]["parents"]] == [str(experts["a"]), str(experts["b"])]
    assert lineage["merge"]["combine"] == "logits"


def _stored(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {k: handle.get_slice(k).get_shape()[0] for k in handle.keys()}


def test_a_shared_frozen_embedding_is_stored_once_and_tied_on_load(experts, tmp_path):
    models = [str(experts["a"]), str(experts["b"])]
    shared = merge_models({"merge_method": "logit_moe", "models": models}, tmp_path / "shared")
    separate = merge_models({"merge_method": "logit_moe", "models": models, "parameters": {"share_embeddings": False}},
                            tmp_path / "separate")
    names_shared, names_separate = _stored(shared), _stored(separate)
    assert set(names_separate) - set(names_shared) == {"experts.1.model.embed_tokens.weight"}
    vocab, hidden = experts["models"]["a"].model.embed_tokens.weight.shape
    saved = (separate / "model.safetensors").stat().st_size - (shared / "model.safetensors").stat().st_size
    assert abs(saved - vocab * hidden * 4) < 512  # one float32 embedding less on disk (headers differ slightly)
    moe = _load(shared)
    assert moe.experts[0].model.embed_tokens.weight is moe.experts[1].model.embed_tokens.weight
    assert json.loads((shared / "config.json").read_text())["shared_tensors"] == {
        "experts.1.model.embed_tokens.weight": "experts.0.model.embed_tokens.weight"}
    # experts of different initialisation share nothing
    other = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["c"])]}, tmp_path / "other")
    assert json.loads((other / "config.json").read_text())["shared_tensors"] == {}


def test_generate_with_each_experts_kv_cache_equals_generate_without_it(experts, tmp_path, tiny_tokenizer):
    out = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["b"])]}, tmp_path / "moe")
    moe = _load(out)
    lengths: list[int] = []
    hook = moe.experts[1].register_forward_pre_hook(lambda mod, args, kw: lengths.append(kw["input_ids"].shape[1]),
                                                   with_kwargs=True)
    ids = _ids(tiny_tokenizer)
    cached = moe.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    steps_cached = list(lengths)
    lengths.clear()
    plain = moe.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    hook.remove()
    assert torch.equal(cached, plain)
    assert steps_cached[0] == ids.shape[1] and set(steps_cached[1:]) == {1}  # the cache was really used
    assert lengths[-1] == cached.shape[1] - 1  # without it, every step re-reads the whole sequence


def test_hub_users_load_it_with_trust_remote_code_and_transformers_alone(experts, tmp_path, tiny_tokenizer):
    out = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["b"])]}, tmp_path / "moe")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lifecycle_logit_moe.LifecycleLogitMoEForCausalLM"
    ids = _ids(tiny_tokenizer)
    with torch.no_grad():
        want = _load(out)(ids).logits[0, -1].tolist()
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        "assert not any(k == 'lifecycle' or k.startswith('lifecycle.') for k in sys.modules), 'lifecycle was imported'\n"
        f"print(json.dumps(m(torch.tensor({ids.tolist()})).logits[0, -1].tolist()))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_lm_eval_scores_the_moe_like_any_model(experts, tmp_path):
    from lifecycle.eval.harness import evaluate_folder

    out = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["c"])]}, tmp_path / "moe")
    report = evaluate_folder(out, ["copa"], 3, max_length=64)
    assert 0.0 <= report.scores["copa"]["acc"] <= 1.0
    assert report.settings["limit"] == 3


def _other_vocab_expert(tmp_path, tiny_tokenizer) -> Path:
    from lifecycle.data.sources import Corpus
    from lifecycle.data.tokenizer import train_bpe

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text() * 3
    other = train_bpe(Corpus(name="readme", train=[text]), len(tiny_tokenizer))
    return _save(make_tiny_model(len(other), seed=7), other, tmp_path / "other_vocab")


def test_bad_expert_sets_are_one_line_errors_that_write_nothing(experts, tmp_path, tiny_tokenizer):
    from lifecycle.cli import run_command

    a, b = str(experts["a"]), str(experts["b"])
    wide_vocab = _save(make_tiny_model(len(tiny_tokenizer) + 8, seed=8), tiny_tokenizer, tmp_path / "wide_vocab")
    cases = [
        ({"models": [a, str(_other_vocab_expert(tmp_path, tiny_tokenizer))]}, r"tokenizers differ: token id \d+ is .* but .*"),
        ({"models": [a, str(wide_vocab)]}, "experts differ in config vocab_size"),
        ({"models": [a]}, "at least two models, got 1"),
        ({"models": [a, b], "base_model": a}, "logit_moe takes no base_model"),
        ({"models": [a, b], "parameters": {"combine": "median"}}, "combine must be one of logits, log_probs, probs"),
        ({"models": [{"model": a, "parameters": {"weight": 0}}, {"model": b, "parameters": {"weight": 0}}]},
         "every expert's weight is 0"),
        ({"models": [{"model": a, "parameters": {"weight": [0.1, 0.9]}}, {"model": b, "parameters": {"weight": 1}}]},
         "must be a number"),
        ({"models": [{"model": a, "parameters": {"weight": 1}}, b]}, "give every expert a weight or none"),
    ]
    out = tmp_path / "out"
    for values, message in cases:
        with pytest.raises(LifecycleError, match=message) as info:
            run_command("merge", {"merge_method": "logit_moe", **values, "output": str(out)}, [])
        assert "\n" not in str(info.value)
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_recipe_merge_logit_moe_is_shipped_and_plans():
    from lifecycle.recipe import plan_recipe

    _, planned, _ = plan_recipe(Path(__file__).resolve().parents[1] / "recipes" / "merge_logit_moe.yaml")
    merges = {s.name: s for s in planned if s.command.name == "merge"}
    assert merges["moe"].models_refs == ["steps.expert_drama", "steps.expert_c"]
    assert merges["moe"].raw["merge_method"] == "logit_moe"


def test_the_moe_trains_further_on_the_engine_and_stays_a_hub_loadable_checkpoint(experts, tmp_path, tiny_tokenizer):
    from lifecycle.cli import run_command

    moe = merge_models({"merge_method": "logit_moe", "models": [str(experts["a"]), str(experts["b"])]}, tmp_path / "moe")
    trained = run_command("train", {"model": str(moe), "data": "shakespeare", "output": str(tmp_path / "trained"),
                                    "block_size": 32, "max_train_tokens": 20000,
                                    "train": {"steps": 3, "micro_batch_size": 4, "lr": 1e-2}}, [])
    config = json.loads((trained / "config.json").read_text())
    assert config["model_type"] == "lifecycle_logit_moe" and "AutoModelForCausalLM" in config["auto_map"]
    assert (trained / "modeling_lifecycle_logit_moe.py").is_file()
    assert "experts.1.model.embed_tokens.weight" not in _stored(trained)  # still stored once
    before, after = _load(moe), _load(trained)
    assert after.experts[0].model.embed_tokens.weight is after.experts[1].model.embed_tokens.weight
    ids = _ids(tiny_tokenizer)
    with torch.no_grad():
        assert not torch.allclose(before(ids).logits, after(ids).logits)


def _val_loss(folder: Path, settings: dict) -> float:
    """The engine's held-out loss of a saved model on the post_train data's validation split."""
    from lifecycle.data import load_corpus, pack
    from lifecycle.model.io import load_model
    from lifecycle.train.engine import TrainConfig, held_out_loss

    loaded = load_model(str(folder))
    data = pack(load_corpus(settings["data"]), loaded.tokenizer, settings["block_size"], val_fraction=0.05,
                max_train_tokens=settings["max_train_tokens"])
    return held_out_loss(loaded.model, data, TrainConfig(**settings["train"]), torch.device("cpu"))


def test_post_train_option_trains_the_moe_on_the_engine_and_the_card_records_scores_with_and_without(experts, tmp_path):
    from lifecycle.cli import run_command

    settings = {"data": "shakespeare", "block_size": 32, "max_train_tokens": 20000,
                "train": {"steps": 3, "micro_batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "eval_blocks": 4}}
    models = [str(experts["a"]), str(experts["b"])]
    out = run_command("merge", {"merge_method": "logit_moe", "models": models, "output": str(tmp_path / "moe"),
                                "post_train": settings, "eval": {"tasks": ["copa"], "limit": 2, "max_length": 64}}, [])
    lineage = json.loads((out / "lifecycle.json").read_text())
    post = lineage["merge"]["post_training"]
    assert post["steps"] == 3 and post["tokens_seen"] == 3 * 4 * 32
    untrained = merge_models({"merge_method": "logit_moe", "models": models}, tmp_path / "untrained")
    # each recorded loss is the engine's held-out loss of that model, recomputed here from the saved folders
    assert post["without"]["val_loss"] == pytest.approx(_val_loss(untrained, settings), rel=1e-4)
    assert post["with"]["val_loss"] == pytest.approx(_val_loss(out, settings), rel=1e-4)
    assert post["with"]["val_loss"] != pytest.approx(post["without"]["val_loss"], rel=1e-4)
    assert set(post["without"]["scores"]) == set(post["with"]["scores"]) == {"copa"}
    assert lineage["eval"]["copa"] == post["with"]["scores"]["copa"]  # the card's headline: the trained model
    assert "post_training" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lifecycle_logit_moe" and (out / "modeling_lifecycle_logit_moe.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe", "untrained"]  # the untrained copy is gone


def test_post_train_bad_inputs_are_one_line_errors_that_write_nothing(experts, tmp_path):
    from lifecycle.cli import run_command

    a, b = str(experts["a"]), str(experts["b"])
    cases = [
        ({"merge_method": "linear"}, "post_train: only logit_moe trains after merging, not linear"),
        ({"post_train": {"data": str(tmp_path / "missing.txt")}}, "post_train.data: "),
        ({"post_train": {"data": "shakespeare", "block_size": 100000}}, "post_train.block_size 100000 exceeds"),
        ({"post_train": {"data": "shakespeare", "epochs": 2}}, "epochs"),
    ]
    out = tmp_path / "out"
    for values, message in cases:
        values = {"merge_method": "logit_moe", "models": [a, b], "post_train": {"data": "shakespeare"}, **values,
                  "output": str(out)}
        with pytest.raises(LifecycleError, match=message) as info:
            run_command("merge", values, [])
        assert "\n" not in str(info.value)
        assert not out.exists() and not list(tmp_path.glob(".out*"))
