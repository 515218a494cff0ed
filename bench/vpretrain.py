"""V-Pretraining vs plain next-token prediction (and the paper's ablation arms) at equal learner budget.

Setting (the issue's, scaled to one shared CPU core): a ``tiny``-preset LLaMA learner (4 layers, hidden
128), full-parameter, with a byte-level BPE (2,048 tokens) trained on GSM8K train + WikiText-2. One
base model is pretrained on WikiText-2 once; each arm then continues from it for the same learner
steps and tokens (same data order per seed):

- feedback: the first ``--feedback-share`` (12%) of GSM8K train (the paper used 1,024 solutions);
- stream: the rest of GSM8K train ("Question: …\\nAnswer: …", loss on the answers) mixed with
  WikiText-2 (``--mix-weight`` of the loss tokens, ``lifecycle vpretrain`` option ``mix``);
- evaluation, with the project's lm-eval tasks (``lifecycle eval --tasks gsm8k``): held-out GSM8K
  *test* answer NLL (``gsm8k_answer_nll``: nats per answer, the primary metric) on ``--test``
  problems and exact match of the final ``#### N`` by greedy generation (``gsm8k_exact_match``) on
  ``--em`` problems; WikiText-2 test perplexity (token level, ``--wiki-blocks`` blocks) as the
  general cost. Problems with question + answer over 600 characters are dropped everywhere so every
  example fits one block, and the task files are pointed at those filtered splits (``eval_dir``).

Each arm trains in its own subprocess (all seeds, one after another), so its memory is its own: the
peak resident set size *during the engine's training call* (Linux VmHWM, reset at the call's start
through ``/proc/self/clear_refs``; data loading and tokenizing peak higher than training itself, so
the process-wide ``ru_maxrss``, also recorded, hides the difference between arms). Step time and
tokens/s come from the engine's training time.
The parent evaluates the saved models. The headline is each arm's mean answer NLL and the paired
differences against ``ntp`` over seeds (paired t-test).

    OMP_NUM_THREADS=1 python bench/vpretrain.py     # writes bench/results/vpretrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("ntp", "v-pretraining", "random-g-down", "uniform-topk", "self-topk")
MAX_CHARS = 600


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_splits(folder: Path, feedback_share: float) -> dict[str, Path]:
    """Feedback / stream (prompt/completion JSONL) and the filtered test split as the gsm8k task reads it."""
    from lifecycle.paths import shared_data_dir

    eval_dir = shared_data_dir() / "eval"

    def short(rows: list[dict]) -> list[dict]:
        return [r for r in rows if len(r["question"]) + len(r["answer"]) <= MAX_CHARS]

    train, test = short(_rows(eval_dir / "gsm8k_train.jsonl")), short(_rows(eval_dir / "gsm8k_test.jsonl"))
    n_feedback = round(feedback_share * len(train))

    def dump(path: Path, rows: list[dict], raw: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r if raw else {"prompt": f"Question: {r['question']}\nAnswer:",
                                                          "completion": r["answer"]}) + "\n" for r in rows))
        return path

    return {"feedback": dump(folder / "feedback.jsonl", train[:n_feedback]),
            "stream": dump(folder / "stream.jsonl", train[n_feedback:]),
            # the gsm8k tasks read <eval_dir>/gsm8k_test.jsonl (and gsm8k_train.jsonl for few-shot, unused)
            "eval_dir": dump(folder / "eval" / "gsm8k_test.jsonl", test, raw=True).parent,
            "eval_train": dump(folder / "eval" / "gsm8k_train.jsonl", train, raw=True)}


# --- one arm, in its own process -----------------------------------------------------------------------

def arm_options(arm: str, seed: int, args: argparse.Namespace, splits: dict, run_root: Path):
    from lifecycle.methods.vpretrain.options import VPretrainOptions

    method = {"random-g-down": "v-pretraining"}.get(arm, arm)
    values: dict = {"model": "bench-base", "output": str(run_root / f"{arm}-{seed}"), "method": method,
                    "data": str(splits["stream"]), "feedback": str(splits["feedback"]), "block_size": args.block_size,
                    "mix": "wikitext", "mix_weight": args.mix_weight,
                    "val_fraction": 0.0, "feedback_length": args.block_size, "lora": {"rank": 0},
                    "train": {"steps": args.steps, "lr": args.lr, "warmup_steps": 5, "micro_batch_size": args.batch,
                              "eval_every": 0, "seed": seed, "log_every": 10}}
    if method == "v-pretraining":
        values["v-pretraining"] = {"k": args.k, "alpha_max": 0.5, "designer_lr": args.designer_lr, "every": args.every,
                                   "burn_in": args.burn_in, "meta_length": args.block_size,
                                   "random_g_down": arm == "random-g-down"}
    elif method in ("uniform-topk", "self-topk"):
        values[method] = {"k": args.k, "alpha": args.fixed_alpha}
    return VPretrainOptions(**values)


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measured_training(memory: dict):
    """The engine's ``train`` with the process's peak RSS (VmHWM) reset at its start and read at its end,
    so the peak is that of training alone (loading and tokenizing the data peak higher than NTP training)."""
    import lifecycle.train.engine as engine

    inner = engine.train

    def train(*a, **kw):
        memory["rss_at_train_start_mib"] = round(_status_mib("VmRSS"), 1)
        Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: resets VmHWM to the current RSS
        try:
            return inner(*a, **kw)
        finally:
            memory["peak_rss_in_train_mib"] = round(_status_mib("VmHWM"), 1)

    engine.train = train


def worker(args: argparse.Namespace) -> None:
    """Train one arm for every seed from the saved base; save each learner; report time and memory."""
    from lifecycle.methods.vpretrain.pipeline import vpretrain_model
    from lifecycle.model.io import load_model, save_checkpoint

    torch.set_num_threads(1)
    memory: dict = {}
    _measured_training(memory)
    run_root, splits = Path(args.run_root), json.loads(args.splits)
    splits = {k: Path(v) for k, v in splits.items()}
    rows = []
    for i, seed in enumerate(args.seeds):
        loaded = load_model(str(run_root / "base"))
        loaded = SimpleNamespace(model=loaded.model, tokenizer=loaded.tokenizer, source="bench-base", lineage={})
        memory.clear()
        opts = arm_options(args.worker, seed, args, splits, run_root)
        done = vpretrain_model(opts, loaded, run_root / f"run-{args.worker}-{seed}", log=lambda _: None, progress=False)
        ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process so far: loading included
        save_checkpoint(done.model, loaded.tokenizer, run_root / "models" / f"{args.worker}-{seed}",
                        lineage={"command": "bench"}, verify=False)
        seconds = float(done.report["seconds"])
        targets = [r for r in done.rows if r.get("kind") == "targets"]
        updates = [r for r in done.rows if r.get("kind") == "designer"]
        row = {"arm": args.worker, "seed": seed, "train_seconds": round(seconds, 2),
               "s_per_step": round(seconds / args.steps, 4), "tokens": done.train_result.tokens_seen,
               "tokens_per_s": round(done.train_result.tokens_seen / seconds, 1),
               "gate_mean_last": targets[-1]["gate_mean"] if targets else 0.0,
               "mass_off_true_mean": statistics.fmean(r["mass_off_true"] for r in targets) if targets else 0.0,
               "cosine_first_last": [updates[0]["cosine"], updates[-1]["cosine"]] if updates else None,
               "designer_updates": len(updates), "stream": {k: v for k, v in done.data.describe().items()
                                                            if k in ("train_examples", "train_tokens", "mix")},
               **memory}
        if i == 0:  # the first seed: only loading, data and training have run in this process
            row["ru_maxrss_first_seed_mib"] = round(ru_maxrss, 1)
        rows.append(row)
        print(f"{args.worker} seed {seed}: {row['s_per_step']:.3f} s/step, {row['tokens_per_s']:.0f} tok/s", flush=True)
    Path(args.worker_out).write_text(json.dumps(rows))


# --- evaluation in the parent --------------------------------------------------------------------------

def gsm8k_scores(model, tokenizer, eval_dir: Path, test: int, em: int) -> dict:
    """The project's gsm8k tasks on the filtered test split: answer NLL on ``test``, exact match on ``em``."""
    from lifecycle.eval import evaluate

    nll = evaluate(model, tokenizer, "gsm8k_answer_nll", limit=test, eval_dir=eval_dir, bootstrap_iters=0)
    out = {"answer_nll": nll.scores["gsm8k_answer_nll"]["answer_nll"],
           "n_nll": nll.settings["n_samples"]["gsm8k_answer_nll"]}
    if em:
        match = evaluate(model, tokenizer, "gsm8k_exact_match", limit=em, eval_dir=eval_dir, batch_size=em,
                         bootstrap_iters=0)
        scores = match.scores["gsm8k_exact_match"]
        out.update(em_strict=scores["exact_match_strict-match"], em_flexible=scores["exact_match_flexible-extract"],
                   n_em=match.settings["n_samples"]["gsm8k_exact_match"])
    return out


