"""Exact LoRA fusion: lora_concat (Σ wᵢ sᵢ BᵢAᵢ exactly) and lora_svd (its best rank-k factorisation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.merge.lora_io import read_adapter
from lifecycle.methods.merge.pipeline import merge_models
from tests.conftest import make_tiny_model
from tests.test_merge import _one_thread, _save  # noqa: F401 - _one_thread is an autouse fixture

VOCAB = 320


def _adapter(base_model, folder: Path, *, r: int, alpha: int, targets: list[str], seed: int, rslora: bool = False) -> Path:
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(base_model),
                                LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rslora))
    with torch.no_grad():  # peft starts B at zero; a trained adapter has both factors non-zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("lora-inputs")
    base_model = make_tiny_model(len(tiny_tokenizer), seed=0)
    out = {"base_model": base_model, "base": _save(base_model, tiny_tokenizer, root / "base")}
    out["a"] = _adapter(base_model, root / "a", r=2, alpha=4, targets=["q_proj", "v_proj"], seed=1)
    out["b"] = _adapter(base_model, root / "b", r=4, alpha=4, targets=["q_proj", "up_proj"], seed=2, rslora=True)
    out["c"] = _adapter(base_model, root / "c", r=2, alpha=4, targets=["q_proj", "v_proj"], seed=4)
    other = make_tiny_model(len(tiny_tokenizer), seed=0, hidden_size=48, heads=4, kv_heads=2)
    out["other_base"] = _adapter(other, root / "other_base", r=2, alpha=2, targets=["q_proj"], seed=3)
    return out


def _want(loras, weights):
    """Σ wᵢ sᵢ BᵢAᵢ per module, from peft's own description of each adapter's scaling."""
    want: dict[str, torch.Tensor] = {}
    for name, w in zip(("a", "b"), weights):
        adapter = read_adapter(loras[name])
        for module in adapter.modules:
            want[module] = want.get(module, 0) + w * adapter.delta(module)
    return want


def _deltas(folder: Path) -> dict[str, torch.Tensor]:
    adapter = read_adapter(folder)
    return {m: adapter.delta(m) for m in adapter.modules}


def _config(method, loras, weights, **parameters):
    return {"merge_method": method, "base_model": str(loras["base"]),
            "models": [{"model": str(loras[n]), "parameters": {"weight": w}} for n, w in zip(("a", "b"), weights)],
            **({"parameters": parameters} if parameters else {})}


def test_rslora_scaling_is_read_as_peft_applies_it(loras):
    adapter = read_adapter(loras["b"])
    a, b, scaling = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert scaling == pytest.approx(4 / 4 ** 0.5) and a.shape == (4, 32) and b.shape == (32, 4)


def test_concat_is_the_exact_weighted_sum_of_updates_and_loads_in_peft(loras, tmp_path):
    from peft import PeftModel

    weights = [0.7, -0.4]
    out = merge_models(_config("lora_concat", loras, weights), tmp_path / "cat")
    want, got = _want(loras, weights), _deltas(out)
    assert set(got) == set(want)  # q_proj from both, v_proj from a only, up_proj from b only
    for module in want:
        torch.testing.assert_close(got[module], want[module], atol=1e-6, rtol=0)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 6 and config["lora_alpha"] == 6
    # peft itself applies it: the fused model's weights are base + Σ wᵢ ΔWᵢ
    import copy

    merged = PeftModel.from_pretrained(copy.deepcopy(loras["base_model"]), str(out)).merge_and_unload()
    base = loras["base_model"].state_dict()
    for module, delta in want.items():
        torch.testing.assert_close(merged.state_dict()[f"{module}.weight"].double() - base[f"{module}.weight"].double(),
                                   delta, atol=1e-5, rtol=0)


def test_concat_equals_peft_cat_and_peft_linear_is_lossy(loras, tmp_path):
    import copy

    from peft import PeftModel

    weights = [0.6, 0.9]
    ours = _deltas(merge_models(_config("lora_concat", loras, weights), tmp_path / "cat"))
    model = PeftModel.from_pretrained(copy.deepcopy(loras["base_model"]), str(loras["a"]), adapter_name="a")
    model.load_adapter(str(loras["b"]), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], weights, "cat", combination_type="cat")
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(q.get_delta_weight("cat").double(), ours["model.layers.0.self_attn.q_proj"], atol=1e-6, rtol=0)
    # peft's linear averages the A's and the B's separately (it needs equal ranks: a and c), so the
    # cross terms B_a A_c and B_c A_a enter; the exact average is what lora_concat writes
    model.load_adapter(str(loras["c"]), adapter_name="c")
    model.add_weighted_adapter(["a", "c"], [0.5, 0.5], "lin", combination_type="linear")
    exact = 0.5 * q.get_delta_weight("a").double() + 0.5 * q.get_delta_weight("c").double()
    lossy = float(torch.linalg.matrix_norm(q.get_delta_weight("lin").double() - exact) / torch.linalg.matrix_norm(exact))
    assert lossy > 0.1
    config = {"merge_method": "lora_concat", "base_model": str(loras["base"]),
              "models": [{"model": str(loras[n]), "parameters": {"weight": 0.5}} for n in ("a", "c")]}
    ours_ac = _deltas(merge_models(config, tmp_path / "cat_ac"))
    torch.testing.assert_close(ours_ac["model.layers.0.self_attn.q_proj"], exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rank", [6, 3, 1])
def test_svd_is_exact_at_full_rank_and_eckart_young_optimal_below_it(rank, loras, tmp_path):
    weights = [1.0, 0.5]
    out = merge_models(_config("lora_svd", loras, weights, rank=rank), tmp_path / "svd")
    want, got = _want(loras, weights), _deltas(out)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == rank
    for module, delta in want.items():
        s = torch.linalg.svdvals(delta)
        optimum = float(s[rank:].pow(2).sum().sqrt())
        error = float(torch.linalg.matrix_norm(got[module] - delta))
        assert error == pytest.approx(optimum, abs=1e-5 * max(1.0, float(s[0])))
        if rank >= int((s > 1e-9 * s[0]).sum()):  # q_proj has rank 6, the others 2 and 4
            assert error < 1e-5
    q = "model.layers.0.self_attn.q_proj"
    if rank < 6:  # the combined q_proj update has rank 6 and truncation must lose something
        assert float(torch.linalg.matrix_norm(got[q] - want[q])) > 1e-3


def test_svd_matches_peft_svd_at_the_same_rank(loras, tmp_path):
    import copy

    from peft import PeftModel

    ours = _deltas(merge_models(_config("lora_svd", loras, [1.0, 1.0], rank=3), tmp_path / "svd"))
    model = PeftModel.from_pretrained(copy.deepcopy(loras["base_model"]), str(loras["a"]), adapter_name="a")
    model.load_adapter(str(loras["b"]), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "svd", combination_type="svd", svd_rank=3)
    q = model.base_model.model.model.layers[1].self_attn.q_proj
    torch.testing.assert_close(q.get_delta_weight("svd").double(), ours["model.layers.1.self_attn.q_proj"], atol=1e-5, rtol=0)


def test_bad_lora_inputs_are_one_line_errors_that_write_nothing(loras, tmp_path):
    from lifecycle.cli import run_command

    a, b, base = str(loras["a"]), str(loras["b"]), str(loras["base"])
    (tmp_path / "not_lora").mkdir()
    cases = [
        ({"merge_method": "lora_concat", "base_model": base, "models": [a, str(loras["other_base"])]},
         "does not fit base model .*q_proj is \\[32, 32\\] in the base but B·A is \\[48, 48\\]"),
        ({"merge_method": "lora_concat", "base_model": base, "models": [a]}, "at least two LoRA adapters, got 1"),
        ({"merge_method": "lora_concat", "models": [a, b]}, "needs base_model"),
        ({"merge_method": "lora_concat", "base_model": base, "models": [a, str(tmp_path / "not_lora")]}, "is not a peft LoRA adapter folder"),
        ({"merge_method": "lora_svd", "base_model": base, "models": [a, b], "parameters": {"rank": 0}},
         "rank must be a positive integer"),
        ({"merge_method": "lora_concat", "base_model": base,
          "models": [{"model": a, "parameters": {"weight": 0}}, {"model": b, "parameters": {"weight": 0}}]},
         "every adapter's weight is 0"),
    ]
    out = tmp_path / "out"
    for values, message in cases:
        with pytest.raises(LifecycleError, match=message) as info:
            run_command("merge", {**values, "output": str(out)}, [])
        assert "\n" not in str(info.value)
        assert not out.exists() and not list(tmp_path.glob(".out*"))


# -- icm_fusion (experimental reconstruction) ------------------------------------------------------------


def _memory_adapters(count: int, seed: int = 0):
    from lifecycle.methods.merge.lora_io import LoraAdapter

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        modules = {f"model.layers.{j}.self_attn.q_proj": (torch.randn(2, 16, generator=g), torch.randn(16, 2, generator=g) * 0.1, 2.0)
                   for j in range(2)}
        out.append(LoraAdapter(Path(f"task{i}"), {"peft_type": "LORA", "r": 2}, modules))
    return out


def test_icm_fusion_vae_reconstructs_each_task_lora_from_its_own_task_vector():
    from lifecycle.methods.merge.icm_fusion import FusionVAE, conflict, flatten, train_fusion_vae, unflatten

    adapters = _memory_adapters(3)
    flat = flatten(adapters)
    task_vectors = torch.nn.functional.normalize(torch.randn(3, 24, generator=torch.Generator().manual_seed(1)), dim=-1)
    trained = train_fusion_vae(flat.vectors, task_vectors, steps=300, seed=0)
    untrained = FusionVAE(flat.vectors.shape[1], 24, 16, 16, 256).eval()
    for i, adapter in enumerate(adapters):
        for model, bound in ((trained, 0.3), (untrained, None)):
            with torch.no_grad():
                vector = model.decode(torch.zeros(1, model.latent), model.condition(task_vectors[i:i + 1]))[0]
            decoded = unflatten(flat, vector, flat.means[i], flat.stds[i])
            errors = []
            for module, (a, b, _) in adapter.modules.items():
                assert decoded[module][0].shape == a.shape and decoded[module][1].shape == b.shape
                errors.append(float(torch.linalg.matrix_norm(decoded[module][1] @ decoded[module][0] - b @ a)
                                    / torch.linalg.matrix_norm(b @ a)))
            if bound is not None:
                assert max(errors) < bound, errors
            else:
                assert max(errors) > 0.5  # the bound above is not met by chance
    with torch.no_grad():  # the learned projection pushes the task directions apart
        assert float(conflict(trained.condition(task_vectors))) < float(conflict(torch.nn.functional.normalize(
            FusionVAE(flat.vectors.shape[1], 24, 16, 16, 256).project(task_vectors), dim=-1))) + 1e-6


def test_icm_fusion_end_to_end_writes_an_adapter_peft_loads(loras, tmp_path):
    import copy

    from peft import PeftModel

    prompts = {}
    for name, lines in (("a", ["To be or not to be", "Wherefore art thou"]), ("c", ["int main(void) {", "#include <stdio.h>"])):
        prompts[name] = tmp_path / f"{name}.txt"
        prompts[name].write_text("\n".join(lines) + "\n")
    config = {"merge_method": "icm_fusion", "base_model": str(loras["base"]), "parameters": {"steps": 60},
              "models": [{"model": str(loras[n]), "parameters": {"weight": 0.5, "data": str(prompts[n])}} for n in ("a", "c")]}
    out = merge_models(config, tmp_path / "icm")
    fused = read_adapter(out)
    assert sorted(fused.modules) == sorted(read_adapter(loras["a"]).modules)
    assert json.loads((out / "lifecycle.json").read_text())["merge"]["experimental"] is True
    PeftModel.from_pretrained(copy.deepcopy(loras["base_model"]), str(out))
    with pytest.raises(LifecycleError, match="every adapter needs parameters.data"):
        merge_models({**config, "models": [str(loras["a"]), str(loras["c"])]}, tmp_path / "icm2")
    assert not (tmp_path / "icm2").exists()


def test_adapters_the_exact_fusions_cannot_express_are_refused(tmp_path):
    from safetensors.torch import save_file

    cases = {
        "embedding": ({"peft_type": "LORA", "r": 2, "lora_alpha": 2},
                      {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(2, 8)}, "not a LoRA A or B matrix"),
        "dora": ({"peft_type": "LORA", "r": 2, "use_dora": True}, {}, "use_dora adapters are not supported"),
        "bias": ({"peft_type": "LORA", "r": 2, "bias": "lora_only"}, {}, "trained biases or modules_to_save"),
        "one half": ({"peft_type": "LORA", "r": 2},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8)}, "not both A and B"),
    }
    for name, (config, tensors, message) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps(config))
        save_file(tensors or {"x.lora_A.weight": torch.zeros(1, 1)}, str(folder / "adapter_model.safetensors"))
        with pytest.raises(LifecycleError, match=message):
            read_adapter(folder)
