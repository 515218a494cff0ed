"""``lifecycle report``: the life of a model on one page.

Given a checkpoint folder, or a recipe run folder holding several step outputs, :func:`collect`
gathers the lineage of every checkpoint and all its ancestors from their ``lifecycle.json`` cards
(from the ancestors' folders where they still exist, from the embedded ``history`` where they do
not), and :func:`write_report` renders one self-contained HTML file: the lineage graph, each step's
loss curve, the table of steps and scores, and where present the continual accuracy matrix, the
pruning plan, the quantization bit budget and the merge weights. Usable from Python; the CLI command
(:mod:`lifecycle.commands.report`) only calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lifecycle.report.collect import Lineage, Step, collect, find_checkpoints


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    pngs: list[Path]
    lineage: Lineage


def write_report(source: str | Path, output: str | Path, *, png_dir: str | Path | None = None,
                 title: str | None = None) -> ReportFiles:
    """Render the report of ``source`` to ``output`` (HTML) and, with ``png_dir``, each figure as a PNG.

    Everything is read and drawn before the first file is written, so bad input leaves nothing behind;
    the HTML is replaced atomically.
    """
    from lifecycle.model.card import write_text_atomic
    from lifecycle.report.page import render

    lineage = collect(source)
    page, figures = render(lineage, title=title)
    out = Path(output).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    if png_dir is not None:
        folder = Path(png_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for fig in figures:
            name, n = fig.slug, 2
            while name in used:  # two steps with one name (in different runs) keep both pictures
                name, n = f"{fig.slug}-{n}", n + 1
            used.add(name)
            path = folder / f"{name}.png"
            path.write_bytes(fig.png)
            pngs.append(path)
    write_text_atomic(out, page)
    return ReportFiles(html=out.resolve(), pngs=pngs, lineage=lineage)


__all__ = ["Lineage", "ReportFiles", "Step", "collect", "find_checkpoints", "write_report"]
