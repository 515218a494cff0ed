"""Engine callbacks: model conversion, loss replacement, gradient and state hooks, samplers, teachers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lifecycle.data import pack
from lifecycle.train.distill import distillation_hooks, frozen_copy, kd_loss
from lifecycle.train.engine import TrainConfig, TrainHooks, causal_lm_loss, train

from conftest import make_tiny_model


@pytest.fixture(scope="module")
def data(tiny_corpus, tiny_tokenizer):
    return pack(tiny_corpus, tiny_tokenizer, 32, val_fraction=0.1)


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=4, lr=3e-3, warmup_steps=0, micro_batch_size=4, eval_every=0, log_every=1, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_causal_lm_loss_is_the_models_own_loss(data, tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer))
    batch = data.train_batch(torch.arange(4))
    batch["labels"][0, :10] = -100
    out = model(**batch)
    assert causal_lm_loss(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item(), abs=1e-6)
    per = causal_lm_loss(out.logits, batch["labels"], per_sample=True)
    assert per.shape == (4,) and torch.isfinite(per).all()


def test_compute_loss_replaces_the_lm_loss_and_sees_indices_and_steps(tmp_path, data, tiny_tokenizer):
    plain = train(make_tiny_model(len(tiny_tokenizer)), data, _cfg(), tmp_path / "plain", progress=False)
    seen: list[tuple[int, list[int]]] = []

    def loss(model, batch, outputs, indices, step):
        assert "labels" in batch and outputs.loss is None  # the model ran without labels
        seen.append((step, indices.tolist()))
        return causal_lm_loss(outputs.logits, batch["labels"])

    same = train(make_tiny_model(len(tiny_tokenizer)), data, _cfg(), tmp_path / "same",
                 hooks=TrainHooks(compute_loss=loss), progress=False)
    assert [r["train_loss"] for r in same.history] == pytest.approx([r["train_loss"] for r in plain.history], abs=1e-5)
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    order = data.epoch_order(0, 0)
    assert seen[1][1] == order[4:8].tolist()  # step 1 takes the second micro-batch of the epoch's order

    # Weighting every sample by zero: the loss is replaced, so nothing moves.
    model = make_tiny_model(len(tiny_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero = TrainHooks(compute_loss=lambda m, b, o, i, s: (0.0 * causal_lm_loss(o.logits, b["labels"], per_sample=True)).sum())
    train(model, data, _cfg(), tmp_path / "zero", hooks=zero, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prepare_and_export_convert_the_model(tmp_path, data, tiny_tokenizer):
    calls: list[str] = []

    class Marked(nn.Module):  # what a QAT swap does: training sees a converted module
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **kw):
            calls.append("forward")
            return self.inner(**kw)

    def prepare(model):
        calls.append("prepare")
        return Marked(model)

    def export(model):
        calls.append("export")
        assert isinstance(model, Marked)
        return model.inner

    result = train(make_tiny_model(len(tiny_tokenizer)), data, _cfg(steps=2), tmp_path / "run",
                   hooks=TrainHooks(prepare_model=prepare, export_model=export), progress=False)
    assert calls[0] == "prepare" and calls[-1] == "export" and "forward" in calls
    assert not isinstance(result.model, Marked)


def test_after_backward_gets_the_step(tmp_path, data, tiny_tokenizer):
    steps: list[int] = []
    train(make_tiny_model(len(tiny_tokenizer)), data, _cfg(steps=3, grad_accum=2), tmp_path / "run",
          hooks=TrainHooks(after_backward=lambda m, s: steps.append(s)), progress=False)
    assert steps == [0, 1, 2]


def test_sampler_decides_the_data_order(tmp_path, data, tiny_tokenizer):
    seen: list[list[int]] = []

    def loss(model, batch, outputs, indices, step):
        seen.append(indices.tolist())
        return causal_lm_loss(outputs.logits, batch["labels"])

    reversed_order = TrainHooks(compute_loss=loss, sampler=lambda epoch: torch.arange(data.num_train).flip(0))
    train(make_tiny_model(len(tiny_tokenizer)), data, _cfg(steps=2), tmp_path / "run", hooks=reversed_order, progress=False)
    n = data.num_train
    assert seen == [list(range(n - 1, n - 5, -1)), list(range(n - 5, n - 9, -1))]


class _CountingHook:
    """A callback with state: a running count and a tensor accumulating the loss."""

    def __init__(self):
        self.count = 0
        self.total = torch.zeros(())

    def after_step(self, model, step):
        self.count += 1
        self.total += step

    def hooks(self, crash_at: int | None = None) -> TrainHooks:
        def after_step(model, step):
            if crash_at is not None and step == crash_at:
                raise KeyboardInterrupt  # stands in for a crash after the step-3 checkpoint
            self.after_step(model, step)

        return TrainHooks(after_step=after_step, state_dict=lambda: {"count": self.count, "total": self.total.clone()},
                          load_state_dict=self._load)

    def _load(self, state):
        self.count = state["count"]
        self.total = state["total"].clone()


def test_callback_state_is_saved_and_restored_on_resume(tmp_path, data, tiny_tokenizer):
    cfg = _cfg(steps=6, save_every=3)
    full_hook = _CountingHook()
    full = train(make_tiny_model(len(tiny_tokenizer)), data, cfg, tmp_path / "full", hooks=full_hook.hooks(), progress=False)

    crashed = _CountingHook()
    with pytest.raises(KeyboardInterrupt):
        train(make_tiny_model(len(tiny_tokenizer)), data, cfg, tmp_path / "part", hooks=crashed.hooks(crash_at=5),
              progress=False)
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["hooks"] == {"count": 3}
    assert (tmp_path / "part" / "checkpoints" / "step-3" / "hooks.safetensors").is_file()

    resumed_hook = _CountingHook()  # fresh: everything it knows comes from the checkpoint
    resumed = train(make_tiny_model(len(tiny_tokenizer), seed=7), data, cfg, tmp_path / "part",
                    hooks=resumed_hook.hooks(), resume=True, progress=False)
    assert resumed_hook.count == full_hook.count == 6
    assert resumed_hook.total.item() == full_hook.total.item() == 21
    assert resumed.final_train_loss == pytest.approx(full.final_train_loss, abs=1e-5)


class _SpyTeacher(nn.Module):
    """Records where the engine puts it; fails the way a CPU teacher fed GPU batches fails."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.moved_to: list[torch.device] = []

    def to(self, *args, **kwargs):
        self.moved_to.append(torch.device(args[0] if args else kwargs["device"]))
        return super().to(*args, **kwargs)

    def forward(self, input_ids, **kw):
        device = next(self.inner.parameters()).device
        assert input_ids.device == device, f"teacher on {device}, batch on {input_ids.device}"
        return self.inner(input_ids=input_ids, **kw)


