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
    OMP_NUM_THREADS=1 python bench/continual.py --cost --model smollm2                     # OSFT's cost vs seq-ft (below)
    OMP_NUM_THREADS=1 python bench/continual.py --smollm2                                  # one SmolLM2 order (below)

``--cost``: what OSFT costs against plain full fine-tuning on one model (the issue's "SVD time per
task boundary, step time and memory"). Each arm (``seq-ft``, ``osft``) runs in its own subprocess, so
its peak resident memory is its own: the model is loaded, the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs`` ← 5), then one task boundary (OSFT: layer importance and the SVD of every
target matrix) and ``--cost-steps`` engine steps on the first dbpedia examples run, and the peak RSS
of that phase (``VmHWM``) is read. Step time is the median gap between consecutive ``after_step``
calls (the first step, which holds the optimizer set-up and OSFT's SVD, is excluded). The factor
memory is also *counted* from the ranks (elements × bytes), since RSS on a shared CPU is coarse.

``--smollm2``: a first data point on the real model, *one* task order (the standard dbpedia → amazon
→ yelp → agnews, yelp in place of the absent yahoo), seq-ft, O-LoRA and OSFT at equal examples and
steps, with the zero-shot model as the floor (scored in the seq-ft run). Sized to ~30 minutes of one
core: ``--sm-examples`` per task, one epoch at batch 4, ``--sm-limit`` test items per task. O-LoRA
keeps its paper settings (q/v, r 8, LR 1e-3); seq-ft and OSFT share ``--sm-lr``. One order and a
handful of examples: not the issue's evidence (≥ 3 orders), and differences of a few test items are
noise.
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


def _vm_hwm_kib() -> int | None:
    """Peak resident memory of this process since the last reset (Linux ``VmHWM``), KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def cost_arm(method: str, args) -> dict:
    """One arm of ``--cost`` in this process: load, reset the peak-RSS mark, one boundary + N steps."""
    import torch

    from lifecycle.methods.continual.base import TaskContext
    from lifecycle.methods.continual.options import ContinualOptions
    from lifecycle.methods.continual.pipeline import load_task_data
    from lifecycle.methods.continual.tasks import resolve_task
    from lifecycle.model.io import load_model
    from lifecycle.train.engine import train
    from lifecycle.train.hooks import TrainHooks

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    load_s = time.perf_counter() - t0
    model, tokenizer = loaded.model, loaded.tokenizer
    hwm_load = _vm_hwm_kib()
    with tempfile.TemporaryDirectory(prefix="bench-continual-cost-") as tmp:
        opts = ContinualOptions.model_validate({
            "model": args.model, "tasks": [args.cost_task], "output": str(Path(tmp) / "out"), "method": method,
            "max_train_examples": args.cost_steps * args.cost_batch, "max_length": args.max_length,
            "train": {"steps": args.cost_steps, "lr": 1e-5, "micro_batch_size": args.cost_batch, "seed": 0,
                      "log_every": 1}})
        task = resolve_task(args.cost_task)
        data = load_task_data(task, tokenizer, opts)
        reset = _reset_hwm()
        rss_start = _vm_hwm_kib()
        m = opts.registered_method.run(opts)
        ctx = TaskContext(0, [task], model, tokenizer, data, None, [data], opts, log=lambda s: None)
        started, cpu_started = time.perf_counter(), time.process_time()
        hooks = m.begin_task(ctx) or TrainHooks()
        boundary_s = time.perf_counter() - started
        stamps: list[float] = []
        cpu_stamps: list[float] = []
        factors: dict[str, int] = {}
        inner_step, inner_prepare = hooks.after_step, hooks.prepare_model

        def after_step(mod, step):
            if inner_step is not None:
                inner_step(mod, step)
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())

        def prepare(mod):
            mod = inner_prepare(mod) if inner_prepare is not None else mod
            from lifecycle.methods.continual.osft import OSFTLinear

            for sub in mod.modules():  # count what the model holds while it trains
                if isinstance(sub, OSFTLinear):
                    factors["frozen"] = factors.get("frozen", 0) + sum(b.numel() for b in (sub.U_high, sub.S_high, sub.V_high))
                    factors["trainable"] = factors.get("trainable", 0) + sum(p.numel() for p in (sub.U_low, sub.S_low, sub.V_low))
                    factors["dense_equivalent"] = factors.get("dense_equivalent", 0) + sub.in_features * sub.out_features
            factors["trainable_params"] = sum(p.numel() for p in mod.parameters() if p.requires_grad)
            factors["all_params_and_buffers"] = (sum(p.numel() for p in mod.parameters())
                                                 + sum(b.numel() for b in mod.buffers()))
            factors["bytes_per_element"] = next(mod.parameters()).element_size()
            return mod

        hooks.after_step, hooks.prepare_model = after_step, prepare
        result = train(ctx.model, data, opts.train, Path(tmp) / "run", hooks=hooks, progress=False)
        m.end_task(ctx)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        cpu_gaps = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
        peak = _vm_hwm_kib()
    boundaries = m.report().get("boundaries", [{}])
    return {"method": method, "model": args.model, "load_s": round(load_s, 1), "peak_rss_after_load_mib": (hwm_load or 0) / 1024,
            "hwm_reset": reset, "rss_at_phase_start_mib": (rss_start or 0) / 1024,
            "peak_rss_phase_mib": (peak or 0) / 1024, "boundary_s": round(boundary_s, 3),
            "svd_s": boundaries[0].get("svd_s") if boundaries else None,
            "importance_s": boundaries[0].get("importance_s") if boundaries else None,
            "preserved_ranks": boundaries[0].get("preserved_ranks") if boundaries else None,
            "first_step_s": round(stamps[0] - started, 2) if stamps else None,
            "step_s": [round(g, 3) for g in gaps], "step_s_median": statistics.median(gaps) if gaps else None,
            # CPU seconds of this one-thread process: less sensitive than wall time to the machine's load
            "step_cpu_s": [round(g, 3) for g in cpu_gaps],
            "step_cpu_s_median": statistics.median(cpu_gaps) if cpu_gaps else None,
            "first_step_cpu_s": round(cpu_stamps[0] - cpu_started, 2) if cpu_stamps else None,
            "svd_cpu_s": boundaries[0].get("svd_cpu_s") if boundaries else None,
            "importance_cpu_s": boundaries[0].get("importance_cpu_s") if boundaries else None,
            "train_s": round(result.seconds, 2), "steps": result.steps, "tokens_seen": result.tokens_seen,
            "counted": factors, "torch_threads": torch.get_num_threads()}


def cost_main(args) -> None:
    """Both arms, each in its own subprocess (peak RSS is per process); writes the JSON."""
    import subprocess

    started = time.perf_counter()
    arms = {}
    for method in ("seq-ft", "osft"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--cost-arm", method, "--model", args.model,
               "--cost-steps", str(args.cost_steps), "--cost-batch", str(args.cost_batch),
               "--cost-task", args.cost_task, "--max-length", str(args.max_length)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{method} arm failed:\n{proc.stderr[-3000:]}")
        arms[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        a = arms[method]
        print(f"{method:7s}: svd {a['svd_s']} s wall / {a['svd_cpu_s']} s CPU, step median {a['step_s_median']:.2f} s wall / "
              f"{a['step_cpu_s_median']:.2f} s CPU, "
              f"peak RSS {a['peak_rss_phase_mib']:.0f} MiB (after load {a['peak_rss_after_load_mib']:.0f})", flush=True)
    seq, osft = arms["seq-ft"], arms["osft"]
    c, b = osft["counted"], osft["counted"]["bytes_per_element"]
    ratios = {"step_time_osft_over_seqft": osft["step_s_median"] / seq["step_s_median"],
              "step_cpu_osft_over_seqft": osft["step_cpu_s_median"] / seq["step_cpu_s_median"],
              "peak_rss_phase_osft_minus_seqft_mib": osft["peak_rss_phase_mib"] - seq["peak_rss_phase_mib"],
              "factor_mib_counted": (c["frozen"] + c["trainable"]) * b / 2**20,
              "dense_targets_mib_counted": c["dense_equivalent"] * b / 2**20,
              # AdamW: a gradient and two moments per trainable element
              "grad_and_adam_mib_osft": 3 * c["trainable_params"] * b / 2**20,
              "grad_and_adam_mib_seqft": 3 * seq["counted"]["trainable_params"] * b / 2**20}
    out = {"command": f"OMP_NUM_THREADS=1 python bench/continual.py --cost --model {args.model} --cost-steps {args.cost_steps} "
                      f"--cost-batch {args.cost_batch} --max-length {args.max_length}",
           "settings": {k: getattr(args, k) for k in ("model", "cost_steps", "cost_batch", "cost_task", "max_length")},
           "arms": arms, "comparison": ratios, "total_s": round(time.perf_counter() - started, 1)}
    path = Path(args.cost_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(ratios, indent=1))
    print(f"wrote {path} ({out['total_s']} s)")


SMOLLM2_ORDER = ["dbpedia", "amazon", "yelp", "agnews"]  # O-LoRA order 1 with yelp in place of yahoo


def smollm2_main(args) -> None:
    """seq-ft, O-LoRA and OSFT on SmolLM2 over one order; the matrix, AA and BWT of each."""
    from lifecycle.commands import load_all
    from lifecycle.options import build_options

    steps = args.sm_examples // 4
    runs = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-continual-sm-") as tmp:
        os.environ.setdefault("LIFECYCLE_CACHE", str(Path(tmp) / "cache"))
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tmp) / "datasets"))
        for method in args.sm_methods.split(","):
            values = {"model": args.sm_model, "tasks": SMOLLM2_ORDER, "output": str(Path(tmp) / method), "overwrite": True,
                      "method": method, "limit": args.sm_limit, "max_train_examples": args.sm_examples,
                      "max_length": args.max_length, "zero_shot": method == "seq-ft",
                      "train": {"steps": steps, "lr": args.sm_lr, "micro_batch_size": 4, "seed": 0}}
            t0 = time.perf_counter()
            load_all()["continual"].run(build_options("continual", values))
            report = json.loads((Path(tmp) / method / "continual_report.json").read_text())
            report["wall_s"] = round(time.perf_counter() - t0, 1)
            runs[method] = report
            print(f"{method:7s}: AA {report['AA']:.3f} BWT {report['BWT']:+.3f} ({report['wall_s']} s)", flush=True)
    zero = next((r["zero_shot"] for r in runs.values() if r.get("zero_shot")), None)
    out = {"command": f"OMP_NUM_THREADS=1 python bench/continual.py --smollm2 --sm-model {args.sm_model} --sm-examples {args.sm_examples} --sm-limit {args.sm_limit} "
                      f"--sm-lr {args.sm_lr} --max-length {args.max_length} --sm-methods {args.sm_methods}",
           "order": SMOLLM2_ORDER, "examples_per_task": args.sm_examples, "steps_per_task": steps, "batch": 4,
           "test_items_per_task": args.sm_limit, "zero_shot": zero,
           "zero_shot_AA": statistics.mean(zero) if zero else None,
           "runs": {m: {k: r[k] for k in ("accuracy_matrix", "AA", "BWT", "forgetting", "timing", "wall_s", "method_report")}
                    for m, r in runs.items()},
           "total_s": round(time.perf_counter() - started, 1)}
    path = Path(args.sm_out)
    path.write_text(json.dumps(out, indent=1))
    print(f"zero-shot floor: {[round(v, 3) for v in zero] if zero else None}")
    print(f"wrote {path} ({out['total_s']} s)")


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
    parser.add_argument("--cost", action="store_true", help="OSFT vs seq-ft: boundary/SVD time, step time, peak RSS")
    parser.add_argument("--cost-arm", default=None, help=argparse.SUPPRESS)  # one arm, in its own subprocess
    parser.add_argument("--model", default="smollm2", help="--cost: the model")
    parser.add_argument("--cost-steps", type=int, default=6, help="--cost: engine steps per arm (the first is not timed)")
    parser.add_argument("--cost-batch", type=int, default=4)
    parser.add_argument("--cost-task", default="dbpedia")
    parser.add_argument("--cost-out", default=str(ROOT / "bench" / "results" / "continual_cost_smollm2.json"))
    parser.add_argument("--smollm2", action="store_true", help="seq-ft, O-LoRA, OSFT on SmolLM2, one 4-task order")
    parser.add_argument("--sm-examples", type=int, default=16, help="--smollm2: training examples per task (batch 4)")
    parser.add_argument("--sm-limit", type=int, default=10, help="--smollm2: test items per task")
    parser.add_argument("--sm-lr", type=float, default=1e-4, help="--smollm2: LR of seq-ft and OSFT")
    parser.add_argument("--sm-methods", default="seq-ft,olora,osft")
    parser.add_argument("--sm-model", default="smollm2", help="--smollm2: the model (a tiny folder for a smoke run)")
    parser.add_argument("--sm-out", default=str(ROOT / "bench" / "results" / "continual_smollm2_order1.json"))
    args = parser.parse_args()
    if args.smollm2:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        smollm2_main(args)
        return
    if args.cost_arm:
        print(json.dumps(cost_arm(args.cost_arm, args)))
        return
    if args.cost:
        cost_main(args)
        return
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
