"""The quantize pipeline every quantize method runs in: checks, training data, teacher, the method.

A quantize method is registered with :func:`lifecycle.methods.registry.register_method`
(``"quantize"``) and called as ``run(ctx: QuantizeContext) -> dict``. It converts ``ctx.model``
(optionally training it through ``ctx.train``), leaves the model to save in ``ctx.model`` and
returns its report (written to ``quantize_report.json``). Everything that can be refused is checked
here before any weight changes: an input that is already quantized, linears that the packed format
cannot store, the method's own checks (``check(opts)`` on its options model, when it has one).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.finish import default_run_dir
from lifecycle.methods.quantize.options import QuantizeOptions
from lifecycle.methods.registry import get_method


def already_quantized(config: Any) -> str | None:
    """A one-line description of the config's quantization, or None for a full-precision model."""
    q = getattr(config, "quantization_config", None)
    if not q:
        return None
    q = q if isinstance(q, dict) else (q.to_dict() if hasattr(q, "to_dict") else vars(q))
    method = q.get("quant_method") or (q.get("load_in_4bit") or q.get("load_in_8bit")) and "bitsandbytes" or "unknown"
    method = str(getattr(method, "value", method))
    if method.lower() == "gguf":  # transformers dequantizes GGUF on load: the model in memory is full precision
        return None
    return method


def _forget_gguf(model: Any) -> None:
    """A GGUF input was dequantized by transformers on load; its weights are plain tensors now, but the
    model still carries the GGUF quantizer, which refuses to save. The output is not a GGUF model."""
    if getattr(model, "hf_quantizer", None) is not None and already_quantized(model.config) is None:
        from lifecycle.model.io import forget_gguf_quantizer

        forget_gguf_quantizer(model)


def check_not_quantized(config: Any, spec: str) -> None:
    method = already_quantized(config)
    if method is not None:
        raise LifecycleError(f"model {spec} is already quantized (quantization_config: quant_method {method}); "
                             "quantize its full-precision parent instead")


def _matches(name: str, patterns: list[str]) -> bool:
    # The rule transformers applies to modules_to_not_convert on load (prefix at a module boundary,
    # regex, or suffix), so the saved list means the same thing there.
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    return any(re.match(rf"(?:{key}){boundary}", name) or name.endswith(key) for key in patterns)


def linears_to_convert(model: nn.Module, modules_to_not_convert: list[str]) -> list[tuple[str, nn.Linear]]:
    """The decoder's linears that become BitLinear: every ``nn.Linear`` but lm_head and the excluded ones."""
    skip = list(modules_to_not_convert) + ["lm_head"]
    return [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not _matches(name, skip)]


@dataclass
class QuantizeContext:
    """What a quantize method receives."""

    opts: QuantizeOptions
    model: Any
    tokenizer: Any
    source: str
    data: Any = None  # packed training data when train.steps > 0
    teacher: Any = None  # frozen full-precision copy when distill > 0
    history: list[dict] = field(default_factory=list)
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)

    @property
    def run_dir(self):
        return default_run_dir(self.opts.output)


def quantize_model(opts: QuantizeOptions, loaded: Any, *, log: Callable[[str], None] = print) -> tuple[Any, dict, list[dict], Any]:
    """Quantize an already loaded model; returns (model, report, history, data). Usable from Python."""
    method = get_method("quantize", opts.method)
    model = loaded.model
    check_not_quantized(model.config, loaded.source)
    _forget_gguf(model)
    group = opts.method_options
    if group is not None and hasattr(group, "check"):
        group.check(opts)
    targets = linears_to_convert(model, opts.modules_to_not_convert)
    if not targets:
        raise LifecycleError("no linear layers to quantize (modules_to_not_convert excludes them all)")
    if opts.export.startswith("packed") and method.name in TERNARY_METHODS:
        bad = [(n, m.out_features) for n, m in targets if m.out_features % 4]
        if bad:
            name, out = bad[0]
            raise LifecycleError(f"{name} has {out} output features, not a multiple of 4: the BitNet packed format "
                                 "cannot store it (export=online, or add it to modules_to_not_convert)")
    params_before = sum(p.numel() for p in model.parameters())
    weight_dtype_bits = targets[0][1].weight.element_size() * 8
    converted_params = sum(m.weight.numel() for _, m in targets)
    data = None
    needs_training = method.name in TRAINING_METHODS and opts.train.steps > 0
    if needs_training:
        from lifecycle.data import pack

        data = pack(opts.data, loaded.tokenizer, opts.block_size, val_fraction=opts.val_fraction,
                    max_train_tokens=opts.max_train_tokens)
    teacher = None
    if opts.distill > 0 and needs_training:
        from lifecycle.train.distill import frozen_copy

        teacher = frozen_copy(model)
    ctx = QuantizeContext(opts=opts, model=model, tokenizer=loaded.tokenizer, source=loaded.source, data=data,
                          teacher=teacher, log=log)
    started = time.perf_counter()
    method_report = method.run(ctx)
    report = {
        "method": opts.method,
        "export": opts.export if method.name in TERNARY_METHODS else None,
        "converted_linears": len(targets),
        "modules_to_not_convert": sorted(set(opts.modules_to_not_convert) | {"lm_head"}),
        "params_before": params_before,
        "seconds": round(time.perf_counter() - started, 1),
        "bit_budget": bit_budget(method.name, opts.export, converted_params, params_before, weight_dtype_bits),
        **method_report,
    }
    return ctx.model, report, ctx.history, data


def bit_budget(method: str, export: str, converted: int, total: int, dtype_bits: int) -> list[dict]:
    """Where the bits go: the quantized linears' weights and the parameters left at full precision.

    ``bits`` is the information per weight (log2 3 ≈ 1.58 for ternary), ``stored_bits`` what the saved
    checkpoint spends on it (2 for BitNet's packed export, 4 weights a byte; full precision for the online
    and master exports). Scales and other per-block metadata are not counted. A method that declares
    no bit width (a plugin) gets None. ``lifecycle report`` draws this; it is recorded in the lineage.
    """
    ternary = method in TERNARY_METHODS
    bits = round(math.log2(3), 2) if ternary else WEIGHT_BITS.get(method)
    stored = (2 if export.startswith("packed") else dtype_bits) if ternary else bits
    rows = [{"part": "quantized linears", "params": converted, "bits": bits, "stored_bits": stored}]
    if total > converted:
        rows.append({"part": "full precision (embeddings, norms, lm_head, excluded modules)", "params": total - converted,
                     "bits": dtype_bits, "stored_bits": dtype_bits})
    return rows


# Filled by the method modules: which methods produce ternary weights (export applies) and which train.
TERNARY_METHODS: set[str] = set()
TRAINING_METHODS: set[str] = set()
# Bits per weight of the non-ternary methods (ternary ones have log2 3), for the bit budget.
WEIGHT_BITS: dict[str, float] = {}


__all__ = ["QuantizeContext", "bit_budget", "QuantizeOptions", "already_quantized", "check_not_quantized", "linears_to_convert",
           "quantize_model"]