def test_teacher_is_placed_on_the_accelerator_device(tmp_path, data, tiny_tokenizer, monkeypatch):
    from lifecycle.train import engine as engine_module

    student = make_tiny_model(len(tiny_tokenizer))
    teacher = _SpyTeacher(frozen_copy(student))
    hooks = distillation_hooks(teacher, weight=1.0, temperature=2.0)
    assert teacher in hooks.auxiliary_models
    placed: list = []
    real = engine_module.place_auxiliary
    monkeypatch.setattr(engine_module, "place_auxiliary", lambda models, device: (placed.append((models, device)), real(models, device)))
    result = train(student, data, _cfg(steps=2), tmp_path / "run", hooks=hooks, progress=False)
    assert placed and placed[0][0] == [teacher]
    assert teacher.moved_to == [placed[0][1]]  # moved exactly to the accelerator's device
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert result.final_train_loss is not None


def test_kd_loss_matches_the_batchmean_kl_and_is_zero_for_identical_logits():
    import torch.nn.functional as F

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    ref = F.kl_div(F.log_softmax(s.reshape(-1, 11) / 2, -1), F.log_softmax(t.reshape(-1, 11) / 2, -1),
                   log_target=True, reduction="batchmean") * 4
    assert kd_loss(s, t, 2.0).item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd_loss(s, s, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_prune_recovery_hands_its_teacher_to_the_engine(tmp_path, tiny_checkpoint, monkeypatch):
    """Distillation in prune goes through the engine's auxiliary models (so it is on the device)."""
    from lifecycle.methods.prune.pipeline import PruneOptions, prune_model
    from lifecycle.model.io import load_model
    from lifecycle.train import engine as engine_module

    captured: list = []
    real_train = engine_module.train

    def spy(model, data, cfg, run_dir, **kw):
        captured.append(kw.get("hooks"))
        return real_train(model, data, cfg, run_dir, **kw)

    monkeypatch.setattr(engine_module, "train", spy)
    opts = PruneOptions(model=str(tiny_checkpoint), output=str(tmp_path / "out"), method="depth", ratio=0.3,
                        data="shakespeare", calib_samples=4, calib_length=16, block_size=32, max_train_tokens=4000,
                        distill=0.5, train={"steps": 1, "micro_batch_size": 2}, use_cache=False)
    prune_model(opts, load_model(str(tiny_checkpoint)), log=lambda *_: None)
    assert captured and captured[0] is not None and len(captured[0].auxiliary_models) == 1
