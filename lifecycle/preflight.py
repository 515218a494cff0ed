"""Preflight: everything that can be checked before any work starts, for commands and recipe steps.

A typo found after an hour of training loses the hour, so every command registers a preflight that
checks its inputs cheaply (no weights loaded, no tokenization): the eval task names (project tasks,
``--include-path`` tasks, or lm-eval's index), every part of a data spec (exists, non-empty,
decodes), ``block_size`` and ``calib_length`` against the model's positions, the model folder
itself (config against weight shapes, a tokenizer), the output folder (can be created, is not there
unless overwriting), a DeepSpeed config, and resume compatibility. The CLI runs it before the
command; ``lifecycle run`` runs it for every step before the first one starts (and ``--dry-run``
runs it too). Steps whose input model is an earlier step's output skip the model checks: that model
does not exist yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError


def check_eval(eval_after: Any) -> None:
    """The tasks an output will be scored on exist (``eval.tasks``, with ``eval.include_path``)."""
    tasks = getattr(eval_after, "tasks", None)
    if tasks:
        from lifecycle.eval.task_files import check_task_names

        check_task_names(tasks, getattr(eval_after, "include_path", None))


def check_data(spec: str | None, *, what: str = "data") -> None:
    """Every part of a data spec exists, is non-empty and decodes (reading is cheap; tokenizing is not)."""
    if not spec:
        return
    from lifecycle.data import load_corpus

    try:
        load_corpus(spec)
    except LifecycleError as exc:
        raise LifecycleError(f"{what}: {exc}") from None


def model_info(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Any:
    """The model's config and consistency, without loading its weights."""
    from lifecycle.model.io import inspect_model

    return inspect_model(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def check_positions(length: int | None, max_positions: int | None, *, option: str) -> None:
    """A sequence length the model can take."""
    if length is not None and max_positions is not None and length > max_positions:
        raise LifecycleError(f"{option} {length} exceeds the model's {max_positions} positions (max_position_embeddings)")


def check_preset(config: str | None, block_size: int | None) -> None:
    """A ``--config`` preset or JSON file builds a supported config, long enough for ``block_size``."""
    if not config:
        return
    from lifecycle.model.presets import make_config

    built = make_config(config, vocab_size=256)
    check_positions(block_size, getattr(built, "max_position_embeddings", None), option="block_size")


def check_output(output: str | None, *, overwrite: bool = False) -> None:
    """The output folder can be created (its temp sibling is made and removed), and is not in the way."""
    if not output:
        return
    from lifecycle.model.io import check_output_creatable, prepare_output_dir

    out = Path(output).expanduser()
    if out.exists() and not overwrite:
        prepare_output_dir(out, overwrite=False)  # the usual "exists (pass --overwrite)" message
    check_output_creatable(out, overwrite=overwrite)


def check_deepspeed(path: str | None) -> None:
    """A DeepSpeed config that exists, is JSON, and sets up ZeRO."""
    if not path:
        return
    file = Path(path).expanduser()
    if not file.is_file():
        raise LifecycleError(f"DeepSpeed config not found: {file} (recipes/deepspeed/zero2.json and zero3.json are examples)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise LifecycleError(f"DeepSpeed config {file} is not valid JSON ({detail})") from None
    if not isinstance(config, dict) or "zero_optimization" not in config:
        raise LifecycleError(f"DeepSpeed config {file} has no zero_optimization section")


def check_resume(output: str, train_cfg: Any, *, strict: bool = False, subdir: str = "") -> None:
    """With ``--resume``: the latest checkpoint's optimisation settings are these (steps may grow).

    The model and data parts of a checkpoint's identity need the tokenized data; the engine checks
    them when it resumes. This catches the common case, a changed ``train.*`` setting, up front.
    """
    from lifecycle.finish import default_run_dir
    from lifecycle.train.resume import NON_SEMANTIC, SCHEDULE_LENGTH, differences

    run_dir = default_run_dir(output) / subdir if subdir else default_run_dir(output)
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.split("-")[1]))
    if not checkpoints:
        if strict:
            raise LifecycleError(f"--resume: no checkpoint in {run_dir} (train.save_every > 0 writes them)")
        return
    state = json.loads(checkpoints[-1].read_text())
    saved = (state.get("identity") or {}).get("train")
    if saved is None:
        return
    now = train_cfg.model_dump(mode="json", exclude=NON_SEMANTIC | SCHEDULE_LENGTH)
    diff = differences({"train": saved}, {"train": now})
    if diff:
        raise LifecycleError(f"checkpoint {checkpoints[-1].parent} belongs to another run: {'; '.join(diff)} "
                             "(use a new output folder, put the settings back, or drop --resume)")


def check_start(opts: Any, *, pending_models: bool) -> Any:
    """Commands that start from a config preset or a model (train, grow): data, the config or the
    model folder, and ``block_size`` against its positions. Returns the model's info (or None)."""
    check_data(opts.data)
    if opts.config is not None:
        check_preset(opts.config, opts.block_size)
        return None
    if pending_models:
        return None
    info = model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    check_positions(opts.block_size, info.max_positions, option="block_size")
    return info


def run_preflight(command: Any, opts: Any, *, pending_models: bool = False) -> None:
    """Run ``command``'s preflight on validated ``opts`` (``pending_models``: inputs not written yet)."""
    check = getattr(command, "preflight", None)
    if check is not None:
        check(opts, pending_models=pending_models)


__all__ = ["check_data", "check_deepspeed", "check_start", "check_eval", "check_output", "check_positions", "check_preset",
           "check_resume", "model_info", "run_preflight"]