def wikitext_ppl(model, tokenizer, block: int, blocks: int) -> float:
    """Token-level perplexity on the first ``blocks`` blocks of WikiText-2 test."""
    import math

    from lifecycle.data import pack
    from lifecycle.data.sources import Corpus
    from lifecycle.paths import shared_data_dir
    from lifecycle.train.hooks import causal_lm_loss

    text = (shared_data_dir() / "eval" / "wikitext2_raw_test.txt").read_text()[:400_000]
    data = pack(Corpus(name="wikitext2-test", train=[text]), tokenizer, block, val_fraction=0.0)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, min(blocks, data.num_train), 8):
            b = data.train_batch(torch.arange(start, min(start + 8, blocks, data.num_train)))
            tokens = int((b["labels"][:, 1:] != -100).sum())
            total += float(causal_lm_loss(model(input_ids=b["input_ids"]).logits, b["labels"])) * tokens
            count += tokens
    return math.exp(total / max(count, 1))


def build_base(args: argparse.Namespace, tokenizer, run_root: Path):
    """One base model for every arm: the preset, pretrained briefly on general text (WikiText-2 train)."""
    from lifecycle.data import pack
    from lifecycle.model.presets import build_model, make_config
    from lifecycle.train.engine import TrainConfig, train

    config = make_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model = build_model(config, seed=1234)
    data = pack("wikitext", tokenizer, args.block_size, val_fraction=0.0)
    cfg = TrainConfig(steps=args.base_steps, lr=2e-3, warmup_steps=10, micro_batch_size=8, eval_every=0, log_every=50)
    return train(model, data, cfg, run_root / "base-run", progress=False).model


