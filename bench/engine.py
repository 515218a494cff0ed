"""Throughput of the training engine against a minimal hand-written torch loop.

Both sides train the ``tiny`` preset on the Shakespeare corpus from the same initial weights, with
the same AdamW settings and parameter groups, the same LR schedule, gradient clipping and the same
global batches (``epoch_order``), for the same number of steps. The engine runs with no held-out
evaluation (no validation split) and no checkpoints. Runs alternate (engine, loop, loop, engine,
...) after one untimed warm-up of each, so drift on a shared CPU hits both sides alike, and the
headline is the median over repetitions of engine time / loop time (the two runs of a repetition
see about the same outside load). Times cover the whole call, setup included (Accelerator,
prepare, final unwrap for the engine; optimizer creation for the loop). Both wall time and this
process's CPU time are recorded: on a shared machine CPU time is the steadier measure.

    python bench/engine.py                     # the defaults; writes bench/results/engine.json
    python bench/engine.py --steps 4 --reps 1 --out /tmp/quick.json   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(preset: str, block_size: int, seed: int):
    from lifecycle.data import build_tokenizer, load_corpus, pack
    from lifecycle.model.presets import make_config

    corpus = load_corpus("shakespeare")
    tokenizer = build_tokenizer("bpe:4096", corpus)
    data = pack(corpus, tokenizer, block_size, val_fraction=0.0)  # no validation split: no eval
    config = make_config(preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return data, config


def fresh_model(config, seed: int):
    from lifecycle.model.presets import build_model

    return build_model(config, seed=seed)


def run_engine(config, data, cfg, run_dir: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, final loss)."""
    from lifecycle.train.engine import train

    model = fresh_model(config, cfg.seed)
    start, cpu = time.perf_counter(), time.process_time()
    result = train(model, data, cfg, run_dir, progress=False)
    return time.perf_counter() - start, time.process_time() - cpu, float(result.final_train_loss)


def run_plain(config, data, cfg) -> tuple[float, float, float]:
    """What one would write by hand: same init, optimizer, schedule, clipping and batches."""
    from lifecycle.data.packing import epoch_order
    from lifecycle.train.engine import lr_at

    model = fresh_model(config, cfg.seed)
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
    )
    num_blocks = data.train.shape[0]
    global_batch = cfg.micro_batch_size * cfg.grad_accum
    order_cache: dict[int, torch.Tensor] = {}
    loss_value = float("nan")
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = 0.0
        for micro in range(cfg.grad_accum):
            offset = step * global_batch + micro * cfg.micro_batch_size
            idx = torch.arange(offset, offset + cfg.micro_batch_size)
            epochs, within = idx // num_blocks, idx % num_blocks
            chosen = torch.stack([
                order_cache.setdefault(int(e), epoch_order(num_blocks, cfg.seed, int(e)))[w]
                for e, w in zip(epochs.tolist(), within.tolist())
            ])
            batch = data.train[chosen]
            loss = model(input_ids=batch, labels=batch).loss
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = total
    return time.perf_counter() - start, time.process_time() - cpu, loss_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each side (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a shared CPU, OpenMP barriers turn other load into 3x swings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = parser.parse_args()

    import tempfile

    from rich.console import Console
    from rich.table import Table

    from lifecycle.train.engine import TrainConfig

    torch.set_num_threads(args.threads)
    data, config = build(args.preset, args.block_size, seed=0)
    cfg = TrainConfig(
        steps=args.steps, lr=1e-3, warmup_steps=2, micro_batch_size=args.micro_batch_size,
        grad_accum=args.grad_accum, eval_every=0, save_every=0, log_every=10, seed=0,
    )
    tokens = args.steps * args.micro_batch_size * args.grad_accum * args.block_size
    console = Console(width=110)
    work = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))

    # Warm-up (imports, allocator, first-call costs), then alternate the order every repetition.
    run_engine(config, data, cfg.model_copy(update={"steps": 2}), work / "warm")
    run_plain(config, data, cfg.model_copy(update={"steps": 2}))
    wall: dict[str, list[float]] = {"engine": [], "plain": []}
    cpu: dict[str, list[float]] = {"engine": [], "plain": []}
    losses: dict[str, float] = {}
    for rep in range(args.reps):
        order = ["engine", "plain"] if rep % 2 == 0 else ["plain", "engine"]
        for side in order:
            if side == "engine":
                seconds, cpu_seconds, loss = run_engine(config, data, cfg, work / f"run-{rep}")
            else:
                seconds, cpu_seconds, loss = run_plain(config, data, cfg)
            wall[side].append(seconds)
            cpu[side].append(cpu_seconds)
            losses[side] = loss
            console.print(f"rep {rep + 1}/{args.reps} {side:6s} wall {seconds:7.2f} s ({tokens / seconds:6.0f} tok/s)  "
                          f"cpu {cpu_seconds:7.2f} s  loss {loss:.4f}")

    med_wall = {side: statistics.median(ts) for side, ts in wall.items()}
    med_cpu = {side: statistics.median(ts) for side, ts in cpu.items()}
    tps = {side: tokens / med_wall[side] for side in med_wall}
    tps_cpu = {side: tokens / med_cpu[side] for side in med_cpu}
    # Each repetition runs both sides back to back, under about the same outside load: the median of
    # the per-repetition ratios is steadier than the ratio of the medians.
    overhead = statistics.median(e / p for e, p in zip(wall["engine"], wall["plain"])) - 1.0
    overhead_cpu = statistics.median(e / p for e, p in zip(cpu["engine"], cpu["plain"])) - 1.0
    table = Table(title=f"{args.preset} preset, {args.steps} steps x {tokens // args.steps} tokens, "
                        f"{torch.get_num_threads()} thread(s), median of {args.reps}")
    for col in ("loop", "tok/s wall", "tok/s CPU", "wall s each run", "final loss"):
        table.add_column(col, justify="left" if col == "loop" else "right")
    for side, label in (("plain", "plain torch loop"), ("engine", "lifecycle engine")):
        table.add_row(label, f"{tps[side]:.0f}", f"{tps_cpu[side]:.0f}", " ".join(f"{t:.1f}" for t in wall[side]),
                      f"{losses[side]:.4f}")
    table.add_row("engine / plain (paired)", f"{1 / (1 + overhead):.3f}", f"{1 / (1 + overhead_cpu):.3f}", "", "")
    console.print(table)
    verdict = "within" if max(overhead, overhead_cpu) <= 0.10 else "OVER"
    console.print(f"engine time overhead: wall {overhead * 100:+.1f}%, CPU {overhead_cpu * 100:+.1f}% "
                  f"({verdict} the 10% target); final losses differ by {abs(losses['engine'] - losses['plain']):.2e}")

    result = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "preset": args.preset,
        "parameters": sum(p.numel() for p in fresh_model(config, 0).parameters()),
        "steps": args.steps,
        "micro_batch_size": args.micro_batch_size,
        "grad_accum": args.grad_accum,
        "block_size": args.block_size,
        "tokens_per_run": tokens,
        "reps": args.reps,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "median_wall_seconds": med_wall,
        "median_cpu_seconds": med_cpu,
        "tokens_per_s_wall": tps,
        "tokens_per_s_cpu": tps_cpu,
        "engine_overhead_wall": overhead,  # median over repetitions of engine time / loop time, minus 1
        "engine_overhead_cpu": overhead_cpu,
        "within_10_percent": verdict == "within",
        "final_loss": losses,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    console.print(f"wrote {os.path.relpath(args.out, Path.cwd())}")


if __name__ == "__main__":
    main()
