"""The training engine: schedules, hooks, checkpoints, exact resume (also after a hard kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lifecycle.data import pack
from lifecycle.errors import LifecycleError
from lifecycle.train.engine import TrainConfig, TrainHooks, lr_at, train

from conftest import make_tiny_model


def test_schedules():
    cos = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.1)
    assert lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(99, cos) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cos) >= lr_at(s + 1, cos) for s in range(10, 99))
    wsd = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(90, wsd) == pytest.approx(0.5)
    assert TrainConfig(steps=10, schedule="constant", warmup_steps=0, lr=0.5) and lr_at(7, TrainConfig(steps=10, schedule="constant", warmup_steps=0, lr=0.5)) == 0.5


def _setup(tiny_corpus, tiny_tokenizer, seed=0):
    data = pack(tiny_corpus, tiny_tokenizer, 32, val_fraction=0.1)
    model = make_tiny_model(len(tiny_tokenizer), seed=seed)
    return model, data


def test_training_reduces_loss_and_logs(tmp_path, tiny_corpus, tiny_tokenizer):
    model, data = _setup(tiny_corpus, tiny_tokenizer)
    cfg = TrainConfig(steps=40, lr=3e-3, warmup_steps=5, micro_batch_size=8, eval_every=20, log_every=5)
    result = train(model, data, cfg, tmp_path / "run", progress=False)
    assert result.history[0]["train_loss"] > result.final_train_loss
    assert result.final_val_loss is not None and result.final_val_loss < 6.5
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and "val_loss" in rows[-1]
    assert result.tokens_seen == 40 * 8 * 32


def test_hooks_are_called(tmp_path, tiny_corpus, tiny_tokenizer):
    model, data = _setup(tiny_corpus, tiny_tokenizer)
    seen = {"extra": 0, "backward": 0, "step": []}

    def extra_loss(m, batch, out):
        seen["extra"] += 1
        return 0.0 * out.logits.sum()

    def after_backward(m):
        seen["backward"] += 1
        m.model.embed_tokens.weight.grad.zero_()  # e.g. a method that freezes embeddings by masking

    embed_before = model.model.embed_tokens.weight.detach().clone()
    hooks = TrainHooks(
        extra_loss=extra_loss,
        after_backward=after_backward,
        after_step=lambda m, s: seen["step"].append(s),
        trainable_parameters=lambda m: [p for n, p in m.named_parameters() if "embed" in n or "layers.0" in n],
    )
    cfg = TrainConfig(steps=4, grad_accum=2, micro_batch_size=4, warmup_steps=0, weight_decay=0.0, eval_every=0)
    train(model, data, cfg, tmp_path / "run", hooks=hooks, progress=False)
    assert seen == {"extra": 8, "backward": 4, "step": [1, 2, 3, 4]}
    assert torch.equal(model.model.embed_tokens.weight, embed_before)


def test_resume_matches_uninterrupted(tmp_path, tiny_corpus, tiny_tokenizer):
    cfg = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, micro_batch_size=4, eval_every=0, save_every=5)
    full_model, data = _setup(tiny_corpus, tiny_tokenizer)
    full = train(full_model, data, cfg, tmp_path / "full", progress=False)

    part_model, _ = _setup(tiny_corpus, tiny_tokenizer)
    train(part_model, data, cfg.model_copy(update={"steps": 12}), tmp_path / "part", progress=False)
    # Simulate a crash after step 10: drop everything but the step-10 checkpoint, resume from a fresh model.
    assert (tmp_path / "part" / "checkpoints" / "step-10").is_dir()
    fresh, _ = _setup(tiny_corpus, tiny_tokenizer, seed=123)
    resumed = train(fresh, data, cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.final_train_loss == pytest.approx(full.final_train_loss, abs=1e-5)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_resume_from_another_runs_checkpoint_is_refused(tmp_path, tiny_corpus, tiny_tokenizer):
    model, data = _setup(tiny_corpus, tiny_tokenizer)
    train(model, data, TrainConfig(steps=6, save_every=3, micro_batch_size=4, eval_every=0), tmp_path / "run", progress=False)
    other, _ = _setup(tiny_corpus, tiny_tokenizer)
    with pytest.raises(LifecycleError, match="another run"):
        train(other, data, TrainConfig(steps=6, lr=5e-4, save_every=3, micro_batch_size=4, eval_every=0),
              tmp_path / "run", resume=True, progress=False)


def test_nan_loss_is_a_clear_error(tmp_path, tiny_corpus, tiny_tokenizer):
    model, data = _setup(tiny_corpus, tiny_tokenizer)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(LifecycleError, match="loss became nan"):
        train(model, data, TrainConfig(steps=2, micro_batch_size=2, eval_every=0), tmp_path / "run", progress=False)


def _cli_train(out, extra=(), env=None):
    args = [sys.executable, "-m", "lifecycle", "train", "--config", "micro", "--data", "shakespeare",
            "--output", str(out), "block_size=32", "max_train_tokens=40000", "train.micro_batch_size=4",
            "train.eval_every=0", "train.save_every=5", "train.steps=40", "train.lr=3e-3", *extra]
    return args


def test_killed_train_run_resumes_to_the_same_final_loss(tmp_path):
    """Kill a CLI training run with SIGKILL mid-way; --resume must land on the uninterrupted result."""
    env = dict(os.environ)
    full = subprocess.run(_cli_train(tmp_path / "full"), capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr[-2000:]

    victim = tmp_path / "victim"
    proc = subprocess.Popen(_cli_train(victim), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpts = tmp_path / ".victim.run" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "step-15").is_dir():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "config.json").exists(), "killed run must not leave a finished-looking output"
    resumed = subprocess.run(_cli_train(victim, ["--resume"]), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "lifecycle.json").read_text())["metrics"]["final_train_loss"]
    b = json.loads((victim / "lifecycle.json").read_text())["metrics"]["final_train_loss"]
    assert b == pytest.approx(a, abs=1e-4)


def test_tensorboard_tracking_writes_events(tmp_path, tiny_corpus, tiny_tokenizer):
    model, data = _setup(tiny_corpus, tiny_tokenizer)
    cfg = TrainConfig(steps=4, micro_batch_size=4, eval_every=0, log_every=2, report_to=["tensorboard"])
    train(model, data, cfg, tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
