"""The report's figures, drawn with matplotlib (Agg) into PNG bytes: the HTML embeds them as base64 and
``--png`` writes the same bytes to files, so the two can never show different pictures.

The lineage graph is laid out here too (layers by depth, ordered by the parents' positions), so no
graphviz binary is needed.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from lifecycle.display import compact as readable
from lifecycle.report import facts
from lifecycle.report.collect import Lineage, Step

DPI = 110
_COLORS = {"folder": "#dbe9f6", "embedded": "#f3f3f3", "external": "#ffffff", "target": "#fde3b3"}


@dataclass
class Figure:
    """One picture: a file-name slug (for ``--png``), its caption and the PNG bytes."""

    slug: str
    caption: str
    png: bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "step"


# -- the lineage graph -----------------------------------------------------------------------------

def _layout(lineage: Lineage) -> dict[str, tuple[float, float]]:
    """(x, y) per step: x is the depth (longest path from a root), y spreads each layer evenly, in the
    order of the parents' mean position so that edges cross as little as a simple rule can manage."""
    depth: dict[str, int] = {}
    for step in lineage.steps:  # parents come first
        depth[step.key] = 1 + max((depth[p] for p in step.parents if p in depth), default=-1)
    layers: dict[int, list[str]] = {}
    for step in lineage.steps:
        layers.setdefault(depth[step.key], []).append(step.key)
    y: dict[str, float] = {}
    for d in sorted(layers):
        keys = layers[d]
        parents = {k: [y[p] for p in lineage.step(k).parents if p in y] for k in keys}
        keys.sort(key=lambda k: -sum(parents[k]) / len(parents[k]) if parents[k] else 0.0)  # the first goes on top
        for i, key in enumerate(keys):
            y[key] = (len(keys) - 1) / 2 - i
    return {k: (float(depth[k]), y[k]) for k in depth}


def _label(step: Step) -> str:
    if step.kind == "external":
        return f"{step.name}\n(external model)"
    what = step.command + (f"\n{step.method}" if step.method and step.method != step.command else "")
    return f"{step.name}\n{what}" + ("\n(folder gone)" if step.kind == "embedded" else "")


def lineage_graph(lineage: Lineage) -> Figure:
    """Boxes for the steps, arrows from parent to child; the report's own checkpoints highlighted."""
    plt = _pyplot()
    from matplotlib.patches import FancyBboxPatch

    pos = _layout(lineage)
    width = max(x for x, _ in pos.values()) + 1
    height = max(abs(y) for _, y in pos.values()) * 2 + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 2.7 * width), max(1.8, 1.25 * height)))
    box_w, box_h = 0.78, 0.62
    for step in lineage.steps:
        x, y = pos[step.key]
        for parent in step.parents:
            px, py = pos[parent]
            bend = 0.0 if x - px <= 1 else (0.3 if y >= py else -0.3)  # a long edge bows around the boxes between
            ax.annotate("", xy=(x - box_w / 2, y), xytext=(px + box_w / 2, py),
                        arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.2, "shrinkA": 2, "shrinkB": 2,
                                    "connectionstyle": f"arc3,rad={bend}"})
        color = _COLORS["target"] if step.key in lineage.finals else _COLORS[step.kind]
        ax.add_patch(FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.02",
                                    facecolor=color, edgecolor="#333333", linestyle="--" if step.kind != "folder" else "-"))
        ax.text(x, y, _label(step), ha="center", va="center", fontsize=8, wrap=True)
    ax.set_xlim(-0.55, width - 0.45)
    ax.set_ylim(-height / 2, height / 2)
    ax.axis("off")
    return Figure("lineage", "Lineage: each arrow goes from a parent to the model made from it", _png(fig))


# -- per-step figures ----------------------------------------------------------------------------------

