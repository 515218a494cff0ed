"""Pruning targets and per-layer plans: how many KV groups and MLP channels every layer keeps.

A target is a total parameter count (embeddings included, a tied head counted once), given directly
(``--target-params 95M``), as a share of the decoder to remove (``--ratio 0.3`` removes 30 % of the
non-embedding parameters), or as a plan file. Parameter counts after a plan are computed analytically
(each KV group and MLP channel owns a known number of weights), so methods can search plans without
touching the model, and every bad request fails before any weight changes.

Plan file (YAML or JSON), one entry per decoder layer; every pruning run writes one
(``prune_plan.json``) that can be applied to another model of the same shape::

    num_key_value_heads: [3, 3, 2, 2, ...]   # KV groups kept (each with its query heads)
    intermediate_size: [1536, 1200, ...]     # MLP channels kept
    drop_layers: [20, 21]                    # optional: whole layers removed (depth pruning)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.prune.surgery import channel_params, drop_layers, group_params, prune_attention, prune_mlp
from lifecycle.model.adapter import DecoderAdapter

_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmbKMB]?)\s*$")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}


def parse_param_count(value: int | float | str) -> int:
    """``95000000``, ``95M``, ``0.095B``, ``9.5e7`` → 95000000."""
    if isinstance(value, bool):
        raise LifecycleError(f"target parameter count must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        count = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise LifecycleError(f"cannot read parameter count '{value}' (examples: 95000000, 95M, 0.1B)")
        count = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not math.isfinite(count) or count <= 0:
        raise LifecycleError(f"target parameter count must be positive, got {value}")
    return int(round(count))


def fmt_params(n: int | float) -> str:
    return f"{n / 1e6:.2f}M" if abs(n) >= 1e5 else f"{int(n):,}"


@dataclass
class LayerPlan:
    kv_groups: int
    channels: int


@dataclass
class Plan:
    """Widths kept per layer (indexed by the layer's position before any drop) and layers dropped."""

    layers: list[LayerPlan]
    drop: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "num_key_value_heads": [p.kv_groups for p in self.layers],
            "intermediate_size": [p.channels for p in self.layers],
            "drop_layers": sorted(self.drop),
        }


def current_plan(adapter: DecoderAdapter) -> Plan:
    return Plan([LayerPlan(adapter.attention_shape(i).num_kv_heads, adapter.mlp_projections(layer)["gate"].out_features)
                 for i, layer in enumerate(adapter.layers)])


@dataclass
class Costs:
    """What each structure of each layer holds, for analytic parameter counts."""

    total: int  # unique parameters of the model now
    non_embedding: int
    group: list[int]  # parameters per KV group, per layer
    channel: list[int]  # per MLP channel, per layer
    layer: list[int]  # whole layer

    @classmethod
    def of(cls, adapter: DecoderAdapter) -> "Costs":
        layer_totals = [sum(p.numel() for p in layer.parameters()) for layer in adapter.layers]
        return cls(
            total=adapter.num_parameters(),
            non_embedding=adapter.num_parameters(include_embeddings=False),
            group=[group_params(adapter, i) for i in range(len(adapter.layers))],
            channel=[channel_params(adapter, i) for i in range(len(adapter.layers))],
            layer=layer_totals,
        )

    def params_after(self, now: Plan, plan: Plan) -> int:
        """Total parameters once ``plan`` is applied to a model whose widths are ``now``."""
        removed = 0
        drop = set(plan.drop)
        for i, (cur, new) in enumerate(zip(now.layers, plan.layers)):
            if i in drop:
                removed += self.layer[i]
                continue
            removed += (cur.kv_groups - new.kv_groups) * self.group[i]
            removed += (cur.channels - new.channels) * self.channel[i]
        return self.total - removed

    def minimum(self, now: Plan, min_channels: int) -> int:
        """The smallest model width pruning may reach: one KV group and ``min_channels`` per layer."""
        floor = Plan([LayerPlan(1, min(min_channels, cur.channels)) for cur in now.layers])
        return self.params_after(now, floor)


def resolve_target(adapter: DecoderAdapter, *, target_params: Any = None, ratio: float | None = None) -> int:
    """The total parameter count to reach; one of ``target_params`` or ``ratio`` (share of the decoder)."""
    total = adapter.num_parameters()
    if target_params is not None:
        target = parse_param_count(target_params)
    elif ratio is not None:
        if not 0 < ratio < 1:
            raise LifecycleError(f"ratio must be between 0 and 1 (the share of decoder parameters to remove), got {ratio}")
        target = int(round(total - ratio * adapter.num_parameters(include_embeddings=False)))
    else:
        raise LifecycleError("give a target: --target-params, --ratio or --plan")
    if target >= total:
        raise LifecycleError(
            f"target {fmt_params(target)} parameters is not smaller than the model ({fmt_params(total)}); nothing to prune"
        )
    return target


def check_reachable(adapter: DecoderAdapter, target: int, min_channels: int) -> None:
    """Width pruning keeps at least one KV group (its heads) and some channels in every layer."""
    costs = Costs.of(adapter)
    floor = costs.minimum(current_plan(adapter), min_channels)
    if target < floor:
        raise LifecycleError(
            f"target {fmt_params(target)} is too small: keeping one KV group and {min_channels} MLP channels in each of "
            f"{len(adapter.layers)} layers already needs {fmt_params(floor)} parameters (every layer would lose all heads); "
            "use a larger target or depth pruning (--method depth)"
        )


