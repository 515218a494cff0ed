"""How fast the command line answers when it does no work: `--help`, a usage error, `--version`.

Each case runs the real CLI in a fresh interpreter `--reps` times; the table shows the median and
the slowest wall time. The target (issue: lazy imports) is `lifecycle --help` under 1 s.

    python bench/cli_startup.py                  # writes bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "lifecycle --help": ["--help"],
    "lifecycle --version": ["--version"],
    "lifecycle train --help": ["train", "--help"],
    "lifecycle train --frob (usage error)": ["train", "--frob"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    rows = {}
    for label, argv in CASES.items():
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lifecycle", *argv], capture_output=True, env=env, cwd=repo)
            times.append(time.perf_counter() - start)
        rows[label] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "runs": len(times)}
    print(f"{'command':40s} {'median':>8s} {'max':>8s}")
    for label, row in rows.items():
        print(f"{label:40s} {row['median_s']:7.2f}s {row['max_s']:7.2f}s")
    result = {"command": "python bench/cli_startup.py", "cases": rows, "target_help_s": 1.0,
              "help_under_target": rows["lifecycle --help"]["median_s"] < 1.0,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
