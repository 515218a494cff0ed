"""What the engine needs from Accelerate and the process: the accelerator, RNG state, the final weights."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lifecycle.errors import LifecycleError


def make_accelerator(cfg: Any, deepspeed_config: str | dict | None = None, logging_dir: str | Path | None = None):
    """An Accelerator for this run; DeepSpeed when a ZeRO config is given; trackers from ``report_to``."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    kwargs: dict[str, Any] = {
        "gradient_accumulation_steps": cfg.grad_accum,
        "mixed_precision": "bf16" if cfg.precision == "bf16" else "no",
    }
    if cfg.report_to:
        kwargs["log_with"] = list(cfg.report_to)
        kwargs["project_dir"] = str(logging_dir or "runs/logs")
    if deepspeed_config is not None:
        ds = deepspeed_config
        if isinstance(ds, (str, Path)):
            ds = json.loads(Path(ds).read_text())
        ds = dict(ds)
        ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
        ds["gradient_accumulation_steps"] = cfg.grad_accum
        ds["gradient_clipping"] = cfg.grad_clip
        ds.pop("train_batch_size", None)
        ds.setdefault("bf16", {})["enabled"] = cfg.precision == "bf16"
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
        if "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
            # Not started by a launcher: one process still needs the rendezvous variables, or
            # DeepSpeed tries MPI discovery and Accelerate never creates the process group.
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                               ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
                os.environ.setdefault(key, value)
    accelerator = Accelerator(**kwargs)
    if deepspeed_config is not None and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise LifecycleError(
            f"a DeepSpeed config was given but Accelerate set up {accelerator.distributed_type.value} instead "
            "(ACCELERATE_USE_CPU, which multi-process CPU runs need, turns DeepSpeed off): "
            "drop the DeepSpeed config, or run one process"
        )
    return accelerator


def prepare(accelerator: Any, model: nn.Module, optimizer: Any, say: Callable[[str], None]) -> tuple[Any, Any]:
    """``accelerator.prepare(model, optimizer)``, saying first when DeepSpeed sets up there.

    DeepSpeed builds its C++/CUDA ops (the optimizer, ZeRO's communication helpers) just in time the
    first time a machine uses them: minutes of silence that look like a hang without this line.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return accelerator.prepare(model, optimizer)
    stage = getattr(plugin, "zero_stage", None)
    say(f"DeepSpeed ZeRO-{stage if stage is not None else '?'}: setting up; the first run on a machine compiles "
        "its ops just in time, which can take several minutes")
    started = time.perf_counter()
    prepared = accelerator.prepare(model, optimizer)
    from lifecycle.display import duration

    say(f"DeepSpeed ready in {duration(time.perf_counter() - started)}")
    return prepared


def rng_state() -> dict:
    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": np_state[2],
    }


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"), int(state["numpy_pos"]), 0, 0.0))


def gather_plain_model(accelerator, prepared_model, original: nn.Module, using_deepspeed: bool) -> nn.Module:
    """Full weights in a plain module: under ZeRO-3 every rank joins the gather, the main one keeps it."""
    if not using_deepspeed:
        model = accelerator.unwrap_model(prepared_model)
        model.eval()
        return model
    state_dict = accelerator.get_state_dict(prepared_model)  # collective under ZeRO-3
    # Training is over. While a ZeRO-3 config is registered with transformers, every model it builds
    # or loads (this plain copy, the caller's save-and-reload check) comes out partitioned and empty.
    from transformers import AutoModelForCausalLM
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    model = AutoModelForCausalLM.from_config(original.config, dtype=torch.float32)
    if accelerator.is_main_process:
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
        bad = [k for k in missing if "lm_head" not in k] + list(unexpected)
        if bad:
            raise LifecycleError(f"DeepSpeed returned incomplete weights ({len(bad)} tensors missing)")
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
    model.eval()
    return model
