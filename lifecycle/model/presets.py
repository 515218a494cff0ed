"""Model configs for training from scratch: named presets or a JSON file.

Presets are LLaMA configs sized for CPU work (``micro`` for tests, ``tiny`` ~ a few M parameters at
~3k tokens/s on 2 cores, ``small`` for longer runs); the vocabulary size comes from the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError
from lifecycle.model.adapter import check_supported_config

PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
}

_COMMON = dict(
    model_type="llama",
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    attention_dropout=0.0,
    initializer_range=0.02,
)


def make_config(spec: str | dict, vocab_size: int, *, eos_token_id: int | None = None, **overrides: Any):
    """A transformers config from a preset name, a JSON file path, or a dict; vocab from the tokenizer."""
    from transformers import AutoConfig

    if isinstance(spec, dict):
        fields = dict(spec)
    elif spec in PRESETS:
        fields = dict(PRESETS[spec])
    elif Path(spec).suffix == ".json" and Path(spec).is_file():
        try:
            fields = json.loads(Path(spec).read_text())
        except json.JSONDecodeError as exc:
            raise LifecycleError(f"config file {spec} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    else:
        raise LifecycleError(f"unknown model config '{spec}': use one of {', '.join(PRESETS)} or a .json file")
    merged = {**_COMMON, **fields, **overrides, "vocab_size": vocab_size}
    if eos_token_id is not None:
        merged.setdefault("eos_token_id", eos_token_id)
        merged.setdefault("bos_token_id", eos_token_id)
        merged.setdefault("pad_token_id", eos_token_id)
    model_type = merged.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **merged)
    except (ValueError, TypeError) as exc:
        raise LifecycleError(f"invalid model config: {str(exc).splitlines()[0]}") from None
    check_supported_config(config)
    return config


def build_model(config, seed: int = 0):
    """A freshly initialised causal LM for ``config`` (seeded, fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
