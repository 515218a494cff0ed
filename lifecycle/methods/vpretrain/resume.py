"""What ``--resume`` must agree on beyond the engine's run identity: the method, its option group, LoRA
and the feedback set.

The engine refuses a checkpoint whose model, data or ``train.*`` differ
(:mod:`lifecycle.train.resume`), but the targets V-Pretraining trains on also depend on the method,
its ``v-pretraining.*`` settings and the feedback set; resuming with any of those changed would
continue one run with another method's targets, and restore a designer into settings it was not
trained under. The run folder therefore records them in ``vpretrain_settings.json`` at the start,
and a resume with other values is refused, naming each one. A finished output (its run folder is
removed) is checked against its card: the same settings make ``--resume`` a no-op, as in ``train``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError

SETTINGS_FILE = "vpretrain_settings.json"
_HINT = "(use a new output folder, put the settings back, or drop --resume)"


def method_settings(opts: Any, feedback_fingerprint: str | None = None) -> dict[str, Any]:
    """The settings a resumed run must share (JSON-able); the feedback fingerprint once it is known."""
    dumped = opts.model_dump(mode="json")
    out = {"method": opts.method, "options": dumped.get(opts.method), "lora": dumped["lora"]}
    if feedback_fingerprint is not None:
        out["feedback"] = feedback_fingerprint
    return out


def _differences(saved: dict, now: dict) -> list[str]:
    from lifecycle.train.resume import differences

    diff = []
    if "feedback" in saved and "feedback" in now and saved["feedback"] != now["feedback"]:
        diff.append("feedback set differs (its content, length limits or the tokenizer)")
    method = now["method"]
    plain = {"method": saved.get("method"), method: saved.get("options"), "lora": saved.get("lora")}
    diff += differences(plain, {"method": method, method: now["options"], "lora": now["lora"]})
    return diff


def check_run_settings(run_dir: str | Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose recorded settings differ from ``settings`` (none recorded: fine)."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    diff = _differences(saved, settings)
    if diff:
        raise LifecycleError(f"run folder {Path(run_dir)} belongs to another vpretrain run: {'; '.join(diff)} {_HINT}")


def write_run_settings(run_dir: str | Path, settings: dict[str, Any]) -> None:
    from lifecycle.model.card import write_text_atomic

    path = Path(run_dir) / SETTINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(settings, indent=2))


def feedback_file_hash(path: str | Path) -> str:
    """SHA-256 of the feedback file's bytes (recorded on the card beside the tokenized fingerprint)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def finished_output(opts: Any) -> bool:
    """``--resume`` on a finished output: True (nothing to do) when its settings are these, else refused.

    Options are compared by :func:`lifecycle.finish.finished_already` (``v-pretraining.*``, method,
    LoRA, data, ``train.*``); the feedback file's content by the SHA-256 on the card
    (:func:`feedback_file_hash`). A longer ``train.steps`` cannot extend a finished run: its resume
    state was removed when the output was written.
    """
    from lifecycle.finish import finished_already
    from lifecycle.model.card import LINEAGE_FILE

    out = Path(opts.output).expanduser().resolve()
    if not (out / LINEAGE_FILE).is_file():
        return False
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    saved = (lineage.get("data") or {}).get("feedback") or {}
    same_path = (lineage.get("options") or {}).get("feedback") == opts.feedback
    if same_path and saved.get("sha256") and saved.get("train_file"):
        now = Path(saved["train_file"])
        if not now.is_file() or feedback_file_hash(now) != saved["sha256"]:
            raise LifecycleError(f"{out} is a finished run with another feedback set ({now} changed since); "
                                 "--overwrite replaces it, or use a new output folder")
    if finished_already(opts):
        return True
    raise LifecycleError(f"{out} is finished and its resume state was removed, so it cannot be extended to "
                         f"train.steps={opts.train.steps}; continue from it as a new run (--model {out} -o NEW)")


__all__ = ["SETTINGS_FILE", "check_run_settings", "feedback_file_hash", "finished_output", "method_settings", "write_run_settings"]
