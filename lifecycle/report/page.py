"""The report as one self-contained HTML page: inline CSS, figures as base64 PNG, no script, no links out.

Sections appear only where some step has something to show: the lineage graph and the step table
always; loss curves, the continual accuracy matrix, the pruning plan, the bit budget and the merge
weights where a step records them.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from typing import Callable

from lifecycle.display import compact as readable
from lifecycle.display import duration, size
from lifecycle.report import facts, figures
from lifecycle.report.collect import Lineage, Step
from lifecycle.report.figures import Figure

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-bottom: 0.4rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0 1rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f2f4f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.target td:first-child { font-weight: 600; }
figure { margin: 0.6rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85rem; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
.grid figure { flex: 1 1 30rem; }
code { font-size: 0.85em; }
"""


def _bytes(num_bytes: float | None) -> str:
    return "-" if num_bytes is None else size(int(num_bytes))


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{_e(fig.slug)}"><img src="data:image/png;base64,{data}" alt="{_e(fig.caption)}">'
            f"<figcaption>{_e(fig.caption)}</figcaption></figure>")


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, row_class: list[str] | None = None,
           table_id: str | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _change(value: float | None, before: float | None) -> str:
    if value is None or before is None:
        return "-"
    return ("+" if value - before >= 0 else "") + readable(value - before)


def step_table(lineage: Lineage) -> tuple[list[str], list[list[str]], list[str]]:
    """One row per step (external models left out): what it is, its size, its cost, its losses and
    scores, and the change in held-out loss from its first parent."""
    steps = [s for s in lineage.steps if s.kind != "external"]
    score_names = list(dict.fromkeys(name for s in steps for name in facts.scores(s)))
    headers = ["step", "command", "method", "parents", "parameters", "on disk", "tokens seen", "time", "train loss",
               "held-out loss", "Δ held-out", *score_names]
    rows, classes = [], []
    for step in steps:
        loss = facts.held_out_loss(step)
        parent = next((lineage.step(p) for p in step.parents), None)
        before = facts.held_out_loss(parent) if parent is not None and parent.kind != "external" else None
        scores = facts.scores(step)
        rows.append([
            step.name, step.command, step.method or "-", ", ".join(lineage.step(p).name for p in step.parents) or "-",
            readable(facts.parameters(step)), _bytes(facts.size_on_disk(step)), readable(facts.tokens_seen(step)),
            _seconds(facts.seconds(step)), readable(facts.train_loss(step)), readable(loss), _change(loss, before),
            *(readable(scores.get(name)) for name in score_names),
        ])
        classes.append("target" if step.key in lineage.finals else "")
    return headers, rows, classes


def _prune_table(step: Step) -> str:
    plan = facts.prune_plan(step) or {}
    before, after = plan.get("before") or {}, plan.get("after") or {}
    rows = []
    for key, title in figures.WIDTHS:
        if after.get(key):
            rows.append([title, " ".join(readable(v) for v in before.get(key) or []) or "-",
                         " ".join(readable(v) for v in after[key])])
    if plan.get("drop_layers"):
        rows.append(["dropped layers", "-", ", ".join(str(i) for i in plan["drop_layers"])])
    return _table(["per layer", "before", "after"], rows)


def _bits_table(step: Step) -> str:
    rows = [[str(r.get("part")), readable(r.get("params")), readable(r.get("bits")), readable(r.get("stored_bits")),
             _bytes((r.get("params") or 0) * (r.get("stored_bits") or 0) / 8)]
            for r in facts.bit_budget(step) or [] if isinstance(r, dict)]
    extra = {k: step.metrics.get(k) for k in ("method", "export", "converted_linears") if step.metrics.get(k) is not None}
    note = "<p>" + ", ".join(f"{_e(k)}: <code>{_e(readable(v))}</code>" for k, v in extra.items()) + "</p>" if extra else ""
    return note + _table(["part", "parameters", "bits per weight", "bits stored", "bytes stored"], rows, numeric={1, 2, 3, 4})


