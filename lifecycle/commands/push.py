"""``lifecycle push``: publish a finished checkpoint folder to the Hugging Face Hub.

The work is in :mod:`lifecycle.hub`; this module only declares the options and prints what was
(or, with ``dry_run``, would be) sent. There is deliberately no ``token`` option: tokens in recipe
files and shell history leak, so the token comes from ``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lifecycle.commands import register
from lifecycle.hub import PushReport, push_folder
from lifecycle.options import CommandOptions

# Above this many files the table shows the largest ones only; the totals still count every file.
_MAX_ROWS = 40


class PushOptions(CommandOptions):
    model: str = Field(description="checkpoint folder to upload (config.json, *.safetensors, tokenizer, README.md)")
    repo_id: str = Field(description="target model repo, 'namespace/name'; created if missing")
    private: bool = Field(True, description="create the repo private (an existing repo keeps its visibility)")
    revision: str | None = Field(None, description="branch to commit to (created if missing); default main")
    commit_message: str | None = Field(None, description="commit title; default 'Upload <folder> with lifecycle'")
    create_pr: bool = Field(False, description="open a pull request against the default branch instead of committing")
    dry_run: bool = Field(False, description="list what would be uploaded and contact nothing")


def print_report(report: PushReport) -> None:
    """Rich summary: files and sizes, total, what was left out, and where it went."""
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    console = Console()
    verb = "would upload" if report.dry_run else "uploaded"
    table = Table(title=f"{report.repo_id}: {verb} {len(report.files)} files", show_lines=False)
    table.add_column("file")
    table.add_column("size", justify="right")
    rows = report.files
    if len(rows) > _MAX_ROWS:
        rows = sorted(rows, key=lambda f: f.size, reverse=True)[:_MAX_ROWS]
    for item in rows:
        table.add_row(item.path, decimal(item.size))
    if len(rows) < len(report.files):
        table.add_row(f"... and {len(report.files) - len(rows)} smaller files", "")
    console.print(table)
    console.print(f"total: {decimal(report.total_bytes)} in {len(report.files)} files")
    if report.skipped:
        shown = ", ".join(report.skipped[:10]) + (" ..." if len(report.skipped) > 10 else "")
        console.print(f"left out ({len(report.skipped)}): {shown}", markup=False)
    where = report.revision or "main"
    visibility = "private" if report.private else "public"
    console.print(f"repo: {report.repo_url} ({visibility} if created, branch {where})", markup=False)
    console.print(f"token: {report.token_source or 'none found'}", markup=False)
    if report.pr_url:
        console.print(f"pull request: {report.pr_url}", markup=False)
    elif report.commit_url:
        console.print(f"commit: {report.commit_url}", markup=False)
    if report.dry_run:
        console.print("dry run: nothing was sent", markup=False)


@register(
    "push",
    PushOptions,
    help="Upload a checkpoint folder to a Hugging Face Hub model repo (private by default).",
    model_field="model",
)
def run(options: PushOptions) -> Path:
    report = push_folder(
        options.model,
        options.repo_id,
        private=options.private,
        revision=options.revision,
        commit_message=options.commit_message,
        create_pr=options.create_pr,
        dry_run=options.dry_run,
    )
    print_report(report)
    return report.folder
