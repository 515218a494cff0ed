"""V-Pretraining vs plain next-token prediction (and the paper's ablation arms) at equal learner budget.

Setting (the paper's in kind, scaled to 2 shared CPU cores): a ``tiny``-preset LLaMA learner (4 layers,
hidden 128), full-parameter, with a byte-level BPE (2,048 tokens) trained on GSM8K train + WikiText-2.
One base model is pretrained on WikiText-2 and GSM8K-free text once; then each arm continues from
it on the GSM8K-train stream ("Question: …\\nAnswer: …", loss on the answers), for the same steps and
tokens (same data order per seed):

- feedback: the first ``--feedback`` examples of GSM8K train (never in the stream);
- stream: the rest of GSM8K train;
- evaluation: teacher-forced answer NLL on the first ``--test`` GSM8K *test* problems (held out from both)
  and WikiText-2 test perplexity (the general cost). Exact match is not measured: a model of this size
  is at 0% (docs/vpretrain.md).

Per seed the arms differ only in their targets; the headline is each arm's mean NLL and the paired
differences against ``ntp`` over seeds (paired t-test). Wall-clock per arm is reported.

    OMP_NUM_THREADS=1 flock /tmp/cpu.lock python bench/vpretrain.py     # writes bench/results/vpretrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("ntp", "v-pretraining", "random-g-down", "uniform-topk", "self-topk")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_splits(folder: Path, feedback_n: int, test_n: int, stream_n: int | None, max_chars: int = 600) -> dict[str, Path]:
    """Prompt/completion JSONL files cut from the shared GSM8K files (read in place, written to a temp folder)."""
    from lifecycle.paths import shared_data_dir

    eval_dir = shared_data_dir() / "eval"
    # Problems short enough for one block of a 2,048-token BPE (question + answer ≤ max_chars characters).
    def short(rows: list[dict]) -> list[dict]:
        return [r for r in rows if len(r["question"]) + len(r["answer"]) <= max_chars]

    train, test = short(_rows(eval_dir / "gsm8k_train.jsonl")), short(_rows(eval_dir / "gsm8k_test.jsonl"))

    def dump(name: str, rows: list[dict]) -> Path:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"Question: {r['question']}\nAnswer:", "completion": r["answer"]}) + "\n"
                                for r in rows))
        return path

    stream = train[feedback_n:] if stream_n is None else train[feedback_n:feedback_n + stream_n]
    return {"feedback": dump("feedback", train[:feedback_n]), "stream": dump("stream", stream),
            "test": dump("test", test[:test_n])}


def answer_nll(model, tokenizer, path: Path, max_length: int) -> float:
    """Token-weighted teacher-forced NLL of the answers (loss on completion tokens only)."""
    from lifecycle.data import load_supervised
    from lifecycle.train.hooks import causal_lm_loss

    data = load_supervised(str(path), tokenizer, max_length, val_fraction=0.0)
    return _mean_loss(model, data, causal_lm_loss)


def _mean_loss(model, data, loss_fn, batch: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, data.num_train, batch):
            b = data.train_batch(torch.arange(start, min(start + batch, data.num_train)))
            logits = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask")).logits
            tokens = int((b["labels"][:, 1:] != -100).sum())
            total += float(loss_fn(logits, b["labels"])) * tokens
            count += tokens
    return total / max(count, 1)


def wikitext_ppl(model, tokenizer, block: int, blocks: int) -> float:
    import math

    from lifecycle.data import pack
    from lifecycle.data.sources import Corpus
    from lifecycle.paths import shared_data_dir
    from lifecycle.train.hooks import causal_lm_loss

    text = (shared_data_dir() / "eval" / "wikitext2_raw_test.txt").read_text()[:400_000]
    data = pack(Corpus(name="wikitext2-test", train=[text]), tokenizer, block, val_fraction=0.0)
    subset = SimpleNamespace(num_train=min(blocks, data.num_train), train_batch=data.train_batch)
    return math.exp(_mean_loss(model, subset, causal_lm_loss))


def build_base(args, tokenizer, run_root: Path):
    """One base model for every arm: the preset, pretrained briefly on general text (WikiText-2 valid)."""
    from lifecycle.data import pack
    from lifecycle.model.presets import build_model, make_config
    from lifecycle.train.engine import TrainConfig, train

    config = make_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model = build_model(config, seed=1234)
    data = pack("wikitext", tokenizer, args.block_size, val_fraction=0.0)
    cfg = TrainConfig(steps=args.base_steps, lr=2e-3, warmup_steps=10, micro_batch_size=8, eval_every=0, log_every=50)
    return train(model, data, cfg, run_root / "base", progress=False).model


def run_arm(arm: str, seed: int, base, tokenizer, splits, args, run_root: Path) -> dict:
    import copy

    from lifecycle.methods.vpretrain.options import VPretrainOptions
    from lifecycle.methods.vpretrain.pipeline import vpretrain_model

    method = {"random-g-down": "v-pretraining"}.get(arm, arm)
    values: dict = {"model": "bench-base", "output": str(run_root / f"{arm}-{seed}"), "method": method,
                    "data": str(splits["stream"]), "feedback": str(splits["feedback"]), "block_size": args.block_size,
                    "val_fraction": 0.0, "feedback_length": args.block_size, "lora": {"rank": 0},
                    "train": {"steps": args.steps, "lr": args.lr, "warmup_steps": 5, "micro_batch_size": args.batch,
                              "eval_every": 0, "seed": seed, "log_every": 10}}
    if method == "v-pretraining":
        values["v-pretraining"] = {"k": args.k, "alpha_max": 0.5, "designer_lr": args.designer_lr, "every": args.every,
                                   "burn_in": args.burn_in, "meta_length": args.block_size,
                                   "random_g_down": arm == "random-g-down"}
    elif method in ("uniform-topk", "self-topk"):
        values[method] = {"k": args.k, "alpha": args.fixed_alpha}
    opts = VPretrainOptions(**values)
    loaded = SimpleNamespace(model=copy.deepcopy(base), tokenizer=tokenizer, source="bench-base", lineage={})
    started = time.perf_counter()
    done = vpretrain_model(opts, loaded, run_root / f"run-{arm}-{seed}", log=lambda _: None, progress=False)
    seconds = time.perf_counter() - started
    targets = [r for r in done.rows if r.get("kind") == "targets"]
    updates = [r for r in done.rows if r.get("kind") == "designer"]
    return {"arm": arm, "seed": seed, "seconds": round(seconds, 1), "s_per_step": round(seconds / args.steps, 3),
            "tokens": done.train_result.tokens_seen,
            "test_answer_nll": answer_nll(done.model, tokenizer, splits["test"], args.block_size),
            "wikitext_ppl": wikitext_ppl(done.model, tokenizer, args.block_size, 24),
            "gate_mean_last": targets[-1]["gate_mean"] if targets else 0.0,
            "mass_off_true_mean": statistics.fmean(r["mass_off_true"] for r in targets) if targets else 0.0,
            "cosine_first_last": [updates[0]["cosine"], updates[-1]["cosine"]] if updates else None,
            "designer_updates": len(updates)}


def paired(results: list[dict], arm: str) -> dict:
    from scipy import stats

    by = {(r["arm"], r["seed"]): r["test_answer_nll"] for r in results}
    seeds = sorted({r["seed"] for r in results})
    diffs = [by[(arm, s)] - by[("ntp", s)] for s in seeds if (arm, s) in by and ("ntp", s) in by]
    out = {"arm": arm, "diff_vs_ntp": diffs, "mean_diff": statistics.fmean(diffs) if diffs else None}
    if len(diffs) >= 2:
        out["t_test_p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--designer-lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--burn-in", type=int, default=8)
    parser.add_argument("--fixed-alpha", type=float, default=0.1)
    parser.add_argument("--feedback", type=int, default=512)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--stream", type=int, default=None, help="GSM8K train rows in the stream (default: all the rest)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vpretrain.json"))
    args = parser.parse_args()

    from lifecycle.data import build_tokenizer, load_corpus
    from lifecycle.data.sources import Corpus

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    started = time.perf_counter()
    run_root = Path(tempfile.mkdtemp(prefix="vpretrain-bench-"))
    try:
        splits = write_splits(run_root, args.feedback, args.test, args.stream)
        gsm8k_text = [r["prompt"] + " " + r["completion"] for r in _rows(splits["stream"])]
        tokenizer = build_tokenizer("bpe:2048", Corpus(name="gsm8k-stream+wikitext",
                                                       train=gsm8k_text + load_corpus("wikitext").train))
        base = build_base(args, tokenizer, run_root)
        base_nll = answer_nll(base, tokenizer, splits["test"], args.block_size)
        results = []
        for seed in args.seeds:
            for arm in args.arms:
                row = run_arm(arm, seed, base, tokenizer, splits, args, run_root)
                results.append(row)
                print(f"seed {seed} {arm:14s} NLL {row['test_answer_nll']:.4f} ppl {row['wikitext_ppl']:.1f} "
                      f"{row['s_per_step']:.2f} s/step mass-off {row['mass_off_true_mean']:.3f}", flush=True)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    summary = []
    print(f"\nbase model answer NLL {base_nll:.4f}\n{'arm':15s} {'answer NLL':>11s} {'Δ vs ntp':>9s} {'p':>6s} "
          f"{'wiki ppl':>9s} {'s/step':>7s}")
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        test = paired(results, arm) if arm != "ntp" else {"mean_diff": 0.0}
        line = {"arm": arm, "answer_nll_mean": statistics.fmean(r["test_answer_nll"] for r in rows),
                "answer_nll_sd": statistics.stdev([r["test_answer_nll"] for r in rows]) if len(rows) > 1 else 0.0,
                "wikitext_ppl_mean": statistics.fmean(r["wikitext_ppl"] for r in rows),
                "s_per_step_mean": statistics.fmean(r["s_per_step"] for r in rows), **test}
        summary.append(line)
        p = line.get("t_test_p")
        print(f"{arm:15s} {line['answer_nll_mean']:11.4f} {line['mean_diff']:+9.4f} {p if p is None else round(p, 3)!s:>6s} "
              f"{line['wikitext_ppl_mean']:9.1f} {line['s_per_step_mean']:7.2f}")
    document = {"command": "OMP_NUM_THREADS=1 flock /tmp/cpu.lock python bench/vpretrain.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
        if k != "out" and v is not None),
        "settings": vars(args), "base_answer_nll": base_nll, "summary": summary, "runs": results,
        "seconds": round(time.perf_counter() - started, 1), "machine": platform.platform(),
        "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2))
    print(f"wrote {args.out} ({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
