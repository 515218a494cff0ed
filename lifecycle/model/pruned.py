"""Pruned models as checkpoints that load: vanilla configs when every layer agrees, per-layer otherwise.

Structured pruning (``lifecycle prune``) leaves a model of the source class whose projections were
shrunk in place. Before saving, :func:`finalize` turns it into one of two checkpoint forms:

* **vanilla** — every layer has the same number of query heads, KV heads and MLP channels, and the
  architecture's own config can say so: a plain ``LlamaConfig`` / ``Qwen2Config`` / ``MistralConfig``
  with ``head_dim`` written explicitly (RoPE and the per-head width are the source's). Loads anywhere.
* **per-layer** — shapes differ between layers (Adapt-Pruner's normal result), or a vanilla config
  cannot express the model. The config is the source config plus per-layer lists
  (``layer_num_attention_heads``, ``layer_num_key_value_heads``, ``layer_intermediate_sizes``) under the
  model type ``lifecycle_pruned_<family>``. The classes live in the self-contained file
  ``lifecycle/model/remote_code/modeling_lifecycle_pruned.py``; they are registered with
  ``AutoConfig`` / ``AutoModelForCausalLM`` as soon as ``lifecycle`` and ``transformers`` are both
  imported, and the file is copied into the checkpoint with an ``auto_map``, so users without lifecycle
  load it with ``trust_remote_code=True``.

Why a vanilla config is sometimes not possible even with uniform shapes (reported in
:attr:`Finalized.reason`): ``LlamaConfig`` in transformers 5 rejects ``hidden_size`` not divisible by
``num_attention_heads`` even when ``head_dim`` is explicit, and Qwen2/Mistral have no bias slot on
``o_proj``/``down_proj`` for FLAP's bias compensation.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.errors import LifecycleError, UnsupportedArchitectureError

if TYPE_CHECKING:  # torch is imported lazily: this module is imported by `import lifecycle`
    from torch import nn

SOURCE_FAMILIES = ("llama", "qwen2", "mistral")
PRUNED_PREFIX = "lifecycle_pruned_"
PRUNED_MODEL_TYPES = tuple(PRUNED_PREFIX + f for f in SOURCE_FAMILIES)
_PER_LAYER_KEYS = ("layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes",
                   "o_proj_bias", "down_proj_bias")
# Keys that describe the saved file rather than the architecture; rebuilt by save_pretrained.
_VOLATILE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")

_registered = False
_lock = threading.Lock()


def register() -> None:
    """Register the per-layer classes with the Auto classes (idempotent, thread-safe).

    ``register_for_auto_class`` makes ``save_pretrained`` copy the modeling file into the checkpoint
    and write ``auto_map``; ``AutoConfig.register`` makes the same checkpoint load as local code
    (transformers prefers registered local classes when ``trust_remote_code`` is not set).
    """
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        from transformers import AutoConfig, AutoModelForCausalLM

        from lifecycle.model.remote_code.modeling_lifecycle_pruned import FAMILIES

        for config_cls, model_cls in FAMILIES.values():
            AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
            AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
            config_cls.register_for_auto_class("AutoConfig")
            model_cls.register_for_auto_class("AutoModelForCausalLM")
        _registered = True


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Runs :func:`register` right after ``transformers`` is first imported.

    Registering needs ``transformers`` (and torch), which take seconds to import; ``import lifecycle``
    must stay cheap for commands and tools that never touch a model. This finder steps aside for every
    other module, and removes itself after wrapping the loader of ``transformers`` once.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != "transformers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None) if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _register_quietly()

        loader.exec_module = exec_module  # this spec's own loader instance only
        return spec


def _register_quietly() -> None:
    """Registration is a convenience for from_pretrained; a broken optional stack must not break imports."""
    from lifecycle.model.logit_moe import register as register_logit_moe

    for registration in (register, register_logit_moe):
        try:
            registration()
        except Exception:  # noqa: BLE001 - e.g. transformers without torch; lifecycle commands report it later
            pass


def install_registration_hook() -> None:
    """Called by ``lifecycle/__init__``: register now if transformers is loaded, else right after it is."""
    if "transformers" in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())


def source_family(config: Any) -> str:
    """``llama`` / ``qwen2`` / ``mistral`` for a source or an already pruned model."""
    model_type = getattr(config, "model_type", None) or ""
    family = model_type[len(PRUNED_PREFIX):] if model_type.startswith(PRUNED_PREFIX) else model_type
    if family not in SOURCE_FAMILIES:
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' is not supported for pruning (supported: {', '.join(SOURCE_FAMILIES)})"
        )
    return family


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


@dataclass(frozen=True)
class LayerShapes:
    """Per-layer widths, read from the weights."""

    heads: list[int]
    kv_heads: list[int]
    intermediate: list[int]

    @property
    def uniform(self) -> bool:
        return len(set(self.heads)) <= 1 and len(set(self.kv_heads)) <= 1 and len(set(self.intermediate)) <= 1

    def as_dict(self) -> dict[str, list[int]]:
        return {"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "intermediate_size": self.intermediate}


def layer_shapes(model: nn.Module) -> LayerShapes:
    hd = head_dim_of(model.config)
    heads, kv, inter = [], [], []
    for layer in model.model.layers:
        heads.append(layer.self_attn.q_proj.out_features // hd)
        kv.append(layer.self_attn.k_proj.out_features // hd)
        inter.append(layer.mlp.gate_proj.out_features)
    return LayerShapes(heads, kv, inter)


def _extra_biases(model: nn.Module, family: str) -> tuple[bool, bool]:
    """(o_proj, down_proj) carry a bias that the source architecture has no slot for."""
    cfg = model.config
    has_o = any(layer.self_attn.o_proj.bias is not None for layer in model.model.layers)
    has_down = any(layer.mlp.down_proj.bias is not None for layer in model.model.layers)
    native_o = family == "llama" and bool(getattr(cfg, "attention_bias", False))
    native_down = family == "llama" and bool(getattr(cfg, "mlp_bias", False))
    return has_o and not native_o, has_down and not native_down


def _add_missing_biases(model: nn.Module, o_bias: bool, down_bias: bool) -> None:
    """Give every layer the same bias layout (zeros where a layer had no compensation)."""
    import torch
    from torch import nn
    for layer in model.model.layers:
        for wanted, module in ((o_bias, layer.self_attn.o_proj), (down_bias, layer.mlp.down_proj)):
            if wanted and module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device))


@dataclass
class Finalized:
    model: nn.Module
    kind: str  # "vanilla" or "per-layer"
    reason: str  # why per-layer (empty for vanilla)
    shapes: LayerShapes


def _base_config_dict(config: Any) -> dict:
    d = config.to_dict()
    for key in (*_VOLATILE_KEYS, *_PER_LAYER_KEYS):
        d.pop(key, None)
    return d


def _vanilla_config(config: Any, family: str, shapes: LayerShapes):
    from transformers import AutoConfig

    d = _base_config_dict(config)
    d.update(
        num_hidden_layers=len(shapes.heads),
        num_attention_heads=shapes.heads[0],
        num_key_value_heads=shapes.kv_heads[0],
        intermediate_size=shapes.intermediate[0],
        head_dim=head_dim_of(config),
    )
    return AutoConfig.for_model(family, **d)


def _per_layer_config(config: Any, family: str, shapes: LayerShapes, o_bias: bool, down_bias: bool):
    register()
    from lifecycle.model.remote_code.modeling_lifecycle_pruned import FAMILIES

    config_cls = FAMILIES[family][0]
    d = _base_config_dict(config)
    d.update(
        num_hidden_layers=len(shapes.heads),
        num_attention_heads=max(shapes.heads),
        num_key_value_heads=max(shapes.kv_heads),
        intermediate_size=max(shapes.intermediate),
        head_dim=head_dim_of(config),
        layer_num_attention_heads=list(shapes.heads),
        layer_num_key_value_heads=list(shapes.kv_heads),
        layer_intermediate_sizes=list(shapes.intermediate),
        o_proj_bias=o_bias,
        down_proj_bias=down_bias,
    )
    return config_cls(**d)


def _rebuild(model: nn.Module, config: Any) -> nn.Module:
    """A fresh model of the class the config names, holding ``model``'s weights exactly."""
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    state = {k: v for k, v in model.state_dict().items()}
    new = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = new.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise LifecycleError(
            f"internal error: pruned weights do not fit the rebuilt model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if tied:
        new.lm_head.weight = new.model.embed_tokens.weight
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = model.generation_config
    new.to(device)
    new.train(model.training)
    return new


def finalize(model: nn.Module, *, per_layer: bool | None = None) -> Finalized:
    """The checkpoint form of a pruned model: vanilla when possible (or forced), per-layer otherwise.

    ``per_layer=True`` always writes the per-layer form; ``False`` requires a vanilla one (error if the
    shapes differ); ``None`` picks vanilla whenever it can express the model.
    """
    family = source_family(model.config)
    shapes = layer_shapes(model)
    o_bias, down_bias = _extra_biases(model, family)
    reason = ""
    if not shapes.uniform:
        reason = "layers have different widths"
    elif o_bias or down_bias:
        reason = f"{family} has no bias slot on o_proj/down_proj for the compensation biases"
    if not reason and per_layer is not True:
        try:
            config = _vanilla_config(model.config, family, shapes)
        except Exception as exc:  # noqa: BLE001 - strict-dataclass validation errors are not ValueErrors
            cause = exc.__cause__ or exc
            reason = f"the vanilla {family} config rejects this shape ({str(cause).splitlines()[-1].strip()})"
        else:
            return Finalized(_rebuild(model, config), "vanilla", "", shapes)
    if per_layer is False:
        raise LifecycleError(f"cannot write a vanilla {family} checkpoint: {reason or 'per-layer form was requested'}")
    _add_missing_biases(model, o_bias, down_bias)
    config = _per_layer_config(model.config, family, shapes, o_bias, down_bias)
    return Finalized(_rebuild(model, config), "per-layer", reason or "per-layer form requested", shapes)


def is_pruned_type(config: Any) -> bool:
    return str(getattr(config, "model_type", "")).startswith(PRUNED_PREFIX)