def load_plan_file(path: str | Path, adapter: DecoderAdapter) -> Plan:
    """Read and validate a plan file against the model (layer count, GQA groups, widths)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise LifecycleError(f"plan file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LifecycleError(f"cannot read plan file {path}: {exc.strerror or exc}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise LifecycleError(
            f"plan file {path} is a binary file (a NUL byte at offset {nul}), not YAML/JSON; "
            "give a plan like the prune_plan.json a pruning run writes"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LifecycleError(
            f"plan file {path} is not UTF-8 text: byte {exc.start} (line {line}) is 0x{raw[exc.start]:02x}; "
            "re-encode it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise LifecycleError(f"plan file {path} is not valid YAML/JSON ({problem}{where}); fix the file") from None
    if not isinstance(data, dict):
        raise LifecycleError(f"plan file {path} must be a mapping with num_key_value_heads / intermediate_size")
    now = current_plan(adapter)
    n = len(now.layers)
    kv = data.get("num_key_value_heads", [p.kv_groups for p in now.layers])
    inter = data.get("intermediate_size", [p.channels for p in now.layers])
    drop = data.get("drop_layers", []) or []
    unknown = set(data) - {"num_key_value_heads", "intermediate_size", "drop_layers", "num_attention_heads"}
    if unknown:
        raise LifecycleError(f"plan file {path}: unknown keys {sorted(unknown)}")
    for name, values in (("num_key_value_heads", kv), ("intermediate_size", inter)):
        if not isinstance(values, list) or len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise LifecycleError(f"plan file {path}: {name} must list {n} integers, one per layer")
    if not isinstance(drop, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in drop):
        raise LifecycleError(f"plan file {path}: drop_layers must be a list of layer indices")
    heads = data.get("num_attention_heads")
    if heads is not None and (
        not isinstance(heads, list) or len(heads) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in heads)
    ):
        raise LifecycleError(f"plan file {path}: num_attention_heads must list {n} integers, one per layer")
    layers = []
    for i, (k, m, cur) in enumerate(zip(kv, inter, now.layers)):
        if i in drop:
            layers.append(LayerPlan(cur.kv_groups, cur.channels))
            continue
        if k < 1:
            raise LifecycleError(f"plan file {path}: layer {i} would lose all its heads (num_key_value_heads {k})")
        if k > cur.kv_groups:
            raise LifecycleError(f"plan file {path}: layer {i} has {cur.kv_groups} KV groups, cannot keep {k}")
        if m < 1 or m > cur.channels:
            raise LifecycleError(f"plan file {path}: layer {i} has {cur.channels} MLP channels, cannot keep {m}")
        layers.append(LayerPlan(k, m))
    if heads is not None:
        for i, (h, p) in enumerate(zip(heads, layers)):
            expected = p.kv_groups * adapter.attention_shape(i).group_size
            if i not in drop and h != expected:
                raise LifecycleError(
                    f"plan file {path}: layer {i} keeps {p.kv_groups} KV groups, i.e. {expected} query heads, not {h} "
                    "(GQA prunes whole groups)"
                )
    if drop and len(set(drop)) >= n:
        raise LifecycleError(f"plan file {path}: drop_layers removes every layer")
    if any(d < 0 or d >= n for d in drop):
        raise LifecycleError(f"plan file {path}: drop_layers must be between 0 and {n - 1}")
    return Plan(layers, sorted(set(drop)))


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, ties broken by position (deterministic)."""
    keep = max(0, min(int(keep), scores.numel()))
    order = torch.sort(-scores.double().cpu(), stable=True).indices[:keep]
    return torch.sort(order).values


def apply_plan(
    adapter: DecoderAdapter,
    plan: Plan,
    kv_scores: Sequence[torch.Tensor],
    channel_scores: Sequence[torch.Tensor],
    *,
    attn_means: Sequence[torch.Tensor] | None = None,
    mlp_means: Sequence[torch.Tensor] | None = None,
) -> None:
    """Keep, in every layer, the highest-scoring KV groups and channels the plan allows; then drop layers.

    ``attn_means``/``mlp_means`` (FLAP statistics) turn on bias compensation for what is removed.
    """
    for i, target in enumerate(plan.layers):
        if i in plan.drop:
            continue
        keep_kv = top_indices(kv_scores[i], target.kv_groups)
        prune_attention(adapter, i, keep_kv.tolist(), mean_input=attn_means[i] if attn_means is not None else None)
        keep_ch = top_indices(channel_scores[i], target.channels)
        prune_mlp(adapter, i, keep_ch, mean_input=mlp_means[i] if mlp_means is not None else None)
    if plan.drop:
        drop_layers(adapter, plan.drop)


def round_channels(count: float, multiple: int, current: int, minimum: int) -> int:
    """Channels kept, rounded to a multiple (hardware-friendly widths), never above ``current``."""
    multiple = max(1, int(multiple))
    rounded = int(round(count / multiple)) * multiple
    return int(min(current, max(minimum, rounded)))


def write_plan(path: Path, plan: Plan, extra: dict | None = None) -> None:
    path.write_text(json.dumps({**plan.to_json(), **(extra or {})}, indent=2))
