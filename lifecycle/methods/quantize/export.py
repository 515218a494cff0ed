"""Turning a BitLinear-trained model into checkpoints transformers loads (``quant_method: bitnet``).

Two forms, chosen by ``export``:

* ``packed`` — transformers' ``linear_class: bitlinear``, ``quantization_mode: offline``. Each
  converted linear stores ``weight`` as uint8 of shape ``(out/4, in)``: the ternary value + 1
  (0, 1, 2) in two bits, rows ``[i·R, (i+1)·R)`` (R = out/4) in bits ``2i, 2i+1`` of row block i
  (packing runs along dim 0, so ``out_features % 4 == 0`` is required), and ``weight_scale`` of
  shape ``(1,)`` holding **1/γ**: this linear class *divides* its output by it.
* ``packed-autobitlinear`` — transformers' ``linear_class: autobitlinear``, ``quantization_mode: offline``:
  the same uint8 layout on disk (transformers' loader unpacks it to the model dtype when it sees
  ``out/4`` stored rows), but ``weight_scale`` holds **γ** itself, because ``AutoBitLinear``
  *multiplies* its output by it. Writing 1/γ here, as for ``bitlinear``, would scale every layer by
  1/γ² — the pitfall the notes warn of. In memory the layer keeps the unpacked ternary weight (so the
  reload check can run it); a state-dict hook packs it as it is saved.
* ``online`` — ``linear_class: autobitlinear``, ``quantization_mode: online``: the full-precision
  master weights as plain ``weight``; transformers re-ternarizes them (absmean) and quantizes the
  activations in every forward with a straight-through estimator, so the checkpoint trains further.

Both carry ``modules_to_not_convert`` (every linear we left in full precision, ``lm_head`` among
them) and, when BitLinear's input norm was on, ``use_rms_norm`` with unit norm weights.

transformers' BitNet layers run their forward through ``torch.compile``; on a CPU the first call
compiles for tens of seconds. :func:`eager_bitnet` runs a block with TorchDynamo disabled (the same
numbers, eagerly); lifecycle uses it for its own reload check and scoring. Outside lifecycle, set
``TORCHDYNAMO_DISABLE=1`` on CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.quantize.bitlinear import BitLinear, ternarize, weight_scale

PACK = 4  # ternary values per uint8


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack integer ternary weights ``(out, in)`` into uint8 ``(out/4, in)`` along dim 0 (see module doc)."""
    out = q.shape[0]
    if out % PACK:
        raise LifecycleError(f"cannot pack a linear with {out} output features: the BitNet packed format "
                             f"needs a multiple of {PACK} (use export=online, or leave the module out)")
    rows = out // PACK
    codes = (q.to(torch.int16) + 1).to(torch.uint8)
    if codes.max() > 2:
        raise LifecycleError("pack_ternary: weights are not ternary")
    packed = torch.zeros((rows, *q.shape[1:]), dtype=torch.uint8)
    for i in range(PACK):
        packed |= codes[i * rows:(i + 1) * rows] << (2 * i)
    return packed


