"""``lifecycle report``: one self-contained HTML page of a checkpoint's life, or of a whole recipe run.

The work is in :mod:`lifecycle.report`; this module declares the options, checks them before any
work, and says what was written. As a recipe step it takes the previous step's output like any other
command (``command: report`` at the end of a recipe reports the final model and all its ancestors).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lifecycle.commands import register
from lifecycle.errors import LifecycleError
from lifecycle.options import CommandOptions


class ReportOptions(CommandOptions):
    """Options of ``lifecycle report`` (also a recipe step)."""

    model: str = Field(..., description="checkpoint folder (with lifecycle.json) or recipe run folder (runs/<name>)")
    output: str = Field("report.html", description="HTML file to write (images inline: one file, readable offline)")
    png: str | None = Field(None, description="folder to write the same figures to as PNG files")
    title: str | None = Field(None, description="page title (default: the run's or the checkpoint's name)")


def preflight_report(opts: ReportOptions, *, pending_models: bool = False) -> None:
    """The input has a lineage to report, and the outputs are not folders or files in the way."""
    from lifecycle.report import find_checkpoints

    out = Path(opts.output).expanduser()
    if out.is_dir():
        raise LifecycleError(f"-o {opts.output} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    if opts.png is not None and Path(opts.png).expanduser().is_file():
        raise LifecycleError(f"--png {opts.png} is a file; give a folder for the PNG figures")
    if not pending_models:
        find_checkpoints(opts.model)


@register("report", ReportOptions, help="One self-contained HTML page: lineage graph, loss curves, scores, and each step's plan.",
          preflight=preflight_report)
def run_report(opts: ReportOptions) -> Path:
    """Write the report; returns the HTML file."""
    from rich.console import Console

    from lifecycle.report import write_report

    files = write_report(opts.model, opts.output, png_dir=opts.png, title=opts.title)
    steps = files.lineage.steps
    kept = sum(s.kind == "folder" for s in steps)
    Console().print(f"report of {len(steps)} models ({kept} with their folder, {len(steps) - kept} from cards or external)",
                    highlight=False)
    if files.pngs:
        Console().print(f"{len(files.pngs)} figures: {Path(opts.png or '.').expanduser()}", highlight=False, markup=False)
    return files.html


__all__ = ["ReportOptions", "preflight_report", "run_report"]
