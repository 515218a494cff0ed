"""Parity check: ``lifecycle eval`` (in-process) against lm-eval's own CLI on the same task files.

Both runs use the same rendered task YAMLs (lifecycle.eval.render_tasks), the same model file and
the same batch size / max length; the only difference is who loads the model and calls lm-eval.
The CLI runs from a scratch CWD, which also shows the rendered data paths are absolute.

    python bench/eval_parity.py                       # smollm2, arc_easy+lambada, first 100 items
    python bench/eval_parity.py --tasks copa --limit 20 --out /tmp/parity.json

Writes bench/results/eval_parity.json and prints a table (task, metric, ours, lm-eval CLI, diff).
Takes about 12 minutes on 2 CPU cores (two model loads, ~500 scored sequences each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_ours(model_spec: str, tasks: list[str], limit: int | float, batch_size: int, max_length: int) -> dict:
    import torch

    from lifecycle.eval import evaluate
    from lifecycle.model.io import load_model

    start = time.perf_counter()
    loaded = load_model(model_spec, dtype=torch.float32)
    loaded_at = time.perf_counter()
    report = evaluate(loaded.model, loaded.tokenizer, tasks, limit=limit, batch_size=batch_size, max_length=max_length)
    end = time.perf_counter()
    return {
        "scores": report.scores,
        "settings": report.settings,
        "load_s": round(loaded_at - start, 1),
        "eval_s": round(end - loaded_at, 1),
    }


def lm_eval_cli() -> list[str]:
    exe = Path(sys.executable).with_name("lm_eval")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "lm_eval"]


def run_cli(model_spec: str, tasks: list[str], limit: int | float, batch_size: int, max_length: int) -> dict:
    from lifecycle.eval import render_tasks
    from lifecycle.eval.harness import scores_from_results
    from lifecycle.model.io import resolve_model_spec

    folder, gguf = resolve_model_spec(model_spec)
    model_args = f"pretrained={folder},dtype=float32,max_length={max_length}"
    if gguf:
        model_args += f",gguf_file={gguf}"
    scratch = Path(tempfile.mkdtemp(prefix="lifecycle-parity-"))
    try:
        include = render_tasks(scratch / "tasks")
        out_dir = scratch / "out"
        cmd = [
            *lm_eval_cli(), "run", "--model", "hf", "--model_args", model_args,
            "--include_path", str(include), "--tasks", ",".join(tasks),
            "--limit", str(limit), "--batch_size", str(batch_size), "--output_path", str(out_dir),
        ]
        env = dict(os.environ)
        # the wikitext task refers to lifecycle.eval.harness functions (`!function`)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"lm-eval CLI failed with exit code {proc.returncode}")
        found = sorted(out_dir.rglob("results_*.json"))
        if not found:
            raise SystemExit(f"lm-eval CLI wrote no results under {out_dir}")
        raw = json.loads(found[-1].read_text())
        shown = [part if not part.startswith(str(scratch)) else "<scratch>" + part[len(str(scratch)):] for part in cmd]
        return {
            "scores": scores_from_results(raw["results"]),
            "n_samples": {t: v.get("effective") for t, v in raw.get("n-samples", {}).items()},
            "dataset_paths": {t: c.get("dataset_path") for t, c in raw.get("configs", {}).items()},
            "command": " ".join(shown),
            "seconds": round(seconds, 1),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compare(ours: dict, cli: dict) -> list[dict]:
    rows = []
    for task, metrics in ours.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            other = cli.get(task, {}).get(metric)
            stderr = metrics.get(f"{metric}_stderr")
            diff = None if other is None else value - other
            rows.append({
                "task": task, "metric": metric, "ours": value, "lm_eval_cli": other, "diff": diff, "stderr": stderr,
                "within_noise": diff is not None and (abs(diff) <= 1e-6 * max(1.0, abs(value)) or (stderr is not None and abs(diff) <= stderr)),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", default="arc_easy,lambada")
    parser.add_argument("--limit", type=float, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval_parity.json")
    args = parser.parse_args()
    limit: int | float = int(args.limit) if args.limit >= 1 and float(args.limit).is_integer() else args.limit
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    ours = run_ours(args.model, tasks, limit, args.batch_size, args.max_length)
    cli = run_cli(args.model, tasks, limit, args.batch_size, args.max_length)
    rows = compare(ours["scores"], cli["scores"])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lifecycle eval vs lm-eval CLI: {args.model}, limit {limit}, batch {args.batch_size}")
    for column in ("task", "metric", "ours", "lm-eval CLI", "diff", "± stderr"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for row in rows:
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(row["task"], row["metric"], fmt(row["ours"]), fmt(row["lm_eval_cli"]),
                      "" if row["diff"] is None else f"{row['diff']:+.4f}", fmt(row["stderr"]))
    Console().print(table)

    from lifecycle.model.card import package_versions

    result = {
        "what": "lifecycle.eval.evaluate (in-process HFLM) vs `lm_eval run` CLI on the same rendered task files",
        "model": args.model,
        "tasks": tasks,
        "limit": limit,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "ours": ours,
        "lm_eval_cli": cli,
        "rows": rows,
        "all_within_noise": all(r["within_noise"] for r in rows),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": package_versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}  (ours: load {ours['load_s']} s + eval {ours['eval_s']} s; CLI: {cli['seconds']} s)")


if __name__ == "__main__":
    main()