def loss_curve(step: Step) -> Figure | None:
    rows = facts.curve(step)
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None and r.get("step") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None and r.get("step") is not None]
    if not train and not val:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.8)
    if val:
        ax.plot(*zip(*val), marker="o", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{step.name}: {step.command} loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Figure(f"loss-{slug(step.name)}", f"{step.name}: training loss and held-out loss by step", _png(fig))


def accuracy_heatmap(step: Step) -> Figure | None:
    matrix = facts.accuracy_matrix(step)
    if matrix is None:
        return None
    from lifecycle.methods.continual.metrics import heatmap_figure

    joint = str(step.method or "").endswith("multitask") or len(matrix["rows"]) == 1 < len(matrix["tasks"])
    fig = heatmap_figure(matrix["tasks"], matrix["rows"], f"{step.name}: accuracy matrix", joint=joint)
    return Figure(f"accuracy-{slug(step.name)}", f"{step.name}: accuracy on each task (columns) after training "
                  "each task in turn (rows)", _png(fig))


WIDTHS = (("intermediate_size", "MLP width"), ("num_key_value_heads", "KV heads"), ("num_attention_heads", "attention heads"))


def prune_widths(step: Step) -> Figure | None:
    """Bars per layer, before (grey) and after (blue), for each width the plan changes."""
    plan = facts.prune_plan(step)
    if plan is None:
        return None
    before, after = plan.get("before") or {}, plan.get("after") or {}
    dropped = set(plan.get("drop_layers") or [])
    shown = [(k, title) for k, title in WIDTHS if after.get(k) and (before.get(k) != after.get(k) or k == "intermediate_size")]
    if not shown:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(shown), 1, figsize=(6.0, 2.1 * len(shown)), squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], shown):
        old = list(before.get(key) or [])
        kept = [i for i in range(len(old)) if i not in dropped] if old else list(range(len(after[key])))
        new = dict(zip(kept, after[key]))
        layers = range(max(len(old), max(kept, default=-1) + 1))
        if old:
            ax.bar([i - 0.2 for i in layers], [old[i] if i < len(old) else 0 for i in layers], width=0.4, color="#bbbbbb",
                   label="before")
        ax.bar([i + (0.2 if old else 0) for i in layers], [new.get(i, 0) for i in layers], width=0.4 if old else 0.7,
               color="#3b75af", label="after")
        ax.set_ylabel(title, fontsize=8)
        ax.set_xticks(list(layers))
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("layer" + (f" (dropped: {', '.join(str(i) for i in sorted(dropped))})" if dropped else ""))
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_title(f"{step.name}: widths per layer", fontsize=10)
    return Figure(f"prune-{slug(step.name)}", f"{step.name}: the pruning plan, width of every layer", _png(fig))


def bit_budget(step: Step) -> Figure | None:
    """Stored bytes per part of the model, each bar labelled with its bits per weight."""
    rows = [r for r in facts.bit_budget(step) or [] if isinstance(r, dict) and r.get("params")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 0.7 + 0.55 * len(rows)))
    sizes = [(r["params"] * (r.get("stored_bits") or r.get("bits") or 0)) / 8 for r in rows]
    bars = ax.barh(range(len(rows)), sizes, color=["#3b75af", "#bbbbbb", "#8fb98b", "#d69f5c"][: len(rows)])
    ax.set_yticks(range(len(rows)), [str(r.get("part")).split(" (")[0] for r in rows], fontsize=8)
    for bar, row in zip(bars, rows):
        bits = row.get("bits")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f"  {readable(row['params'])} params × {readable(row.get('stored_bits'))} bits"
                + (f" ({readable(bits)} of information)" if bits not in (None, row.get("stored_bits")) else ""),
                va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bytes stored")
    ax.set_xlim(0, max(sizes) * 1.9 if max(sizes) else 1)
    ax.set_title(f"{step.name}: bit budget", fontsize=10)
    return Figure(f"bits-{slug(step.name)}", f"{step.name}: where the bits go", _png(fig))


def merge_weights(step: Step, names: dict[str, str]) -> Figure | None:
    """A merge's weight per parent, when its parents carry numeric weights."""
    parents = facts.merge_parents(step) or []
    weights = [(names.get(str(p.get("model")), str(p.get("model"))), p.get("weight")) for p in parents]
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for _, w in weights):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 0.6 + 0.45 * len(weights)))
    ax.barh(range(len(weights)), [w for _, w in weights], color="#3b75af")
    ax.set_yticks(range(len(weights)), [n for n, _ in weights], fontsize=8)
    ax.invert_yaxis()  # the first parent on top, as the table lists them
    ax.set_xlabel("weight")
    ax.set_title(f"{step.name}: {step.method or 'merge'} weights", fontsize=10)
    return Figure(f"merge-{slug(step.name)}", f"{step.name}: weight of each merged model", _png(fig))


__all__ = ["WIDTHS", "Figure", "accuracy_heatmap", "bit_budget", "lineage_graph", "loss_curve", "merge_weights", "prune_widths",
           "slug"]
