"""peft LoRA adapter folders for the exact LoRA fusions (``lora_concat``, ``lora_svd``).

An adapter is a folder with ``adapter_config.json`` and ``adapter_model.safetensors`` (never a pickle).
For each adapted linear layer it holds ``A`` (r × in) and ``B`` (out × r) and the update is
``ΔW = s · B A`` with ``s = lora_alpha / r`` (``lora_alpha / √r`` under rsLoRA; ``rank_pattern`` and
``alpha_pattern`` override r and alpha per module, as peft reads them). Fusions compute from the
per-module ``(A, B, s)`` of every adapter and write a plain peft LoRA adapter (``r`` = ``lora_alpha``,
so its scaling is 1, as peft's own ``add_weighted_adapter`` does).

Refused with one line: a folder that is not a LoRA adapter; DoRA, ``fan_in_fan_out``, trained biases
or ``modules_to_save`` (their updates are not ``B A`` alone); an A/B pair whose shape does not fit the
base model's weight of that name (the adapter was trained on another base).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lifecycle.errors import LifecycleError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


@dataclass
class LoraAdapter:
    folder: Path
    config: dict
    # module name as in the base checkpoint (e.g. model.layers.0.self_attn.q_proj) -> (A, B, scaling)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)

    def delta(self, module: str) -> torch.Tensor:
        a, b, scaling = self.modules[module]
        return scaling * (b.double() @ a.double())


def _pattern_value(patterns: dict, module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern: the first key that matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(folder: str | Path) -> LoraAdapter:
    from safetensors import safe_open

    path = Path(str(folder)).expanduser()
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise LifecycleError(f"{folder} is not a peft LoRA adapter folder ({CONFIG_FILE} and {WEIGHTS_FILE} are needed)")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise LifecycleError(f"{path / CONFIG_FILE} is not valid JSON: {exc}") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise LifecycleError(f"{folder}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, bad in (("use_dora", True), ("fan_in_fan_out", True)):
        if config.get(key) == bad:
            raise LifecycleError(f"{folder}: {key} adapters are not supported by the exact LoRA fusions")
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise LifecycleError(f"{folder}: adapters with trained biases or modules_to_save are not supported")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path / WEIGHTS_FILE), "pt") as handle:
        for key in handle.keys():
            match = _KEY.match(key)
            if match is None:
                raise LifecycleError(f"{folder}: tensor '{key}' is not a LoRA A or B matrix")
            module = match["module"].removeprefix("base_model.model.")
            pairs.setdefault(module, {})[match["part"]] = handle.get_tensor(key)
    adapter = LoraAdapter(path, config)
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise LifecycleError(f"{folder}: module {module} has lora_{''.join(parts)} but not both A and B")
        a, b = parts["A"], parts["B"]
        rank = int(_pattern_value(config.get("rank_pattern"), module, config.get("r", a.shape[0])))
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank)))
        if a.shape[0] != rank or b.shape[1] != rank:
            raise LifecycleError(f"{folder}: module {module} has A {list(a.shape)} and B {list(b.shape)} for r={rank}")
        scaling = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        adapter.modules[module] = (a, b, scaling)
    if not adapter.modules:
        raise LifecycleError(f"{folder}: the adapter holds no LoRA matrices")
    return adapter


def check_against_base(adapters: list[LoraAdapter], base: str) -> dict[str, tuple[int, int]]:
    """Every adapted module exists in the base with the (out, in) shape of B A; returns those shapes."""
    from lifecycle.model.tensors import TensorReader

    shapes: dict[str, tuple[int, int]] = {}
    with TensorReader(base) as reader:
        names = set(reader.keys())
        for adapter in adapters:
            for module, (a, b, _) in adapter.modules.items():
                weight = f"{module}.weight"
                if weight not in names:
                    raise LifecycleError(f"LoRA {adapter.folder} adapts {module}, which base model {base} does not have "
                                         "(the adapter was trained on another base)")
                want = tuple(reader.shape(weight))
                got = (int(b.shape[0]), int(a.shape[1]))
                if got != want:
                    raise LifecycleError(f"LoRA {adapter.folder} does not fit base model {base}: {module} is {list(want)} "
                                         f"in the base but B·A is {list(got)}")
                shapes[module] = got
    return shapes


def lora_inputs(opts: Any) -> tuple[list[LoraAdapter], list[float], str]:
    """(adapters, weights, base) of a LoRA fusion config; weights default to 1 (a sum of updates)."""
    if opts.base_model is None:
        raise LifecycleError(f"merge_method {opts.merge_method} needs base_model (the model the adapters were trained on)")
    if opts.eval.tasks:
        raise LifecycleError(f"merge_method {opts.merge_method} writes an adapter, not a model; score base + adapter "
                             "separately (eval.tasks is not supported here)")
    entries = [m for m in opts.models if m.model != opts.base_model]
    if len(entries) < 2:
        raise LifecycleError(f"merge_method {opts.merge_method} fuses at least two LoRA adapters, got {len(entries)}")
    weights = []
    for entry in entries:
        w = (entry.parameters or {}).get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise LifecycleError(f"{opts.merge_method}: the weight of {entry.model} must be a number, got {w!r}")
        weights.append(float(w))
    if all(w == 0 for w in weights):
        raise LifecycleError(f"{opts.merge_method}: every adapter's weight is 0: nothing would be merged")
    adapters = [read_adapter(e.model) for e in entries]
    check_against_base(adapters, opts.base_model)
    return adapters, weights, opts.base_model


def write_adapter(output: str | Path, template: dict, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  rank: int, lineage: dict, *, overwrite: bool = False) -> Path:
    """Write a peft LoRA adapter (scaling 1: ``lora_alpha = r``) beside a temp folder, then move it into place."""
    from safetensors.torch import save_file

    from lifecycle.model.io import prepare_output_dir

    out = prepare_output_dir(output, overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        flat = {}
        for module, (a, b) in tensors.items():
            flat[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
            flat[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
        save_file(flat, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {**template, "r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
                  "target_modules": sorted(tensors),  # full names: exactly these modules
                  "layers_to_transform": None, "layers_pattern": None}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "lifecycle.json").write_text(json.dumps(lineage, indent=2, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fusion_lineage(opts: Any, adapters: list[LoraAdapter], weights: list[float], **extra: Any) -> dict:
    from lifecycle.model.card import new_lineage

    lineage = new_lineage(command="merge", method=opts.merge_method, parents=[str(a.folder) for a in adapters],
                          options=opts.model_dump(mode="json"), relation="merge")
    lineage["merge"] = {"method": opts.merge_method, "base_model": opts.base_model,
                        "parents": [{"model": str(a.folder), "weight": w} for a, w in zip(adapters, weights)], **extra}
    return lineage


__all__ = ["LoraAdapter", "check_against_base", "fusion_lineage", "lora_inputs", "read_adapter", "write_adapter"]
