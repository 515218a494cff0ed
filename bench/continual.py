"""Continual learning on the O-LoRA task collection with a tiny LLaMA: AA / BWT per method, and cost.

Every method runs through the real command (``lifecycle continual`` options, in process) at equal
examples and steps per task. The base is a tiny LLaMA initialised from a seed (no pretraining: this
CPU cannot afford SmolLM2 sequences for every method), with a BPE tokenizer trained on the tasks'
training sentences. Three tasks of the standard benchmark (dbpedia, amazon, agnews; the published
4-task orders need yahoo, absent here, and a 4-task run of every method does not fit this CPU's
budget), in three orders (the rotations); OSFT, O-LoRA and sequential fine-tuning run on all three,
one base seed per order, the other methods on order 1. The zero-shot floor is scored in the seq-ft
runs (the same base model as every other method of that order).

    OMP_NUM_THREADS=1 flock /tmp/cpu.lock python bench/continual.py            # writes bench/results/continual.json
    OMP_NUM_THREADS=1 python bench/continual.py --quick                         # 2 tasks, 2 methods, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

ORDERS = {  # rotations of O-LoRA order 1 without yahoo (dbpedia -> amazon -> agnews)
    1: ["dbpedia", "amazon", "agnews"],
    2: ["amazon", "agnews", "dbpedia"],
    3: ["agnews", "dbpedia", "amazon"],
}
MAIN = ["osft", "olora", "seq-ft"]
OTHERS = ["seq-lora", "l2", "ewc", "replay", "slca", "multitask"]
LORA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model(workdir: Path, seed: int, tasks: list[str]) -> Path:
    """A tiny LLaMA (seeded init) with a BPE tokenizer trained on the tasks' training sentences."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lifecycle.data.sources import Corpus
    from lifecycle.data.tokenizer import train_bpe
    from lifecycle.model.io import save_checkpoint
    from lifecycle.paths import shared_data_dir

    text = []
    for name in sorted(set(tasks)):
        with open(shared_data_dir() / "continual" / name / "train.jsonl") as fh:
            text += [json.loads(line)["sentence"] for _, line in zip(range(2000), fh)]
    tokenizer = train_bpe(Corpus(name="continual-tasks", train=["\n".join(text)]), 2048)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=96, intermediate_size=256,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save_checkpoint(model, tokenizer, workdir / f"base-{seed}", lineage={"command": "bench"}, overwrite=True)


def run_one(model: Path, tasks: list[str], method: str, seed: int, out: Path, args) -> dict:
    from lifecycle.commands import load_all
    from lifecycle.options import build_options

    values = {"model": str(model), "tasks": tasks, "output": str(out), "overwrite": True, "method": method,
              "limit": args.limit, "max_train_examples": args.examples, "max_length": args.max_length,
              "zero_shot": method == "seq-ft", "train": {"steps": args.steps, "lr": args.lr, "micro_batch_size": 8, "seed": seed}}
    if method in ("olora", "seq-lora"):
        values[method] = {"lr": args.lora_lr, "target_modules": LORA_ALL}
    started = time.perf_counter()
    load_all()["continual"].run(build_options("continual", values))
    report = json.loads((out / "continual_report.json").read_text())
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 tasks, osft and seq-ft, order 1 only")
    parser.add_argument("--orders", default="1,2,3")
    parser.add_argument("--examples", type=int, default=192, help="training examples per task")
    parser.add_argument("--steps", type=int, default=24, help="steps per task (batch 8: one epoch of 192)")
    parser.add_argument("--limit", type=int, default=20, help="test items per task")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-lr", type=float, default=5e-3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "continual.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    orders = {1: ORDERS[1][:2]} if args.quick else {k: ORDERS[k] for k in map(int, args.orders.split(","))}
    plan = [(m, o) for o in orders for m in (["osft", "seq-ft"] if args.quick else MAIN)]
    if not args.quick:
        plan += [(m, min(orders)) for m in OTHERS]
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-continual-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("LIFECYCLE_CACHE", str(workdir / "cache"))
        os.environ.setdefault("HF_DATASETS_CACHE", str(workdir / "datasets"))
        all_tasks = sorted({t for o in orders.values() for t in o})
        bases = {o: base_model(workdir, seed=o, tasks=all_tasks) for o in orders}
        for method, order in plan:
            report = run_one(bases[order], orders[order], method, order, workdir / f"{method}-{order}", args)
            boundaries = report["method_report"].get("boundaries", [])
            row = {"method": method, "order": order, "tasks": orders[order], "AA": report["AA"], "BWT": report["BWT"],
                   "forgetting": report["forgetting"], "accuracy_matrix": report["accuracy_matrix"],
                   "zero_shot": report["zero_shot"], "step_s": statistics.mean(t["step_s"] for t in report["timing"]),
                   "svd_s": [b.get("svd_s") for b in boundaries], "trainable_params": [b.get("trainable_params") for b in boundaries],
                   "wall_s": report["wall_s"]}
            runs.append(row)
            print(f"{method:10s} order {order}: AA {row['AA']:.3f} BWT {row['BWT'] if row['BWT'] is None else round(row['BWT'], 3)} "
                  f"({row['wall_s']} s)", flush=True)
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    zero = [statistics.mean(r["zero_shot"]) for r in runs if r["zero_shot"]]
    print(f"\n{'method':10s} {'orders':>6s} {'AA (mean ± sd)':>16s} {'BWT (mean ± sd)':>16s} {'step s':>7s}")
    print(f"{'zero-shot':10s} {len(zero):6d} {_stats(zero):>16s} {'':>16s} {'':>7s}")
    summary = {}
    for method, rows in by_method.items():
        aa = [r["AA"] for r in rows]
        bwt = [r["BWT"] for r in rows if r["BWT"] is not None]
        step = statistics.mean(r["step_s"] for r in rows)
        summary[method] = {"orders": [r["order"] for r in rows], "AA": aa, "BWT": bwt, "step_s": step}
        print(f"{method:10s} {len(rows):6d} {_stats(aa):>16s} {_stats(bwt):>16s} {step:7.3f}")
    paired = {}
    for other in ("seq-ft", "olora"):
        if "osft" in by_method and other in by_method and len(by_method["osft"]) == len(by_method[other]) > 1:
            diffs = [a["AA"] - b["AA"] for a, b in zip(by_method["osft"], by_method[other])]
            paired[f"osft-{other}"] = {"AA_diffs": diffs, "mean": statistics.mean(diffs), "sd": statistics.stdev(diffs)}
            print(f"paired AA, osft - {other} per order: {[round(d, 3) for d in diffs]}")
    result = {"settings": vars(args), "orders": orders, "runs": runs, "summary": summary, "paired": paired,
              "zero_shot_mean_AA": zero, "total_s": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['total_s']} s)")


if __name__ == "__main__":
    main()
