"""Prompt/completion examples through the one engine: the loss is on completions, and resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from lifecycle.data import load_supervised
from lifecycle.train.engine import TrainConfig, TrainHooks, train

from conftest import make_tiny_model


@pytest.fixture(scope="module")
def qa(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("qa")
    rows = [{"prompt": f"Question {i}: what comes after {i}?", "completion": f"{i + 1}, then {i + 2}"} for i in range(64)]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_supervised(folder / "qa.jsonl", tiny_tokenizer, 48, val_fraction=0.1, use_cache=False)


def _cfg(**kw):
    base = dict(steps=8, lr=3e-3, warmup_steps=1, micro_batch_size=4, eval_every=4, log_every=1, save_every=4)
    base.update(kw)
    return TrainConfig(**base)


def test_training_on_completions_lowers_their_held_out_loss(tmp_path, qa, tiny_tokenizer):
    result = train(make_tiny_model(len(tiny_tokenizer)), qa, _cfg(steps=20, save_every=0), tmp_path / "run", progress=False)
    vals = [r["val_loss"] for r in result.history if r.get("val_loss") is not None]
    assert len(vals) >= 2 and vals[-1] < vals[0]


def test_supervised_run_resumes_exactly(tmp_path, qa, tiny_tokenizer):
    full = train(make_tiny_model(len(tiny_tokenizer)), qa, _cfg(), tmp_path / "full", progress=False)

    def crash(model, step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_tiny_model(len(tiny_tokenizer)), qa, _cfg(), tmp_path / "part", hooks=TrainHooks(after_step=crash),
              progress=False)
    resumed = train(make_tiny_model(len(tiny_tokenizer), seed=3), qa, _cfg(), tmp_path / "part", resume=True, progress=False)
    assert resumed.final_train_loss == pytest.approx(full.final_train_loss, abs=1e-5)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