def _continual_table(step: Step) -> str:
    matrix = facts.accuracy_matrix(step) or {}
    rows = [[f"after {matrix['tasks'][i] if i < len(matrix['tasks']) and len(matrix['rows']) > 1 else 'training'}",
             *(readable(v) for v in row)] for i, row in enumerate(matrix.get("rows") or [])]
    if isinstance(matrix.get("zero_shot"), list):
        rows.insert(0, ["before (zero-shot)", *(readable(v) for v in matrix["zero_shot"])])
    summary = ", ".join(f"{_e(k)} <code>{_e(readable(v))}</code>" for k, v in matrix.get("summary", {}).items())
    return _table(["", *matrix.get("tasks", [])], rows) + (f"<p>{summary}</p>" if summary else "")


def _merge_table(step: Step, names: dict[str, str]) -> str:
    parents = facts.merge_parents(step) or []
    keys = list(dict.fromkeys(k for p in parents for k in p if k != "model"))
    rows = [[names.get(str(p.get("model")), str(p.get("model"))), str(p.get("model")),
             *(readable(p.get(k)) if not isinstance(p.get(k), (dict, list)) else str(p.get(k)) for k in keys)]
            for p in parents]
    settings = ", ".join(f"{_e(k)}: <code>{_e(readable(v))}</code>" for k, v in facts.merge_settings(step).items())
    return (f"<p>{settings}</p>" if settings else "") + _table(["parent", "model", *keys], rows)


def _per_step(lineage: Lineage, title: str, anchor: str, draw: Callable[[Step], Figure | None],
              table: Callable[[Step], str] | None, has: Callable[[Step], bool]) -> tuple[str, list[Figure]]:
    parts, made = [], []
    for step in lineage.steps:
        if not has(step):
            continue
        fig = draw(step)
        made += [fig] if fig is not None else []
        parts.append(f"<h3>{_e(step.name)}</h3>" + (_figure(fig) if fig is not None else "") + (table(step) if table else ""))
    if not parts:
        return "", []
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{"".join(parts)}</section>', made


def render(lineage: Lineage, *, title: str | None = None) -> tuple[str, list[Figure]]:
    """The page and every figure on it (the same PNG bytes ``--png`` writes)."""
    from lifecycle import __version__

    names = {s.key: s.name for s in lineage.steps}
    graph = figures.lineage_graph(lineage)
    made = [graph]
    headers, rows, classes = step_table(lineage)
    numeric = set(range(4, len(headers)))
    sections = [
        f'<section id="lineage"><h2>Lineage</h2>{_figure(graph)}</section>',
        f'<section id="steps"><h2>Steps and scores</h2><p class="meta">One row per model; the final checkpoints (those no other step '
        f"was made from) are in bold. Held-out loss is the last evaluation on the step's own validation split; Δ is the change from its first "
        f"parent. Scores are lm-eval headline results from each card.</p>"
        f"{_table(headers, rows, numeric=numeric, row_class=classes, table_id='score-table')}</section>",
    ]
    curves = [f for f in (figures.loss_curve(s) for s in lineage.steps) if f is not None]
    if curves:
        made += curves
        sections.append(f'<section id="curves"><h2>Loss curves</h2><div class="grid">{"".join(_figure(f) for f in curves)}</div></section>')
    for args in (
        ("Continual learning: accuracy matrix", "continual", figures.accuracy_heatmap, _continual_table,
         lambda s: facts.accuracy_matrix(s) is not None),
        ("Pruning plan: widths per layer", "pruning", figures.prune_widths, _prune_table, lambda s: facts.prune_plan(s) is not None),
        ("Quantization: bit budget", "quantization", figures.bit_budget, _bits_table, lambda s: facts.bit_budget(s) is not None),
        ("Merges: parents and weights", "merges", lambda s: figures.merge_weights(s, names), lambda s: _merge_table(s, names),
         lambda s: facts.merge_parents(s) is not None),
    ):
        text, figs = _per_step(lineage, *args)
        if text:
            sections.append(text)
            made += figs
    heading = title or f"lifecycle report: {lineage.run_name or lineage.step(lineage.targets[-1]).name}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(heading)}</h1><p class=\"meta\">{_e(lineage.source)} · {len(lineage.steps)} models · "
        f"made {when} by lifecycle {_e(__version__)}</p>{''.join(sections)}</body></html>\n"
    )
    return page, made


__all__ = ["render", "step_table"]