def paired(results: list[dict], arm: str, key: str) -> dict:
    from scipy import stats

    by = {(r["arm"], r["seed"]): r[key] for r in results}
    seeds = sorted({r["seed"] for r in results})
    diffs = [by[(arm, s)] - by[("ntp", s)] for s in seeds if (arm, s) in by and ("ntp", s) in by]
    out = {"diff_vs_ntp": diffs, "mean_diff": statistics.fmean(diffs) if diffs else None}
    if len(diffs) >= 2:
        out["t_test_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--designer-lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--burn-in", type=int, default=8)
    parser.add_argument("--fixed-alpha", type=float, default=0.1)
    parser.add_argument("--feedback-share", type=float, default=0.12)
    parser.add_argument("--mix-weight", type=float, default=0.3)
    parser.add_argument("--test", type=int, default=300, help="GSM8K test problems for the answer NLL")
    parser.add_argument("--em", type=int, default=24, help="GSM8K test problems for exact match (greedy generation, one batch)")
    parser.add_argument("--wiki-blocks", type=int, default=24)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vpretrain.json"))
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--run-root", help=argparse.SUPPRESS)
    parser.add_argument("--splits", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from lifecycle.data import build_tokenizer, load_corpus
    from lifecycle.data.sources import Corpus
    from lifecycle.model.io import load_model, save_checkpoint

    torch.set_num_threads(1)
    started = time.perf_counter()
    run_root = Path(tempfile.mkdtemp(prefix="vpretrain-bench-"))
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "run_root", "splits", "worker_out")}
    try:
        splits = write_splits(run_root, args.feedback_share)
        gsm8k_text = [r["prompt"] + " " + r["completion"] for r in _rows(splits["stream"])]
        tokenizer = build_tokenizer("bpe:2048", Corpus(name="gsm8k-stream+wikitext",
                                                       train=gsm8k_text + load_corpus("wikitext").train))
        base = build_base(args, tokenizer, run_root)
        save_checkpoint(base, tokenizer, run_root / "base", lineage={"command": "bench"})
        base_scores = {**gsm8k_scores(base, tokenizer, splits["eval_dir"], args.test, args.em),
                       "wikitext_ppl": wikitext_ppl(base, tokenizer, args.block_size, args.wiki_blocks)}
        print(f"base: {base_scores}", flush=True)
        passed = [a for k, v in vars(args).items() if k in settings and k != "out"
                  for a in ([f"--{k.replace('_', '-')}", *map(str, v)] if isinstance(v, list) else [f"--{k.replace('_', '-')}", str(v)])]
        results = []
        for arm in args.arms:
            out = run_root / f"worker-{arm}.json"
            subprocess.run([sys.executable, __file__, *passed, "--worker", arm, "--run-root", str(run_root),
                            "--splits", json.dumps({k: str(v) for k, v in splits.items()}), "--worker-out", str(out)],
                           check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            for row in json.loads(out.read_text()):
                model = load_model(str(run_root / "models" / f"{arm}-{row['seed']}")).model
                row.update(gsm8k_scores(model, tokenizer, splits["eval_dir"], args.test, args.em))
                row["wikitext_ppl"] = wikitext_ppl(model, tokenizer, args.block_size, args.wiki_blocks)
                results.append(row)
                print(f"seed {row['seed']} {arm:14s} answer NLL {row['answer_nll']:.3f} EM {row.get('em_strict')} "
                      f"ppl {row['wikitext_ppl']:.1f} {row['s_per_step']:.3f} s/step", flush=True)
        streams = {r["arm"]: r.pop("stream") for r in results}
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    summary = []
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        nll = [r["answer_nll"] for r in rows]
        first = next(r for r in rows if "ru_maxrss_first_seed_mib" in r)
        line = {"arm": arm, "answer_nll_mean": statistics.fmean(nll), "answer_nll_sd": statistics.stdev(nll) if len(nll) > 1 else 0.0,
                "em_strict_mean": statistics.fmean(r["em_strict"] for r in rows) if args.em else None,
                "em_flexible_mean": statistics.fmean(r["em_flexible"] for r in rows) if args.em else None,
                "wikitext_ppl_mean": statistics.fmean(r["wikitext_ppl"] for r in rows),
                "s_per_step_mean": statistics.fmean(r["s_per_step"] for r in rows),
                "tokens_per_s_mean": statistics.fmean(r["tokens_per_s"] for r in rows),
                "peak_rss_in_train_mib_mean": statistics.fmean(r["peak_rss_in_train_mib"] for r in rows),
                "rss_at_train_start_mib_mean": statistics.fmean(r["rss_at_train_start_mib"] for r in rows),
                "ru_maxrss_first_seed_mib": first["ru_maxrss_first_seed_mib"],
                **({"answer_nll": paired(results, arm, "answer_nll"), "wikitext_ppl": paired(results, arm, "wikitext_ppl")}
                   if arm != "ntp" else {})}
        summary.append(line)
    document = {"command": "OMP_NUM_THREADS=1 python bench/vpretrain.py " + " ".join(passed), "settings": settings,
                "metric": "answer_nll: -log p(answer | question) per GSM8K test answer, nats (lm-eval task gsm8k_answer_nll)",
                "base": base_scores, "stream": streams.get("ntp"), "summary": summary, "runs": results,
                "seconds": round(time.perf_counter() - started, 1), "machine": platform.platform(), "threads": 1}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} ({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
