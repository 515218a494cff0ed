"""Logit MoE vs its experts vs a weight average: held-out loss per domain (issue 10, evidence).

Runs ``recipes/merge_logit_moe.yaml`` once per seed (the three train steps take the seed) in its own
work folder, then scores every output on held-out text: drama = the last 40k characters of
tinyshakespeare (the tail the trainer's packing keeps for validation; the experts may still have
seen part of it, see the docs), C = the first 40k characters of ``linux_c_valid.txt`` (a separate
file the C expert never trains on). Loss is the mean next-token cross-entropy over 64-token blocks.

    OMP_NUM_THREADS=1 flock /tmp/cpu.lock python bench/merge_logit_moe.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lifecycle, not whichever one is installed
RECIPE = ROOT / "recipes" / "merge_logit_moe.yaml"
MODELS = ("expert_drama", "expert_c", "moe", "moe_trained", "average")


def held_out() -> dict[str, str]:
    from lifecycle.paths import shared_data_dir

    corpora = shared_data_dir() / "corpora"
    return {"drama": (corpora / "tinyshakespeare.txt").read_text()[-40_000:],
            "c": (corpora / "linux_c_valid.txt").read_text()[:40_000]}


def loss(folder: Path, text: str, block: int = 64) -> float:
    import torch

    from lifecycle.model.io import load_model

    loaded = load_model(str(folder))
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    ids = torch.tensor(tokenizer.encode(text))
    blocks = ids[: len(ids) // block * block].view(-1, block)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), 32):
            batch = blocks[start:start + 32]
            logits = model(batch).logits[:, :-1].float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                   reduction="sum")
            total += float(ce)
            count += batch[:, 1:].numel()
    return total / count


def run_seed(seed: int, work: Path) -> dict[str, dict[str, float]]:
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / RECIPE.name  # the recipe's output_dir is relative: keep each seed's run in its folder
    recipe.write_text(RECIPE.read_text())
    overrides = [f"{step}.train.seed={seed}" for step in ("base", "expert_drama", "expert_c", "moe_trained")]
    started = time.time()
    subprocess.run([sys.executable, "-m", "lifecycle", "run", str(recipe), *overrides], cwd=work, check=True,
                   env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    print(f"seed {seed}: recipe ran in {time.time() - started:.0f} s", flush=True)
    texts = held_out()
    out = {}
    for name in MODELS:
        folder = work / "runs" / "merge_logit_moe" / name
        scores = {domain: loss(folder, text) for domain, text in texts.items()}
        scores["union"] = (scores["drama"] + scores["c"]) / 2
        out[name] = scores
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_merge_logit_moe"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merge_logit_moe.json")
    args = parser.parse_args()
    per_seed = {seed: run_seed(seed, args.work / f"seed{seed}") for seed in args.seeds}
    summary = {}
    for name in MODELS:
        summary[name] = {}
        for domain in ("drama", "c", "union"):
            values = [per_seed[s][name][domain] for s in args.seeds]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
            summary[name][domain] = {"mean": mean, "sd": sd}
    # paired per-seed differences: MoE minus the better expert on each domain, and MoE minus average
    paired = {}
    for domain in ("drama", "c", "union"):
        best = [min(per_seed[s]["expert_drama"][domain], per_seed[s]["expert_c"][domain]) for s in args.seeds]
        moe = [per_seed[s]["moe"][domain] for s in args.seeds]
        avg = [per_seed[s]["average"][domain] for s in args.seeds]
        paired[domain] = {"moe_minus_best_expert": [m - b for m, b in zip(moe, best)],
                          "moe_minus_average": [m - a for m, a in zip(moe, avg)]}
    print(f"{'model':<14}" + "".join(f"{d:>20}" for d in ("drama", "c", "union")))
    for name in MODELS:
        print(f"{name:<14}" + "".join(f"{summary[name][d]['mean']:>13.3f} ± {summary[name][d]['sd']:.3f}"
                                      for d in ("drama", "c", "union")))
    for domain, diffs in paired.items():
        print(f"{domain}: MoE − best expert per seed {['%.3f' % x for x in diffs['moe_minus_best_expert']]}; "
              f"MoE − average {['%.3f' % x for x in diffs['moe_minus_average']]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "seeds": args.seeds, "per_seed": per_seed,
                                    "summary": summary, "paired": paired}, indent=2) + "\n")


if __name__ == "__main__":
    main()
