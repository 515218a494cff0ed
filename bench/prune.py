"""Structured pruning on the real SmolLM2-135M and on a tiny model trained here.

Part ``smollm2`` (the issue's evidence): the built-in SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to
fp32) is pruned to ``--decoder-keep`` (default 70 %) of its non-embedding parameters by Adapt-Pruner,
uniform Taylor (LLM-Pruner style), FLAP-style and depth pruning, all with the *same* calibration blocks
and the *same* recovery-training budget (steps, batch, LR schedule, data order). For every method it
records real parameter counts, pruning time, peak RSS, and WikiText-2 perplexity plus lm-eval accuracy
(ARC-Easy, WinoGrande, LAMBADA, with stderr) before and after recovery; the unpruned model is scored
once as the reference.

Part ``tiny``: a ``tiny``-preset LLaMA is trained on Shakespeare here, then pruned to ``--tiny-keep`` of
its decoder by Adapt-Pruner one-shot (prune, then train ``S`` steps) and by Adapt-Accel with ``N``
stages (prune a slice, train a slice; ``S`` steps in total; ``auto`` = lifecycle's default of about 5 %
of the model per stage, with the per-stage reset and fresh calibration per step), over several seeds:
incremental vs one-shot at equal training tokens, scored by held-out loss on Shakespeare's validation
tail, with the per-seed paired difference.

FLAP runs at its own calibration size (``--flap-calib-samples 1024 --flap-calib-length 128``, FLAP's
``main.py --nsamples 1024`` of 128 tokens); the other methods at lifecycle's defaults unless
``--calib-samples`` is given.

The defaults are sized for a shared 2-core CPU (roughly 1–2 hours): a few thousand recovery tokens and
``--eval-limit`` items per task, so differences of a few accuracy points are *within* noise; the
JSON records every setting next to the numbers. Results are written after every phase, and
``--resume`` skips phases already in the output file.

    python bench/prune.py                                # both parts, defaults
    python bench/prune.py --part tiny                    # the tiny-model comparison only
    python bench/prune.py --part smollm2 --methods adapt,depth --eval-limit 50 --resume
    python bench/prune.py --quick --out /tmp/prune_quick.json   # a minutes-long smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("adapt", "taylor-uniform", "flap", "depth")
ACC_TASKS = ("arc_easy", "winogrande", "lambada")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    """The output JSON, rewritten atomically after every phase."""

    def __init__(self, path: Path, resume: bool, settings: dict):
        self.path = path
        self.data: dict[str, Any] = {}
        if resume and path.is_file():
            self.data = json.loads(path.read_text())
        self.data.setdefault("settings", {}).update(settings)
        self.data.setdefault("environment", {}).update(environment())

    def get(self, *keys: str) -> Any:
        node: Any = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def put(self, value: Any, *keys: str) -> None:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        self.data["environment"]["load_average_last_write"] = list(os.getloadavg())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def environment() -> dict[str, Any]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", "bench/prune.py", *sys.argv[1:]]),
    }


# -- scoring ---------------------------------------------------------------------------------------

def score_lm_eval(model, tokenizer, limit: int, wikitext_docs: int, batch_size: int) -> dict[str, Any]:
    """ARC-Easy / WinoGrande / LAMBADA (first ``limit`` items) and WikiText-2 (first docs)."""
    from lifecycle.eval.harness import evaluate

    started = time.perf_counter()
    out: dict[str, Any] = {}
    report = evaluate(model, tokenizer, list(ACC_TASKS), limit=limit or None, batch_size=batch_size, max_length=1024)
    out.update(report.scores)
    out["n_samples"] = report.settings.get("n_samples")
    if wikitext_docs != 0:  # -1: all 62 articles
        wiki = evaluate(model, tokenizer, ["wikitext"], limit=wikitext_docs if wikitext_docs > 0 else None,
                        batch_size=batch_size, max_length=1024)
        out.update(wiki.scores)
        out.setdefault("n_samples", {}).update(wiki.settings.get("n_samples") or {})
    out["eval_seconds"] = round(time.perf_counter() - started, 1)
    return out


@torch.no_grad()
def held_out_loss(model, blocks: torch.Tensor, batch: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch):
        b = blocks[start:start + batch]
        total += float(model(input_ids=b, labels=b).loss) * b.shape[0]
        count += b.shape[0]
    return total / max(count, 1)


def summary_row(scores: dict[str, Any]) -> dict[str, Any]:
    row = {}
    for task in ACC_TASKS:
        s = scores.get(task, {})
        row[task] = (s.get("acc"), s.get("acc_stderr"))
    row["lambada_ppl"] = scores.get("lambada", {}).get("perplexity")
    row["wikitext_word_ppl"] = scores.get("wikitext", {}).get("word_perplexity")
    return row


# -- part 1: SmolLM2-135M --------------------------------------------------------------------------

def run_smollm2(args, results: Results) -> None:
    from lifecycle.methods.prune.pipeline import PruneOptions, prune_model
    from lifecycle.data import pack
    from lifecycle.model.adapter import adapter_for
    from lifecycle.model.io import LoadedModel, load_model
    from lifecycle.train.engine import TrainConfig, train

    t0 = time.perf_counter()
    base = load_model("smollm2")
    log(f"loaded smollm2 in {time.perf_counter() - t0:.0f} s")
    adapter = adapter_for(base.model)
    counts = {"total": adapter.num_parameters(), "non_embedding": adapter.num_parameters(include_embeddings=False)}
    results.put(counts, "smollm2", "base", "params")
    if results.get("smollm2", "base", "scores") is None:
        log("scoring the unpruned model")
        results.put(score_lm_eval(base.model, base.tokenizer, args.eval_limit, args.wikitext_docs, args.eval_batch),
                    "smollm2", "base", "scores")

    recovery = TrainConfig(
        steps=args.recovery_steps, lr=args.recovery_lr, warmup_steps=max(1, args.recovery_steps // 10), schedule="wsd",
        decay_fraction=0.3, min_lr_ratio=0.1, micro_batch_size=args.micro_batch, grad_accum=1, eval_every=0,
        eval_blocks=16, weight_decay=0.0, seed=args.seed, log_every=max(1, args.recovery_steps // 4),
    )
    data = pack(args.data, base.tokenizer, args.block_size, val_fraction=0.05)
    results.put({"data": data.describe(), "train": recovery.model_dump(),
                 "tokens": args.recovery_steps * args.micro_batch * args.block_size}, "smollm2", "recovery_settings")

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        key = method
        if results.get("smollm2", key, "after") is not None:
            log(f"{key}: done already (--resume)")
            continue
        log(f"{key}: pruning")
        model = copy.deepcopy(base.model)
        loaded = LoadedModel(model=model, tokenizer=base.tokenizer, source="smollm2")
        extra: dict[str, Any] = {}
        if method == "taylor-uniform":
            extra["attention_ratio"] = args.uniform_attention_ratio
        stages = 1
        real_method = method
        if method == "adapt-accel":
            real_method, stages = "adapt", args.accel_stages
        calib_samples, calib_length = args.calib_samples, args.calib_length
        if method == "flap":  # FLAP's own calibration (main.py --nsamples 1024, 128-token samples), not Adapt-Pruner's
            calib_samples, calib_length = args.flap_calib_samples, args.flap_calib_length
        opts = PruneOptions(
            model="smollm2", output=str(Path(tempfile.gettempdir()) / f"bench-prune-{key}"), method=real_method,
            ratio=round(1 - args.decoder_keep, 6), data=args.data, calib_samples=calib_samples,
            calib_length=calib_length, calib_batch_size=args.calib_batch, step_fraction=args.adapt_step,
            amplitude=args.adapt_amplitude, stages=stages, use_cache=not args.no_cache,
            block_size=args.block_size,
            train=recovery.model_copy(update={"steps": args.recovery_steps if stages > 1 else 0}), **extra,
        )
        pruned, report, plan, history, _ = prune_model(opts, loaded, log=log)
        entry = {
            "params": report["params_after"],
            "decoder_kept": report["decoder_kept"],
            "checkpoint_form": report["checkpoint_form"],
            "pruning_seconds": report["pruning_seconds"],
            "memory": report["memory"],
            "calibration": report["calibration"],
            "plan": plan,
            "scores_cached": report.get("scores_cached"),
            "steps": len(report.get("steps") or []),
            "pruned_layers": report.get("pruned_layers"),
        }
        if stages > 1:
            entry["stages"] = report.get("stages")
            entry["note"] = "Adapt-Accel: the recovery budget is spread over the stages; 'before' is not measured"
            results.put(entry, "smollm2", key, "pruned")
        else:
            results.put(entry, "smollm2", key, "pruned")
            if results.get("smollm2", key, "before") is None:
                log(f"{key}: scoring before recovery")
                results.put(score_lm_eval(pruned, base.tokenizer, args.eval_limit, args.wikitext_docs, args.eval_batch),
                            "smollm2", key, "before")
            if args.recovery_steps > 0:
                log(f"{key}: recovery training, {args.recovery_steps} steps")
                with tempfile.TemporaryDirectory() as run_dir:
                    result = train(pruned, data, recovery, run_dir, progress=False)
                pruned = result.model
                results.put({"seconds": round(result.seconds, 1), "tokens": result.tokens_seen,
                             "final_train_loss": result.final_train_loss, "final_val_loss": result.final_val_loss},
                            "smollm2", key, "recovery")
            else:
                history = []
        if history:
            results.put({"final_train_loss": history[-1].get("train_loss"), "rows": len(history)}, "smollm2", key, "recovery")
        log(f"{key}: scoring after recovery")
        results.put(score_lm_eval(pruned, base.tokenizer, args.eval_limit, args.wikitext_docs, args.eval_batch),
                    "smollm2", key, "after")
        del model, pruned
    table = {}
    for key in ["base", *methods]:
        entry = results.get("smollm2", key) or {}
        table[key] = {
            "params": (entry.get("params") or entry.get("pruned", {}).get("params")),
            "before": summary_row(entry.get("before") or entry.get("scores") or {}),
            "after": summary_row(entry.get("after") or {}),
        }
    results.put(table, "smollm2", "summary")


# -- part 2: tiny model, incremental vs one-shot ---------------------------------------------------

def tiny_base(args) -> Path:
    """Train (once, cached) the tiny model every comparison starts from."""
    from lifecycle.commands.train import TrainOptions, run_train
    from lifecycle.paths import cache_dir

    out = cache_dir() / f"bench-prune-tiny-{args.tiny_base_steps}"
    if (out / "config.json").is_file():
        return out
    log(f"training the tiny base model ({args.tiny_base_steps} steps)")
    run_train(TrainOptions(
        config="tiny", data="shakespeare", tokenizer="bpe:4096", block_size=128, output=str(out), overwrite=True,
        train={"steps": args.tiny_base_steps, "lr": 3e-3, "warmup_steps": 20, "micro_batch_size": 16, "eval_every": 0},
    ))
    return out


def run_tiny(args, results: Results) -> None:
    from lifecycle.methods.prune.pipeline import PruneOptions, prune_model
    from lifecycle.data import pack
    from lifecycle.model.io import load_model

    base_dir = tiny_base(args)
    base = load_model(str(base_dir))
    data = pack("shakespeare", base.tokenizer, 128, val_fraction=0.05)
    val = data.validation[: args.tiny_val_blocks]
    base_loss = held_out_loss(base.model, val)
    results.put({"checkpoint": str(base_dir), "held_out_loss": base_loss, "val_blocks": int(val.shape[0]),
                 "params": sum(p.numel() for p in base.model.parameters())}, "tiny", "base")
    tokens = args.tiny_steps * 8 * 128
    results.put({"decoder_keep": args.tiny_keep, "recovery_steps": args.tiny_steps, "recovery_tokens": tokens,
                 "stages": args.tiny_stages, "seeds": args.tiny_seeds, "calib_samples": args.tiny_calib_samples,
                 "adapt_step": args.tiny_adapt_step, "adapt_amplitude": args.tiny_adapt_amplitude,
                 "stage_sparsity": args.tiny_stage_sparsity}, "tiny", "settings")
    # Adapt-Pruner knobs of the tiny runs (None = lifecycle's defaults: 512 × 64 fresh calibration per step)
    adapt_kw = {"calib_samples": args.tiny_calib_samples, "calib_length": 64, "step_fraction": args.tiny_adapt_step,
                "amplitude": args.tiny_adapt_amplitude, "stage_sparsity": args.tiny_stage_sparsity}
    for seed in range(args.tiny_seeds):
        for label in ["1", *args.tiny_stages]:
            stages = None if label == "auto" else int(label)  # auto: ~5 % of the model per stage
            key = f"stages={label},seed={seed}"
            if results.get("tiny", "runs", key) is not None:
                continue
            loaded = load_model(str(base_dir))
            opts = PruneOptions(
                model=str(base_dir), output=str(Path(tempfile.gettempdir()) / "bench-prune-tiny-out"), method="adapt",
                ratio=round(1 - args.tiny_keep, 6), data="shakespeare", stages=stages, channel_round=4, min_channels=4,
                block_size=128, use_cache=False, **adapt_kw,
                train={"steps": args.tiny_steps, "lr": 1e-3, "warmup_steps": 5, "schedule": "wsd", "decay_fraction": 0.3,
                       "micro_batch_size": 8, "eval_every": 0, "seed": seed, "weight_decay": 0.0},
            )
            t0 = time.perf_counter()
            pruned, report, _, history, _ = prune_model(opts, loaded, log=lambda m: None)
            loss = held_out_loss(pruned, val)
            results.put({"held_out_loss": loss, "params": report["params_after"], "seconds": round(time.perf_counter() - t0, 1),
                         "tokens": report["recovery"]["tokens_seen"], "stages": report["adapt_accel_stages"],
                         "prune_steps": len(report.get("steps") or [])}, "tiny", "runs", key)
            log(f"tiny {key}: held-out loss {loss:.4f}")
        if results.get("tiny", "one_shot_before", f"seed={seed}") is None:
            loaded = load_model(str(base_dir))
            opts = PruneOptions(model=str(base_dir), output=str(Path(tempfile.gettempdir()) / "bench-prune-tiny-out"),
                                method="adapt", ratio=round(1 - args.tiny_keep, 6), data="shakespeare", channel_round=4,
                                min_channels=4, use_cache=False, train={"steps": 0, "seed": seed}, **adapt_kw)
            pruned, *_ = prune_model(opts, loaded, log=lambda m: None)
            results.put(held_out_loss(pruned, val), "tiny", "one_shot_before", f"seed={seed}")
    runs = results.get("tiny", "runs") or {}
    summary = {}
    for label in ["1", *args.tiny_stages]:
        chosen = {k: v for k, v in runs.items() if k.startswith(f"stages={label},")}
        losses = [v["held_out_loss"] for v in chosen.values()]
        if losses:
            mean = sum(losses) / len(losses)
            sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / max(len(losses) - 1, 1))
            summary[f"stages={label}"] = {"mean_loss": mean, "sd": sd, "n": len(losses), "ppl": math.exp(mean),
                                          "stages_used": sorted({v.get("stages") for v in chosen.values()}, key=str)}
    one_shot = {k.split(",")[1]: v["held_out_loss"] for k, v in runs.items() if k.startswith("stages=1,")}
    for label in args.tiny_stages:  # paired by seed: incremental minus one-shot
        diffs = [v["held_out_loss"] - one_shot[k.split(",")[1]] for k, v in runs.items()
                 if k.startswith(f"stages={label},") and k.split(",")[1] in one_shot]
        if len(diffs) >= 2:
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
            summary[f"stages={label}"]["paired_minus_one_shot"] = {
                "mean": mean, "sd": sd, "n": len(diffs), "t": mean / (sd / math.sqrt(len(diffs))) if sd > 0 else None}
    results.put(summary, "tiny", "summary")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["smollm2", "tiny", "all"], default="all")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list; add adapt-accel for the staged variant")
    p.add_argument("--decoder-keep", type=float, default=0.70)
    p.add_argument("--data", default="wikitext", help="calibration and recovery data for SmolLM2")
    p.add_argument("--calib-samples", type=int, default=None,
                   help="calibration blocks per draw (default: lifecycle's, 512 for adapt, 128 for the others)")
    p.add_argument("--calib-length", type=int, default=64)
    p.add_argument("--flap-calib-samples", type=int, default=1024, help="FLAP's own calibration size (main.py --nsamples)")
    p.add_argument("--flap-calib-length", type=int, default=128)
    p.add_argument("--calib-batch", type=int, default=8)
    p.add_argument("--adapt-step", type=float, default=0.02, help="Adapt-Pruner Δ (the reference scripts' 0.02)")
    p.add_argument("--adapt-amplitude", type=float, default=0.02, help="Adapt-Pruner A (the reference scripts' 0.02)")
    p.add_argument("--accel-stages", type=int, default=4)
    p.add_argument("--uniform-attention-ratio", type=float, default=1 / 3, help="taylor-uniform: KV groups removed per layer")
    p.add_argument("--recovery-steps", type=int, default=32)
    p.add_argument("--recovery-lr", type=float, default=2e-4)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-limit", type=int, default=200, help="items per accuracy task; 0 = all")
    p.add_argument("--wikitext-docs", type=int, default=2, help="WikiText-2 articles; 0 = skip, -1 = all 62")
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--no-cache", action="store_true", help="recompute importance scores")
    p.add_argument("--tiny-base-steps", type=int, default=400)
    p.add_argument("--tiny-keep", type=float, default=0.5)
    p.add_argument("--tiny-steps", type=int, default=100)
    p.add_argument("--tiny-stages", nargs="+", default=["auto"],
                   help="stage counts compared with one-shot; auto = lifecycle's ~5 %% of the model per stage")
    p.add_argument("--tiny-calib-samples", type=int, default=None, help="default: lifecycle's (512 per step)")
    p.add_argument("--tiny-adapt-step", type=float, default=0.02)
    p.add_argument("--tiny-adapt-amplitude", type=float, default=0.02)
    p.add_argument("--tiny-stage-sparsity", choices=["reset", "carry"], default="reset")
    p.add_argument("--tiny-seeds", type=int, default=3)
    p.add_argument("--tiny-val-blocks", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (smoke test, numbers meaningless)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "prune.json"))
    args = p.parse_args()
    if args.quick:
        args.calib_samples, args.calib_length, args.recovery_steps, args.eval_limit = 4, 32, 2, 5
        args.flap_calib_samples, args.flap_calib_length, args.tiny_calib_samples = 4, 32, 8
        args.wikitext_docs, args.tiny_base_steps, args.tiny_steps, args.tiny_seeds = 1, 20, 8, 1
        args.adapt_step = args.adapt_amplitude = 0.1
        args.accel_stages = 2
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "out")}
    results = Results(Path(args.out), args.resume, settings)
    started = time.perf_counter()
    if args.part in ("tiny", "all"):
        run_tiny(args, results)
    if args.part in ("smollm2", "all"):
        run_smollm2(args, results)
    results.put(round(time.perf_counter() - started, 1), "wall_seconds")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