def unpack_ternary(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(R, in)`` → ternary ``(4R, in)`` in ``dtype``."""
    parts = [((packed >> (2 * i)) & 3) for i in range(PACK)]
    return torch.cat(parts, dim=0).to(dtype) - 1


@contextlib.contextmanager
def eager_bitnet() -> Iterator[None]:
    """Run transformers' torch.compile'd BitNet layers eagerly (no compile: seconds on a CPU, not minutes)."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def bitlinear_modules(model: nn.Module) -> list[tuple[str, BitLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BitLinear)]


def not_converted(model: nn.Module) -> list[str]:
    """Names of the plain linears left in full precision (what ``modules_to_not_convert`` must list)."""
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    return sorted(set(names) | {"lm_head"})


def check_packable(model: nn.Module) -> None:
    for name, m in bitlinear_modules(model):
        if m.out_features % PACK:
            raise LifecycleError(f"{name} has {m.out_features} output features, not a multiple of {PACK}: the BitNet "
                                 "packed format cannot store it (export=online, or add it to modules_to_not_convert)")


def _quant_config(model: nn.Module, linear_class: str, mode: str) -> dict[str, Any]:
    layers = bitlinear_modules(model)
    norm = any(m.norm for _, m in layers)
    eps = next((m.norm_eps for _, m in layers if m.norm), 1e-6)
    return {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode,
            "modules_to_not_convert": not_converted(model), "use_rms_norm": norm, "rms_norm_eps": eps}


def _set_norm(module: nn.Module, layer: BitLinear) -> None:
    if layer.norm and getattr(module, "rms_norm", None) is not None:
        with torch.no_grad():
            module.rms_norm.weight.fill_(1.0)
            module.rms_norm.variance_epsilon = layer.norm_eps


def _export_offline(model: nn.Module, linear_class: str, make: Callable[[BitLinear, torch.Tensor, torch.Tensor], nn.Module]) -> nn.Module:
    """Replace every BitLinear, in place, by ``make(layer, ternary weight, γ)``: the offline (frozen) forms."""
    check_packable(model)
    qconfig = _quant_config(model, linear_class, "offline")
    for name, layer in bitlinear_modules(model):
        w = layer.weight.detach().float().cpu()
        gamma = weight_scale(w, layer.scale_method)
        new = make(layer, ternarize(w, gamma), gamma)
        _set_norm(new, layer)
        new.requires_grad_(False)
        model.set_submodule(name, new)
    model.config.quantization_config = qconfig
    return model


def _hf_bitlinear(layer: BitLinear, ternary: torch.Tensor, gamma: torch.Tensor) -> nn.Module:
    from transformers.integrations.bitnet import BitLinear as HFBitLinear

    new = HFBitLinear(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype,
                      use_rms_norm=layer.norm, rms_norm_eps=layer.norm_eps)
    new.weight = pack_ternary(ternary)
    new.weight_scale = (1.0 / gamma).reshape(1).to(layer.weight.dtype)  # this class divides by it
    if layer.bias is not None:
        new.bias = layer.bias.detach().clone()
    return new


def _pack_on_save(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    key = prefix + "weight"
    state[key] = pack_ternary(state[key].detach().cpu().round())


def _hf_autobitlinear_offline(layer: BitLinear, ternary: torch.Tensor, gamma: torch.Tensor) -> nn.Module:
    from transformers.integrations.bitnet import AutoBitLinear

    new = AutoBitLinear(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype,
                        online_quant=False, use_rms_norm=layer.norm, rms_norm_eps=layer.norm_eps)
    with torch.no_grad():
        new.weight.copy_(ternary)
        new.weight_scale.copy_(gamma.reshape(1))  # AutoBitLinear multiplies by it: γ, not 1/γ
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new._register_state_dict_hook(_pack_on_save)
    return new


def export_packed(model: nn.Module) -> nn.Module:
    """Replace every BitLinear by transformers' packed ``BitLinear`` (uint8 weights, 1/γ scales), in place."""
    return _export_offline(model, "bitlinear", _hf_bitlinear)


def export_packed_autobitlinear(model: nn.Module) -> nn.Module:
    """Replace every BitLinear by transformers' offline ``AutoBitLinear`` (ternary weights saved packed, γ scales)."""
    return _export_offline(model, "autobitlinear", _hf_autobitlinear_offline)


def export_online(model: nn.Module) -> nn.Module:
    """Replace every BitLinear by transformers' online ``AutoBitLinear`` holding the master weights, in place."""
    from transformers.integrations.bitnet import AutoBitLinear

    for name, layer in bitlinear_modules(model):
        if layer.scale_method != "absmean":
            raise LifecycleError(f"export=online needs scale absmean: transformers' online AutoBitLinear recomputes "
                                 f"absmean scales, so a {layer.scale_method} model would change (use export=packed)")
    qconfig = _quant_config(model, "autobitlinear", "online")
    for name, layer in bitlinear_modules(model):
        new = AutoBitLinear(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype,
                            online_quant=True, use_rms_norm=layer.norm, rms_norm_eps=layer.norm_eps)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        _set_norm(new, layer)
        model.set_submodule(name, new)
    model.config.quantization_config = qconfig
    return model


def export_master(model: nn.Module) -> nn.Module:
    """Plain ``nn.Linear`` layers with the full-precision master weights and no quantization config."""
    for name, layer in bitlinear_modules(model):
        new = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        model.set_submodule(name, new)
    return model


EXPORTERS = {"packed": export_packed, "packed-autobitlinear": export_packed_autobitlinear, "online": export_online,
             "master": export_master}

__all__ = ["EXPORTERS", "PACK", "check_packable", "eager_bitnet", "export_master", "export_online", "export_packed",
           "export_packed_autobitlinear",
           "not_converted", "pack_ternary", "unpack_ternary"]
