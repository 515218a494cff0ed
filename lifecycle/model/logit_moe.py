"""Registration of the logit-averaging MoE classes (``model_type: lifecycle_logit_moe``).

The classes live in the self-contained file ``lifecycle/model/remote_code/modeling_lifecycle_logit_moe.py``,
which :func:`lifecycle.methods.merge.logit_moe.build_logit_moe` copies beside the weights (with an
``auto_map``) so Hub users load the checkpoint with ``trust_remote_code=True``. After ``import
lifecycle`` (and transformers), :func:`register` has made ``AutoModelForCausalLM.from_pretrained``
load it as local code, the way :mod:`lifecycle.model.pruned` does for per-layer pruned models.
"""

from __future__ import annotations

import functools
from pathlib import Path

MODEL_TYPE = "lifecycle_logit_moe"
MODELING_FILE = Path(__file__).parent / "remote_code" / "modeling_lifecycle_logit_moe.py"


@functools.cache  # registering twice is harmless (exist_ok), so a plain once-only cache is enough
def register() -> None:
    """Register the config and model class with the Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lifecycle.model.remote_code.modeling_lifecycle_logit_moe import (
        LifecycleLogitMoEConfig,
        LifecycleLogitMoEForCausalLM,
    )

    AutoConfig.register(MODEL_TYPE, LifecycleLogitMoEConfig, exist_ok=True)
    AutoModelForCausalLM.register(LifecycleLogitMoEConfig, LifecycleLogitMoEForCausalLM, exist_ok=True)


__all__ = ["MODELING_FILE", "MODEL_TYPE", "register"]
