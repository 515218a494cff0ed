"""Ctrl-C and SIGTERM during training: the step finishes, a checkpoint is written, the exit code says
so, nothing half-written is left, and --resume ends on the same loss as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest


def _train_args(out, *extra):
    return [sys.executable, "-m", "lifecycle", "train", "--config", "micro", "--data", "shakespeare", "--output", str(out),
            "block_size=32", "max_train_tokens=40000", "train.micro_batch_size=4", "train.eval_every=0",
            "train.log_every=1", "train.steps=30", "train.lr=3e-3", *extra]


def _final_loss(out) -> float:
    return json.loads((out / "lifecycle.json").read_text())["metrics"]["final_train_loss"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    proc = subprocess.run(_train_args(out), capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _final_loss(out)


def _interrupt_mid_training(out, signum) -> tuple[int, str]:
    proc = subprocess.Popen(_train_args(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ))
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("train 3/"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "".join(lines)[-2000:]
    proc.send_signal(signum)
    code = proc.wait(timeout=300)
    reader.join(timeout=10)
    return code, "".join(lines)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_training_checkpoints_and_resumes_exactly(tmp_path, uninterrupted, signum, code):
    out = tmp_path / "out"
    rc, text = _interrupt_mid_training(out, signum)
    assert rc == code, text[-2000:]
    assert "Traceback" not in text
    message = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "resume with --resume" in message[0], text[-2000:]
    assert not out.exists(), "an interrupted run must not leave an output folder"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    checkpoints = list((tmp_path / ".out.run" / "checkpoints").glob("step-*"))
    assert checkpoints, "the interrupt must write a resumable checkpoint"

    resumed = subprocess.run(_train_args(out, "--resume"), capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert _final_loss(out) == pytest.approx(uninterrupted, abs=1e-4)


def test_resume_without_checkpoint_says_it_starts_fresh_and_finished_output_is_a_no_op(tmp_path):
    out = tmp_path / "out"
    args = _train_args(out, "--resume", "train.steps=3")
    first = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "starting fresh" in first.stdout + first.stderr
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    again = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stdout + again.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


# -- resume rules, in process -------------------------------------------------------------------------

from lifecycle.errors import LifecycleError  # noqa: E402


@pytest.fixture(scope="module")
def data(tiny_corpus, tiny_tokenizer):
    from lifecycle.data import pack

    return pack(tiny_corpus, tiny_tokenizer, 32, val_fraction=0.1)


def _run(data, vocab, run_dir, resume=False, **cfg):
    from conftest import make_tiny_model

    from lifecycle.train.engine import TrainConfig, train

    base = dict(lr=3e-3, warmup_steps=1, micro_batch_size=4, eval_every=0, log_every=1)
    base.update(cfg)
    return train(make_tiny_model(vocab, seed=5 if resume else 0), data, TrainConfig(**base), run_dir, resume=resume,
                 progress=False)


def test_resume_names_the_setting_that_differs(tmp_path, data, tiny_tokenizer):
    _run(data, len(tiny_tokenizer), tmp_path / "run", steps=4, save_every=2)
    with pytest.raises(LifecycleError, match=r"another run: train\.lr: 0\.003 in the checkpoint, 0\.002 now"):
        _run(data, len(tiny_tokenizer), tmp_path / "run", resume=True, steps=4, save_every=2, lr=2e-3)
    with pytest.raises(LifecycleError, match="no checkpoint"):
        _run(data, len(tiny_tokenizer), tmp_path / "empty", resume="strict", steps=4)


@pytest.mark.parametrize("schedule", ["constant", "wsd"])
def test_extending_steps_on_resume_equals_the_longer_run(tmp_path, data, tiny_tokenizer, schedule):
    vocab = len(tiny_tokenizer)
    long = _run(data, vocab, tmp_path / "long", steps=12, schedule=schedule, decay_fraction=0.25)
    _run(data, vocab, tmp_path / "short", steps=6, save_every=3, schedule=schedule, decay_fraction=0.25)
    # the 6-step run's checkpoint at step 3 is before its WSD decay (step 4): extending to 12 is exact
    extended = _run(data, vocab, tmp_path / "short", resume=True, steps=12, save_every=3, schedule=schedule,
                    decay_fraction=0.25)
    assert extended.final_train_loss == pytest.approx(long.final_train_loss, abs=1e-5)


def test_extending_a_cosine_run_is_refused_with_the_reason(tmp_path, data, tiny_tokenizer):
    _run(data, len(tiny_tokenizer), tmp_path / "run", steps=6, save_every=3)
    with pytest.raises(LifecycleError, match="cosine schedule"):
        _run(data, len(tiny_tokenizer), tmp_path / "run", resume=True, steps=12, save_every=3)
