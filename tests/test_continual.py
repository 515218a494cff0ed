"""lifecycle continual: OSFT's subspace guarantee, the rank rule, O-LoRA's loss, the matrix maths, the
command end to end on two tiny tasks, resume after an interrupt, and bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import cli_env, make_tiny_model
from lifecycle.errors import LifecycleError, TrainingInterrupted

TASKS = "copa,rte"  # short prompts: fast to train and score
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_tokenizer):
    from lifecycle.model.io import save_checkpoint

    folder = tmp_path_factory.mktemp("c-src") / "tiny"
    return save_checkpoint(make_tiny_model(len(tiny_tokenizer), seed=5), tiny_tokenizer, folder, lineage={"command": "test"})


def _values(source, output, **kw) -> dict:
    values = {"model": str(source), "tasks": TASKS, "output": str(output), "limit": 4, "max_train_examples": 16,
              "max_length": 96, "train": {"steps": 3, "micro_batch_size": 4}, "method": "osft"}
    values.update(kw)
    return values


def _run(values: dict):
    from lifecycle.commands import load_all
    from lifecycle.options import build_options
    from lifecycle.preflight import run_preflight

    opts = build_options("continual", values)
    run_preflight(load_all()["continual"], opts)
    return load_all()["continual"].run(opts)


# -- OSFT ------------------------------------------------------------------------------------------


def test_gradient_projection_is_orthogonal_to_the_top_subspace():
    from lifecycle.methods.continual.osft import OSFTLinear

    torch.manual_seed(0)
    layer = OSFTLinear(nn.Linear(12, 20, bias=False), k=5)
    layer.U_low.grad = torch.randn_like(layer.U_low)
    layer.V_low.grad = torch.randn_like(layer.V_low)
    assert (layer.U_high.T @ layer.U_low.grad).abs().max() > 1e-2  # not orthogonal before
    layer.project_gradients()
    assert (layer.U_high.T @ layer.U_low.grad).abs().max() < 1e-5
    assert (layer.V_low.grad @ layer.V_high.T).abs().max() < 1e-5


def _osft_train(tiny_tokenizer, tmp_path, method: str, tasks: str = "copa"):
    """Three engine steps of ``method`` per task (the pipeline's boundary calls, no scoring) from a tiny
    model; returns (model before, model after, the method object, losses added by extra_loss)."""
    import copy

    from lifecycle.methods.continual.base import TaskContext
    from lifecycle.methods.continual.options import ContinualOptions
    from lifecycle.methods.continual.pipeline import load_task_data
    from lifecycle.methods.continual.tasks import resolve_task
    from lifecycle.train.engine import train

    opts = ContinualOptions.model_validate({"model": "x", "tasks": tasks, "output": str(tmp_path / "o"), "method": method,
                                            "max_train_examples": 16, "max_length": 96,
                                            "train": {"steps": 3, "lr": 1e-2, "micro_batch_size": 4}})
    model = make_tiny_model(len(tiny_tokenizer), seed=1)
    before = copy.deepcopy(model)
    specs = [resolve_task(t) for t in opts.tasks]
    datas = [load_task_data(t, tiny_tokenizer, opts) for t in specs]
    m = opts.registered_method.run(opts)
    extra: list[float] = []
    for i in range(len(specs)):
        ctx = TaskContext(i, specs, model, tiny_tokenizer, datas[i], datas[i - 1] if i else None, datas[: i + 1], opts,
                          log=lambda s: None)
        hooks = m.begin_task(ctx)
        if hooks is not None and hooks.extra_loss is not None:
            inner = hooks.extra_loss

            def recording(mod, batch, out, inner=inner):
                value = inner(mod, batch, out)
                extra.append(0.0 if value is None else float(value.detach()))
                return value
            hooks.extra_loss = recording
        cfg = m.train_config(opts.train.model_copy(), ctx)
        ctx.model = train(ctx.model, m.train_data(ctx), cfg, tmp_path / f"run{i}", hooks=hooks, progress=False).model
        m.end_task(ctx)
        model = ctx.model
    return before, model, m, extra


def test_osft_keeps_each_matrix_top_subspace_unchanged(tiny_tokenizer, tmp_path):
    from lifecycle.methods.continual.osft import OSFTLinear, target_linears

    before, after, method, _ = _osft_train(tiny_tokenizer, tmp_path / "osft", "osft")
    ranks = method.stats["boundaries"][0]["preserved_ranks"]
    assert not any(isinstance(getattr(p, n), OSFTLinear) for _, p, n in target_linears(after))  # dense again
    moved = 0.0
    for (_, p0, name), (_, p1, _), k in zip(target_linears(before), target_linears(after), ranks):
        w0, w1 = getattr(p0, name).weight.detach(), getattr(p1, name).weight.detach()
        U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
        delta = w1 - w0
        moved = max(moved, float(delta.abs().max()))
        assert k >= 1
        assert (U[:, :k].T @ delta).abs().max() < 1e-5, name  # the top-k left singular directions see no change
        assert (delta @ Vh[:k].T).abs().max() < 1e-5, name  # nor do the right ones
    assert moved > 1e-3  # it did train


def test_sequential_fine_tuning_does_move_the_top_subspace(tiny_tokenizer, tmp_path):
    """The check above can fail: without the projections the top subspace changes."""
    before, after, _, _ = _osft_train(tiny_tokenizer, tmp_path / "seq", "seq-ft")
    w0 = before.model.layers[0].self_attn.q_proj.weight.detach()
    w1 = after.model.layers[0].self_attn.q_proj.weight.detach()
    U, _, _ = torch.linalg.svd(w0, full_matrices=False)
    assert (U[:, :8].T @ (w1 - w0)).abs().max() > 1e-4


def test_rank_rule_is_monotone_in_similarity_and_grows_per_task():
    from lifecycle.methods.continual.osft import preserved_fractions

    importance = [0.2, 0.9, 0.5, 0.7]
    fr = preserved_fractions(importance, budget=0.5, spread=0.2, cap=0.9)
    order = sorted(range(4), key=lambda i: importance[i])
    assert [fr[i] for i in order] == sorted(fr)
    assert fr[0] == pytest.approx(0.4) and fr[1] == pytest.approx(0.6)  # mrr and trr
    later = preserved_fractions(importance, budget=0.7, spread=0.2, cap=0.9)
    assert all(b > a for a, b in zip(fr, later))
    assert preserved_fractions([0.3, 0.3], 0.5, 0.2, 0.9) == [0.5, 0.5]


# -- O-LoRA and metrics ----------------------------------------------------------------------------


def test_olora_orthogonality_loss_is_zero_only_for_orthogonal_a():
    from lifecycle.methods.continual.lora import orthogonality_loss

    q, _ = torch.linalg.qr(torch.randn(16, 16))
    old, new = q[:4].clone(), q[4:8].clone()
    assert float(orthogonality_loss([old], new)) < 1e-5
    assert float(orthogonality_loss([old], new + 0.1 * old)) > 0.1
    assert float(orthogonality_loss([], new)) == 0.0


def test_olora_penalises_overlap_with_the_first_adapter_and_exports_a_plain_model(tiny_tokenizer, tmp_path):
    _, after, method, extra = _osft_train(tiny_tokenizer, tmp_path, "olora", tasks="copa,rte")
    assert not any("lora" in n for n, _ in after.named_parameters())  # merged: a plain model
    assert all(len(v) == 2 for v in method.old_a.values()) and method.old_a
    assert extra[:3] == [0.0, 0.0, 0.0] and all(v > 0 for v in extra[3:])  # no earlier A on task 1


def test_slca_backbone_moves_far_less_than_under_sequential_fine_tuning(tiny_tokenizer, tmp_path):
    before, slca, _, _ = _osft_train(tiny_tokenizer, tmp_path / "slca", "slca")
    _, seq, _, _ = _osft_train(tiny_tokenizer, tmp_path / "seq", "seq-ft")

    def moved(model, name):
        return float((dict(model.named_parameters())[name] - dict(before.named_parameters())[name]).abs().max())

    backbone = "model.layers.0.mlp.up_proj.weight"
    assert moved(slca, backbone) < 0.05 * moved(seq, backbone)
    assert moved(slca, "model.embed_tokens.weight") > 0.3 * moved(seq, "model.embed_tokens.weight")  # the (tied) head


def test_ewc_penalty_starts_on_the_second_task(tiny_tokenizer, tmp_path):
    _, _, method, extra = _osft_train(tiny_tokenizer, tmp_path, "ewc", tasks="copa,rte")
    assert method.fisher and all(float(f.sum()) >= 0 for f in method.fisher.values())
    assert len(extra) == 3 and extra[0] == 0.0 and extra[-1] > 0  # task 1 has no hooks; task 2 drifts from θ*


def test_accuracy_matrix_metrics_on_a_known_matrix():
    from lifecycle.methods.continual import metrics

    R = [[0.8, 0.3, 0.2], [0.6, 0.9, 0.4], [0.5, 0.7, 0.95]]
    zero = [0.1, 0.2, 0.3]
    s = metrics.summary(R, zero)
    assert s["AA"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert s["BWT"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert s["FWT"] == pytest.approx(((0.3 - 0.2) + (0.4 - 0.3)) / 2)
    assert s["forgetting"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.7)) / 2)
    seen_only = [[0.8, None, None], [0.6, 0.9, None], [0.5, 0.7, 0.95]]
    assert metrics.summary(seen_only, zero)["FWT"] is None  # needs the off-diagonal scores
    assert metrics.summary(seen_only)["BWT"] == pytest.approx(s["BWT"])


# -- the command -----------------------------------------------------------------------------------


def test_cli_end_to_end_two_tasks(source, tmp_path):
    # In process through the real Typer app (a subprocess would spend most of a minute importing lm-eval).
    from typer.testing import CliRunner

    from lifecycle.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["continual", "-m", str(source), "--tasks", TASKS, "--method", "osft", "-o", str(out),
                                      "--steps", "2", "--limit", "4", "max_train_examples=8", "max_length=96",
                                      "train.micro_batch_size=4"])
    assert result.exit_code == 0, (result.output[-2000:], result.exception)
    report = json.loads((out / "continual_report.json").read_text())
    assert report["tasks"] == ["copa", "rte"]
    R = report["accuracy_matrix"]
    assert len(R) == 2 and R[0][1] is None and all(0 <= v <= 1 for v in (R[0][0], R[1][0], R[1][1]))
    assert report["BWT"] == pytest.approx(R[1][0] - R[0][0])
    assert (out / "accuracy_matrix.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    for folder in (out, out / "tasks" / "01-copa", out / "tasks" / "02-rte"):
        AutoModelForCausalLM.from_pretrained(folder)  # a plain HF checkpoint, every one
    card = json.loads((out / "tasks" / "01-copa" / "lifecycle.json").read_text())
    assert card["metrics"]["tasks"] == ["copa", "rte"] and card["metrics"]["trained"] == ["copa"]
    assert not (tmp_path / ".out.run").exists()


def test_resume_after_an_interrupt_gives_the_same_matrix(source, tmp_path, monkeypatch):
    import lifecycle.methods.continual.pipeline as pipeline
    from lifecycle.model.io import load_model

    values = dict(zero_shot=False, score_all=True)
    whole = _run(_values(source, tmp_path / "whole", **values))
    expected = json.loads((whole / "continual_report.json").read_text())["accuracy_matrix"]

    real_train = pipeline.train

    def interrupting(model, data, cfg, run_dir, *, hooks=None, **kw):
        if run_dir.name == "train-01":  # the second task: SIGINT after its first step
            inner = hooks.after_step

            def after_step(m, step):
                if inner is not None:
                    inner(m, step)
                if step == 1:
                    os.kill(os.getpid(), signal.SIGINT)
            hooks.after_step = after_step
        return real_train(model, data, cfg, run_dir, hooks=hooks, **kw)

    monkeypatch.setattr(pipeline, "train", interrupting)
    with pytest.raises(TrainingInterrupted):
        _run(_values(source, tmp_path / "cut", **values))
    monkeypatch.setattr(pipeline, "train", real_train)
    run_dir = tmp_path / ".cut.run"
    assert (run_dir / "checkpoints").exists() is False and list((run_dir / "train-01" / "checkpoints").glob("step-1"))

    with pytest.raises(LifecycleError, match="tasks"):  # another task list is refused
        _run(_values(source, tmp_path / "cut", tasks="rte,copa", resume=True, **values))
    resumed = _run(_values(source, tmp_path / "cut", resume=True, **values))
    assert json.loads((resumed / "continual_report.json").read_text())["accuracy_matrix"] == expected
    a, b = load_model(str(whole)).model, load_model(str(resumed)).model
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


# -- bad inputs ------------------------------------------------------------------------------------


def _task_folder(tmp_path, name, *, test=True, labels=("yes", "no")):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    rows = "".join(json.dumps({"sentence": f"item {i}", "label": labels[i % 2] if labels else "yes"}) + "\n" for i in range(6))
    (folder / "train.jsonl").write_text(rows)
    if test:
        (folder / "test.jsonl").write_text(rows)
    if labels:
        (folder / "labels.json").write_text(json.dumps(list(labels)))
    return folder


def test_cli_unknown_task_is_one_line_and_writes_nothing(source, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lifecycle", "continual", "-m", str(source), "--tasks", "copa,nosuchtask",
                           "-o", str(out)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if "WARNING" not in ln]
    assert len(lines) == 1 and "nosuchtask" in lines[0]
    assert not out.exists()


def _qa_file(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows))
    return path


@pytest.mark.parametrize("case, match", [
    ("no-test", "test.jsonl"),
    ("file-no-test", "no test split"),
    ("bad-labels", "at least two"),
    ("same-name", "two tasks are named"),
    ("repeated", "repeated"),
    ("rank", "preserved_rank"),
])
def test_bad_inputs_are_refused_before_any_work(source, tmp_path, case, match):
    def bad_labels():
        folder = _task_folder(tmp_path, "t4")
        (folder / "labels.json").write_text(json.dumps(["only"]))
        return str(folder)

    tasks = {"no-test": lambda: str(_task_folder(tmp_path, "t1", test=False)),
             "file-no-test": lambda: str(_qa_file(tmp_path / "qa.jsonl", [("1+1=", "2")])),
             "bad-labels": bad_labels,
             "same-name": lambda: f"{_task_folder(tmp_path / 'a', 'x')},{_task_folder(tmp_path / 'b', 'x')}",
             "repeated": lambda: "copa,rte,copa", "rank": lambda: TASKS}[case]()
    extra = {"osft": {"preserved_rank": 10_000}} if case == "rank" else {}
    with pytest.raises(LifecycleError, match=match) as info:
        _run(_values(source, tmp_path / "out", tasks=tasks, **extra))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.run").exists()


def test_labels_the_tokenizer_cannot_tell_apart_are_refused(tmp_path):
    from lifecycle.methods.continual.tasks import check_labels_distinct, resolve_task

    class Lowercasing:  # a tokenizer that folds case: "Yes" and "yes" become the same tokens
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text.lower()]}

    task = resolve_task(str(_task_folder(tmp_path, "t3", labels=("Yes", "yes"))))
    with pytest.raises(LifecycleError, match="cannot tell them apart"):
        check_labels_distinct(task, Lowercasing())
    check_labels_distinct(resolve_task("copa"), Lowercasing())  # A / B are fine


def test_every_continual_method_is_registered_with_its_paper():
    from lifecycle.methods.registry import methods_for

    methods = methods_for("continual")
    assert set(methods) == {"osft", "olora", "seq-ft", "seq-lora", "l2", "ewc", "replay", "slca", "multitask"}
    assert all(m.paper for m in methods.values())


# -- prompt/completion tasks -------------------------------------------------------------------------

QA = [(f"Q{i}: what follows {w}?", a) for i, (w, a) in enumerate([("thou", "art"), ("good", "morrow"), ("my", "lord"),
                                                                    ("fair", "lady")])]


def test_prompt_completion_tasks_resolve_with_their_test_split(tmp_path):
    from lifecycle.methods.continual.tasks import resolve_task

    train = _qa_file(tmp_path / "qa_train.jsonl", QA)
    _qa_file(tmp_path / "qa_test.jsonl", QA)
    task = resolve_task(str(train))
    assert (task.kind, task.name, task.test_file.name, task.plain_file) == ("completion", "qa_train", "qa_test.jsonl", True)
    other = _qa_file(tmp_path / "more.jsonl", QA)
    _qa_file(tmp_path / "more.test.jsonl", QA)
    assert resolve_task(str(other)).test_file.name == "more.test.jsonl"
    folder = _task_folder(tmp_path, "nolabels", labels=())  # a task folder without labels.json
    assert resolve_task(str(folder)).kind == "completion"
    assert resolve_task("copa").kind == "choice"


def test_completion_column_is_greedy_exact_match(tiny_tokenizer, tmp_path):
    """Memorise four short completions (test = train here, on purpose): the column goes from 0 to 1,
    the completion NLL falls, and greedy generation reproduces every completion, as the metric claims."""
    from lifecycle.methods.continual.options import ContinualOptions
    from lifecycle.methods.continual.pipeline import load_task_data
    from lifecycle.methods.continual.tasks import resolve_task, score_tasks_detailed
    from lifecycle.train.engine import train

    path = _qa_file(tmp_path / "qa_train.jsonl", QA)
    _qa_file(tmp_path / "qa_test.jsonl", QA[:3])  # the last row is the engine's held-out split, not trained on
    task = resolve_task(str(path))
    opts = ContinualOptions.model_validate({"model": "x", "tasks": str(path), "output": str(tmp_path / "o"),
                                            "max_length": 48, "train": {"steps": 60, "lr": 1e-2, "micro_batch_size": 4}})
    model = make_tiny_model(len(tiny_tokenizer), seed=3)
    before = score_tasks_detailed(model, tiny_tokenizer, [task], limit=None)[task.name]
    model = train(model, load_task_data(task, tiny_tokenizer, opts), opts.train, tmp_path / "run", progress=False).model
    after = score_tasks_detailed(model, tiny_tokenizer, [task], limit=None)[task.name]
    assert before["acc"] == 0.0 and after["acc"] == 1.0
    assert after["completion_nll"] < 0.2 * before["completion_nll"]
    model.eval()
    for prompt, completion in QA[:3]:
        ids = tiny_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        want = tiny_tokenizer(" " + completion, add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=len(want), do_sample=False, pad_token_id=tiny_tokenizer.eos_token_id)
        assert out[0, ids.shape[1]:].tolist() == want


def test_cli_mixes_a_label_task_and_a_prompt_completion_file(source, tmp_path):
    path = _qa_file(tmp_path / "data" / "qa_train.jsonl", QA)
    _qa_file(tmp_path / "data" / "qa_test.jsonl", QA)
    out = _run(_values(source, tmp_path / "out", tasks=f"copa,{path}", method="seq-ft"))
    report = json.loads((out / "continual_report.json").read_text())
    assert report["tasks"] == ["copa", "qa_train"]
    assert report["column_metrics"]["qa_train"].startswith("exact match") and "multiple-choice" in report["column_metrics"]["copa"]
    nll = report["completion_nll_matrix"]
    assert nll[0] == [None, None] and nll[1][0] is None and nll[1][1] > 0 and report["zero_shot_completion_nll"][1] > 0
    assert all(0 <= v <= 1 for v in report["accuracy_matrix"][1])
    card = json.loads((out / "lifecycle.json").read_text())
    assert card["metrics"]["column_metrics"] == report["column_metrics"]
