"""lifecycle vpretrain (V-Pretraining, Ke & Fanti 2026): target construction, α = 0 is next-token CE
exactly, the meta-gradient against finite differences, the designer's cadence on the engine, exact
resume (designer included), the CLI end to end, and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from lifecycle.errors import LifecycleError
from lifecycle.methods.vpretrain.targets import (candidate_set, mass_off_true, next_tokens, soft_cross_entropy,
                                                 soft_targets)
from lifecycle.train.hooks import causal_lm_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _feedback_file(folder: Path, rows: int = 6) -> Path:
    path = folder / "feedback.jsonl"
    lines = [json.dumps({"prompt": f"Question: what is {i} plus {i}?\nAnswer:", "completion": f"It is {2 * i}."})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _batch(vocab: int, seed: int = 0) -> dict:
    ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :3] = -100  # a prompt: no loss there
    return {"input_ids": ids, "labels": labels}


# --- targets (pure functions) ----------------------------------------------------------------------

def test_candidate_set_holds_the_true_token_first_then_the_top_others():
    logits = torch.tensor([[[0.0, 5.0, 1.0, 4.0, 3.0]]])
    y = torch.tensor([[1]])
    assert candidate_set(logits, y, 3).tolist() == [[[1, 3, 4]]]  # y_t never appears twice
    y = torch.tensor([[2]])
    cand = candidate_set(logits, y, 4)
    assert cand.tolist() == [[[2, 1, 3, 4]]]
    assert cand.unique().numel() == 4


def test_targets_are_a_distribution_on_the_candidates_with_gate_bounded_mass_off_the_true_token():
    r = torch.softmax(torch.randn(2, 5, 8), -1)
    alpha = torch.rand(2, 5) * 0.5
    q = soft_targets(alpha, r)
    assert torch.allclose(q.sum(-1), torch.ones(2, 5))
    assert (q >= 0).all()
    assert torch.allclose(q[..., 0], 1 - alpha + alpha * r[..., 0])
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert float(mass_off_true(q, mask)) <= 0.5 + 1e-6
    assert torch.allclose(mass_off_true(q, mask), (alpha * (1 - r[..., 0])).mean())


def _learner_positions(vocab: int):
    batch = _batch(vocab)
    logits = make_tiny_model(vocab)(input_ids=batch["input_ids"]).logits
    y, mask = next_tokens(batch["input_ids"], batch["labels"])
    return batch, logits, y, mask, candidate_set(logits[:, :-1], y, 16)


def test_alpha_zero_is_plain_next_token_cross_entropy_exactly(tiny_tokenizer):
    batch, logits, y, mask, cand = _learner_positions(len(tiny_tokenizer))
    q = soft_targets(torch.zeros(y.shape), torch.softmax(torch.randn(cand.shape), -1))
    ours = soft_cross_entropy(logits[:, :-1], cand, q, mask)
    assert torch.equal(ours, causal_lm_loss(logits, batch["labels"]))  # bit for bit, not approximately


def test_positive_gate_changes_the_loss_and_the_target_is_detached(tiny_tokenizer):
    batch, logits, y, mask, cand = _learner_positions(len(tiny_tokenizer))
    r = torch.softmax(torch.randn(cand.shape), -1).requires_grad_()
    q = soft_targets(torch.full(y.shape, 0.3), r)
    loss = soft_cross_entropy(logits[:, :-1], cand, q, mask)
    assert not torch.isclose(loss, causal_lm_loss(logits, batch["labels"]))
    loss.backward()
    assert r.grad is None  # the learner's loss never trains the designer


# --- the meta-gradient -------------------------------------------------------------------------------

def _fp64_rmsnorm(monkeypatch):
    # transformers' RMSNorm computes in fp32 whatever the input dtype; finite differences need fp64 through.
    from transformers.models.llama import modeling_llama

    def forward(self, hidden):
        return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


@pytest.mark.parametrize("align", ["dot", "cosine"])
def test_meta_gradient_matches_finite_differences(monkeypatch, align):
    from lifecycle.methods.vpretrain.designer import DesignerConfig, TaskDesigner
    from lifecycle.methods.vpretrain.value import alignment_parameters, feedback_gradient, meta_loss

    _fp64_rmsnorm(monkeypatch)
    learner = make_tiny_model(40, hidden_size=16, layers=3, heads=2, kv_heads=2, intermediate=32).double()
    assert len(alignment_parameters(learner)) == 18  # the last 2 of 3 layers: 9 tensors each
    designer = TaskDesigner(40, 0.5, DesignerConfig(layers=1, hidden=16, heads=2, intermediate=16)).double()
    with torch.no_grad():
        for p in designer.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    params = [p for _, p in alignment_parameters(learner)]
    g_down = feedback_gradient(learner, _batch(40, seed=1), params)
    batch = _batch(40, seed=2)
    phi = list(designer.parameters())

    def objective() -> torch.Tensor:
        return meta_loss(learner, designer, batch, params, g_down, k=6, align=align, reg_weight=0.1)[0]

    grads = torch.autograd.grad(objective(), phi)
    assert all(p.grad is None for p in learner.parameters())  # the meta step leaves the learner alone
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(phi)]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    eps = 1e-4
    with torch.no_grad():
        for p, d in zip(phi, direction):
            p.add_(eps * d)
    plus = objective().detach()  # g_pre itself needs autograd, so no torch.no_grad() around these
    with torch.no_grad():
        for p, d in zip(phi, direction):
            p.sub_(2 * eps * d)
    minus = objective().detach()
    numeric = (plus - minus) / (2 * eps)
    assert abs(float(analytic)) > 1e-6
    assert float(analytic) == pytest.approx(float(numeric), rel=2e-3)


def test_alignment_subset_is_the_lora_matrices_of_the_last_two_layers(tiny_tokenizer):
    from lifecycle.methods.vpretrain.options import VPretrainOptions
    from lifecycle.methods.vpretrain.pipeline import apply_lora
    from lifecycle.methods.vpretrain.value import alignment_parameters

    opts = VPretrainOptions(model="m", data="d", output="o", feedback="f")
    model = apply_lora(make_tiny_model(len(tiny_tokenizer), layers=3), opts)
    names = [n for n, _ in alignment_parameters(model)]
    assert names and all("lora_" in n for n in names)
    assert {n.split("layers.")[1].split(".")[0] for n in names} == {"1", "2"}
    assert len(names) == 2 * 7 * 2  # 2 layers x 7 linears x (A, B)


def test_jvp_route_gives_the_same_meta_gradient_as_the_double_backward():
    from lifecycle.methods.vpretrain.designer import DesignerConfig, TaskDesigner
    from lifecycle.methods.vpretrain.value import alignment_parameters, feedback_gradient, meta_loss, meta_loss_jvp

    learner = make_tiny_model(40, hidden_size=16, layers=3, heads=2, kv_heads=2, intermediate=32).double()
    designer = TaskDesigner(40, 0.5, DesignerConfig(layers=1, hidden=16, heads=2, intermediate=16)).double()
    with torch.no_grad():
        for p in designer.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    named = alignment_parameters(learner)
    params = [p for _, p in named]
    g_down = feedback_gradient(learner, _batch(40, seed=1), params)
    batch, phi = _batch(40, seed=2), list(designer.parameters())
    hvp, parts = meta_loss(learner, designer, batch, params, g_down, k=6, align="dot", reg_weight=0.1)
    jvp, jparts = meta_loss_jvp(learner, designer, batch, named, g_down, k=6, reg_weight=0.1)
    assert jparts["value"] == pytest.approx(parts["value"], rel=1e-6)
    for a, b in zip(torch.autograd.grad(hvp, phi), torch.autograd.grad(jvp, phi)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12)


# --- on the engine -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream(tiny_corpus, tiny_tokenizer):
    from lifecycle.data import pack

    return pack(tiny_corpus, tiny_tokenizer, 24, val_fraction=0.05, max_train_tokens=4000)


@pytest.fixture(scope="module")
def feedback(tmp_path_factory, tiny_tokenizer):
    from lifecycle.methods.vpretrain.pipeline import load_feedback

    return load_feedback(str(_feedback_file(tmp_path_factory.mktemp("fb"))), tiny_tokenizer, 48)


def _hooks(vocab: int, feedback, **kw):
    from lifecycle.methods.vpretrain.designer import DesignerConfig, TaskDesigner
    from lifecycle.methods.vpretrain.training import Schedule, VPretrainHooks

    designer = TaskDesigner(vocab, 0.5, DesignerConfig(layers=1, hidden=16, heads=2, intermediate=16), max_positions=64)
    return VPretrainHooks(mode="designer", k=8, schedule=Schedule(every=3, burn_in=2), designer=designer,
                          feedback=feedback, designer_lr=1e-2, feedback_batch_size=2, **kw)


def _cfg(**kw):
    from lifecycle.train.engine import TrainConfig

    base = dict(steps=9, lr=1e-3, warmup_steps=0, micro_batch_size=2, eval_every=0, log_every=1, eval_blocks=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("route", ["hvp", "jvp"])
def test_designer_updates_exactly_every_r_steps_after_the_burn_in(tmp_path, stream, feedback, tiny_tokenizer, route):
    from lifecycle.train.engine import train

    state = _hooks(len(tiny_tokenizer), feedback, meta_gradient=route, align="dot" if route == "jvp" else "cosine")
    before = {k: v.clone() for k, v in state.designer.state_dict().items()}
    train(make_tiny_model(len(tiny_tokenizer)), stream, _cfg(), tmp_path / "run", hooks=state.hooks(), progress=False)
    assert state.updated_at == [2, 5, 8]  # burn-in 2, then every 3 (0-based learner steps)
    updates = [r for r in state.rows if r["kind"] == "designer"]
    assert [r["step"] for r in updates] == [3, 6, 9]
    shaped = [r for r in state.rows if r["kind"] == "targets"]
    assert [r["mass_off_true"] for r in shaped[:2]] == [0.0, 0.0]  # burn-in: the true tokens
    assert all(r["mass_off_true"] > 0 for r in shaped[2:])
    after = state.designer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_equals_an_uninterrupted_run_designer_included(tmp_path, stream, feedback, tiny_tokenizer):
    from lifecycle.train.engine import train

    vocab = len(tiny_tokenizer)
    cfg = _cfg(save_every=4)
    full = _hooks(vocab, feedback)
    full_result = train(make_tiny_model(vocab), stream, cfg, tmp_path / "full", hooks=full.hooks(), progress=False)

    crashed = _hooks(vocab, feedback)
    hooks = crashed.hooks()
    inner = hooks.compute_loss

    def crash_at_step_6(model, batch, outputs, indices, step):
        if step == 6:
            raise KeyboardInterrupt  # after the step-4 checkpoint and the step-5 designer update
        return inner(model, batch, outputs, indices, step)

    hooks.compute_loss = crash_at_step_6
    with pytest.raises(KeyboardInterrupt):
        train(make_tiny_model(vocab), stream, cfg, tmp_path / "part", hooks=hooks, progress=False)
    resumed = _hooks(vocab, feedback)  # fresh designer and optimizer: all it knows comes from the checkpoint
    resumed_result = train(make_tiny_model(vocab, seed=9), stream, cfg, tmp_path / "part", hooks=resumed.hooks(),
                           resume="strict", progress=False)
    assert resumed.updated_at == full.updated_at == [2, 5, 8]
    assert resumed.rows == full.rows
    for key, value in full.designer.state_dict().items():
        assert torch.equal(value, resumed.designer.state_dict()[key]), key
    for key, value in full_result.model.state_dict().items():
        assert torch.equal(value, resumed_result.model.state_dict()[key]), key


def test_uniform_and_self_baselines_move_a_fixed_share_of_mass(tmp_path, stream, tiny_tokenizer):
    from lifecycle.methods.vpretrain.training import Schedule, VPretrainHooks
    from lifecycle.train.engine import train

    for mode in ("uniform", "self"):
        state = VPretrainHooks(mode=mode, k=8, schedule=Schedule(), fixed_alpha=0.2)
        train(make_tiny_model(len(tiny_tokenizer)), stream, _cfg(steps=2), tmp_path / mode, hooks=state.hooks(),
              progress=False)
        gates = [r["gate_mean"] for r in state.rows]
        assert gates == pytest.approx([0.2, 0.2])
        assert all(0 < r["mass_off_true"] < 0.2 for r in state.rows)


# --- the command -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learner(tmp_path_factory, tiny_tokenizer):
    from lifecycle.model.io import save_checkpoint

    model = make_tiny_model(len(tiny_tokenizer), seed=3)
    return save_checkpoint(model, tiny_tokenizer, tmp_path_factory.mktemp("vp-src") / "tiny", lineage={"command": "test"})


def _args(learner, tmp_path, *extra):
    stream = tmp_path / "stream.jsonl"
    if not stream.exists():
        rows = [json.dumps({"prompt": f"Question: {i} times two?\nAnswer:", "completion": f"{i} times two is {2 * i}."})
                for i in range(40)]
        stream.write_text("\n".join(rows) + "\n")
    feedback = tmp_path / "feedback.jsonl"
    if not feedback.exists():
        _feedback_file(tmp_path)
    return ["vpretrain", "--model", str(learner), "--data", str(stream), "--feedback", str(feedback),
            "-o", str(tmp_path / "out"), "--steps", "4", "v-pretraining.k=8", "v-pretraining.burn_in=1",
            "v-pretraining.every=2", "v-pretraining.feedback_batch_size=2", "v-pretraining.designer.hidden=16",
            "v-pretraining.designer.layers=1", "train.micro_batch_size=2", "block_size=48", *extra]


def test_cli_end_to_end_writes_learner_designer_and_metrics(learner, tmp_path, tiny_tokenizer):
    import subprocess
    import sys

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from conftest import cli_env

    # One thread: this machine's cores are shared, and oversubscribed threads make a tiny run crawl.
    proc = subprocess.run([sys.executable, "-m", "lifecycle", *_args(learner, tmp_path)], capture_output=True,
                          text=True, timeout=600, env=cli_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(folder)  # plain HF checkpoint: LoRA merged
    assert not any("lora" in n for n, _ in model.named_parameters())
    source = AutoModelForCausalLM.from_pretrained(learner)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    weights = load_file(str(folder / "designer" / "model.safetensors"))
    assert weights and json.loads((folder / "designer" / "config.json").read_text())["tokenizer"]
    metrics = json.loads((folder / "vpretrain_metrics.json").read_text())
    assert [r["step"] for r in metrics["designer_updates"]] == [2, 4]
    assert {"value", "cosine", "gate_mean", "mass_off_true"} <= set(metrics["designer_updates"][0])
    assert len(metrics["targets"]) == 4
    assert (folder / "vpretrain.png").stat().st_size > 0
    lineage = json.loads((folder / "lifecycle.json").read_text())
    assert lineage["data"]["feedback"]["fingerprint"]
    assert not (tmp_path / ".out.run").exists()


@pytest.mark.parametrize("extra, message", [
    (["v-pretraining.k=100000"], "larger than the vocabulary"),
    (["v-pretraining.alpha_max=1.5"], "alpha_max"),
    (["--feedback", "EMPTY"], "no examples"),
    (["--feedback", "MISMATCHED"], "has no 'prompt' field"),
    (["--data", "shakespeare", "mix=wikitext"], "mix adds a general corpus to a prompt/completion stream"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, learner, tmp_path, extra, message):
    from lifecycle.boundary import run_guarded
    from lifecycle.cli import app

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "mismatched.jsonl").write_text(json.dumps({"text": "no fields here"}) + "\n")
    extra = [{"EMPTY": str(tmp_path / "empty.jsonl"), "MISMATCHED": str(tmp_path / "mismatched.jsonl")}.get(a, a)
             for a in extra]
    code = run_guarded(app, _args(learner, tmp_path, *extra))  # the CLI's own error boundary, in-process
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code != 0
    assert message in out, out
    assert len([line for line in out.strip().splitlines() if line.strip()]) == 1, out
    assert not (tmp_path / "out").exists()


def test_v_pretraining_without_feedback_is_refused(learner, tmp_path):
    from lifecycle.commands.vpretrain import VPretrainOptions, preflight_vpretrain

    opts = VPretrainOptions(model=str(learner), data="shakespeare", output=str(tmp_path / "o"))
    with pytest.raises(LifecycleError, match="needs --feedback"):
        preflight_vpretrain(opts)


def test_saved_designer_loads_back_and_another_tokenizers_designer_is_refused(capsys, learner, tmp_path):
    from lifecycle.boundary import run_guarded
    from lifecycle.cli import app
    from lifecycle.methods.vpretrain.designer import DesignerConfig, TaskDesigner
    from lifecycle.methods.vpretrain.report import load_designer, save_designer

    designer = TaskDesigner(50, 0.4, DesignerConfig(layers=1, hidden=16, heads=2, intermediate=16), seed=4)
    save_designer(designer, tmp_path / "earlier", "fingerprint-a")
    again = load_designer(tmp_path / "earlier", "fingerprint-a", 0.4, 64)
    for key, value in designer.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    with pytest.raises(LifecycleError, match="another tokenizer"):
        load_designer(tmp_path / "earlier", "fingerprint-b", 0.4, 64)

    code = run_guarded(app, _args(learner, tmp_path, f"v-pretraining.designer_init={tmp_path / 'earlier'}"))
    captured = capsys.readouterr()
    assert code != 0 and "another tokenizer" in captured.err + captured.out
    assert not (tmp_path / "out").exists()


# --- the stream mixed with a general corpus ------------------------------------------------------------

def test_general_corpus_blocks_join_the_supervised_stream_at_the_given_share(tmp_path, tiny_corpus, tiny_tokenizer):
    from lifecycle.data import load_supervised
    from lifecycle.data.examples import IGNORE_INDEX
    from lifecycle.methods.vpretrain.mixing import loss_tokens, mix_general_corpus

    _args(None, tmp_path)  # writes stream.jsonl
    data = load_supervised(str(tmp_path / "stream.jsonl"), tiny_tokenizer, 48, val_fraction=0.1)
    mixed = mix_general_corpus(data, tiny_corpus, tiny_tokenizer, 0.4)
    n = data.num_train
    extra = mixed.num_train - n
    assert extra >= 1 and mixed.num_validation == data.num_validation
    share = 1 - loss_tokens(data.train_examples) / loss_tokens(mixed.train_examples)
    piece = round(float(data.train_examples.lengths.float().mean()))  # the stream's mean example length
    assert mixed.describe()["mix"]["block_size"] == piece < 48
    assert 0.4 <= share < 0.4 + piece / loss_tokens(mixed.train_examples)  # at most one piece more than asked
    assert mixed.describe()["mix"]["loss_token_share"] == pytest.approx(share, abs=1e-4)
    for key, value in data.train_batch(torch.arange(n)).items():  # the prompt/completion examples are untouched
        assert torch.equal(mixed.train_batch(torch.arange(n))[key], value)
    block = mixed.train_batch(torch.tensor([n]))
    assert block["input_ids"].shape == (1, piece) and int(block["attention_mask"].sum()) == piece
    assert block["labels"][0, 0] == IGNORE_INDEX and torch.equal(block["labels"][0, 1:], block["input_ids"][0, 1:])
    assert mixed.fingerprint != data.fingerprint
    assert mixed.fingerprint != mix_general_corpus(data, tiny_corpus, tiny_tokenizer, 0.6).fingerprint


def test_mix_needs_a_prompt_completion_stream(learner, tmp_path):
    from lifecycle.commands.vpretrain import VPretrainOptions, preflight_vpretrain

    opts = VPretrainOptions(model=str(learner), data="shakespeare", mix="wikitext", method="ntp", output=str(tmp_path / "o"))
    with pytest.raises(LifecycleError, match="prompt/completion stream"):
        preflight_vpretrain(opts)


# --- resume: the method's own settings -------------------------------------------------------------------

def _run_cli(capsys, args):
    from lifecycle.boundary import run_guarded
    from lifecycle.cli import app

    code = run_guarded(app, args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_resume_of_a_run_folder_with_other_method_settings_is_refused(learner, tmp_path, tiny_tokenizer):
    from types import SimpleNamespace

    from lifecycle.methods.vpretrain.options import VPretrainOptions
    from lifecycle.methods.vpretrain.pipeline import vpretrain_model
    from lifecycle.model.io import load_model

    _args(learner, tmp_path)
    values = dict(model=str(learner), data=str(tmp_path / "stream.jsonl"), feedback=str(tmp_path / "feedback.jsonl"),
                  output=str(tmp_path / "out"), block_size=48, lora={"rank": 0},
                  train={"steps": 2, "micro_batch_size": 2, "save_every": 1, "eval_every": 0, "schedule": "constant"},
                  **{"v-pretraining": {"k": 8, "burn_in": 0, "every": 1, "feedback_batch_size": 2,
                                       "designer": {"hidden": 16, "layers": 1}}})
    run_dir = tmp_path / "run"

    def run(**change):
        opts = VPretrainOptions(**{**values, **change})
        return vpretrain_model(opts, load_model(str(learner)), run_dir, log=lambda _: None, progress=False)

    run()  # leaves the run folder with its checkpoints and settings
    group = values["v-pretraining"]
    with pytest.raises(LifecycleError, match=r"v-pretraining\.k: 8 in the checkpoint, 16 now"):
        run(resume=True, **{"v-pretraining": {**group, "k": 16}})
    with pytest.raises(LifecycleError, match=r"method: v-pretraining in the checkpoint, self-topk now"):
        vals = {k: v for k, v in values.items() if k != "v-pretraining"}
        VPretrainOptions(**vals)  # (validates)
        vpretrain_model(VPretrainOptions(**vals, method="self-topk", resume=True), load_model(str(learner)), run_dir,
                        log=lambda _: None, progress=False)
    _feedback_file(tmp_path, rows=5)  # same path, other content: only the fingerprint tells
    with pytest.raises(LifecycleError, match="feedback set differs"):
        run(resume=True)
    _feedback_file(tmp_path)
    assert run(resume=True, train={**values["train"], "steps": 3}).train_result.steps == 3  # same settings: resumes


def test_resume_of_a_finished_output_is_a_no_op_or_refused_naming_the_setting(capsys, learner, tmp_path):
    args = _args(learner, tmp_path, "--steps", "2", "mix=shakespeare", "mix_weight=0.5")
    code, out = _run_cli(capsys, args)
    assert code == 0, out
    folder = tmp_path / "out"
    lineage = json.loads((folder / "lifecycle.json").read_text())
    assert lineage["data"]["stream"]["mix"]["corpus"] == "shakespeare" and lineage["data"]["feedback"]["sha256"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    code, out = _run_cli(capsys, [*args, "--resume"])
    assert code == 0 and "already finished" in out, out
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    for extra, message in ((["v-pretraining.k=16"], "v-pretraining.k: 8 in the checkpoint, 16 now"),
                           (["lora.rank=4"], "lora.rank: 8 in the checkpoint, 4 now"),
                           (["--steps", "3"], "cannot be extended")):
        code, out = _run_cli(capsys, [*args, *extra, "--resume"])
        assert code != 0 and message in out and len(out.strip().splitlines()) == 1, out
    _feedback_file(tmp_path, rows=5)
    code, out = _run_cli(capsys, [*args, "--resume"])
    assert code != 0 and "another feedback set" in out, out
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_stream_loses_the_feedback_examples(tmp_path, tiny_tokenizer):
    from lifecycle.data import load_supervised
    from lifecycle.methods.vpretrain.mixing import drop_feedback_examples
    from lifecycle.methods.vpretrain.pipeline import load_feedback

    _args(None, tmp_path)  # stream.jsonl: "Question: {i} times two?" for i < 40
    rows = [json.loads(line) for line in (tmp_path / "stream.jsonl").read_text().splitlines()]
    (tmp_path / "fb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:8]))
    data = load_supervised(str(tmp_path / "stream.jsonl"), tiny_tokenizer, 48, val_fraction=0.0)
    feedback = load_feedback(str(tmp_path / "fb.jsonl"), tiny_tokenizer, 64)
    kept = drop_feedback_examples(data, feedback)
    assert kept.num_train == 35 and kept.describe()["feedback_examples_dropped"] == 5
    texts = {tiny_tokenizer.decode(kept.train_batch(torch.tensor([i]))["input_ids"][0]) for i in range(35)}
    assert not any(r["completion"] in t for r in rows[3:8] for t in texts)
    assert sum(r["completion"] in t for r in rows for t in texts) == 35
    assert kept.fingerprint != data.fingerprint
    with pytest.raises(LifecycleError, match="every example"):
        drop_feedback_examples(load_supervised(str(tmp_path / "fb.jsonl"), tiny_tokenizer, 48, val_fraction=0.0), feedback)
