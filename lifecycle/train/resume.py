"""Stopping and resuming training: what must match to resume, and stopping cleanly on a signal.

Resume compatibility. A resume checkpoint records the run's identity: the model config, the data
fingerprint, the optimisation settings and the world size. Resuming with any of them changed would
silently train something else, so it is refused, naming each setting that differs. The number of
steps is the exception users expect to change: extending a run is exact for a constant schedule,
and for WSD while the checkpoint is still before the decay (warmup and stable phase do not depend
on the total); cosine depends on the total from the first step after warmup, so it is refused with
that reason.

Signals. During training, SIGINT (Ctrl-C) and SIGTERM do not kill the process mid-step: the current
step finishes, a resumable checkpoint is written, and :class:`~lifecycle.errors.TrainingInterrupted`
is raised (exit 130 or 143 from the CLI). A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from lifecycle.errors import LifecycleError

# Settings that change bookkeeping, not the trained weights.
NON_SEMANTIC = {"save_every", "keep_checkpoints", "log_every", "report_to", "eval_every", "eval_blocks"}
SCHEDULE_LENGTH = {"steps", "schedule_steps"}


def run_identity(model: Any, data: Any, cfg: Any, world: int) -> dict:
    """What a resume checkpoint must agree on (JSON-able)."""
    from lifecycle.model.card import options_hash

    config = model.config.to_diff_dict() if hasattr(model, "config") else {"class": type(model).__name__}
    train = cfg.model_dump(mode="json", exclude=NON_SEMANTIC | SCHEDULE_LENGTH)
    return {"model": options_hash(config), "data": data.fingerprint, "train": train, "world": world}


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(saved: dict, now: dict) -> list[str]:
    """``["train.lr: 0.001 in the checkpoint, 0.002 now", ...]``."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{key}.{d}" for d in differences(a, b))
        elif a != b:
            what = {"model": "model config", "data": "data (content, tokenizer or block size)", "world": "process count"}.get(key, key)
            out.append(f"{what}: {_short(a)} in the checkpoint, {_short(b)} now" if key not in ("model", "data") else f"{what} differs")
    return out


def check_resume(state: dict, identity: dict, cfg: Any, checkpoint: Any) -> None:
    """Refuse to resume from ``checkpoint`` unless it belongs to this run (steps may be extended)."""
    saved = state.get("identity")
    if saved is None:  # a checkpoint from before identities were recorded
        raise LifecycleError(f"checkpoint {checkpoint} belongs to another run (written by an older lifecycle, "
                             "so it cannot be checked); use a new output folder or drop --resume")
    diff = differences(saved, identity)
    if diff:
        raise LifecycleError(f"checkpoint {checkpoint} belongs to another run: {'; '.join(diff)} (use a new output "
                             "folder, put the settings back, or drop --resume)")
    old_total = int(state.get("schedule_steps") or state.get("total_steps") or 0)
    new_total = int(cfg.schedule_steps or cfg.steps)
    step = int(state["step"])
    if not old_total or old_total == new_total:
        return
    if new_total < step:
        raise LifecycleError(f"cannot resume from step {step} with only {new_total} steps")
    if cfg.schedule == "constant":
        return
    if cfg.schedule == "wsd":
        decay_old = int(old_total * (1 - cfg.decay_fraction))
        decay_new = int(new_total * (1 - cfg.decay_fraction))
        if step <= min(decay_old, decay_new):
            return
        raise LifecycleError(
            f"cannot change steps from {old_total} to {new_total} when resuming at step {step}: the WSD decay "
            f"{'had already started (step ' + str(decay_old) + ')' if step > decay_old else 'would start before it (step ' + str(decay_new) + ')'}; "
            "resume from a checkpoint before the decay, or keep the step count")
    raise LifecycleError(
        f"cannot change steps from {old_total} to {new_total} when resuming: the cosine schedule's learning rate at "
        "every step after warmup depends on the total, so the resumed run would not continue this one; "
        "keep train.steps, or use schedule wsd or constant for runs you want to extend")


class StopSignals:
    """SIGINT/SIGTERM during training ask for a clean stop after the current step (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, accelerator: Any) -> int | None:
        """The signal, once every process knows of it (so all stop after the same step)."""
        if accelerator.num_processes == 1:
            return self.signum
        import torch

        seen = torch.tensor([float(self.signum == signal.SIGINT), float(self.signum == signal.SIGTERM)], device=accelerator.device)
        seen = accelerator.reduce(seen, reduction="sum")
        if seen[1].item() > 0:
            return int(signal.SIGTERM)
        return int(signal.SIGINT) if seen[0].item() > 0 else None


__all__ = ["StopSignals", "check_resume", "differences", "run_identity"]
