"""BitNet b1.58: what QAT buys, what it costs, and how our BitLinear compares with the authors' own.

Parts (``--part``, several allowed; results are written after every phase and ``--resume`` skips the
phases already in the output file):

``tiny``      A small LLaMA trained from scratch here on Shakespeare + WikiText-2 (valid split):
              fp32 vs b1.58 absmean vs b1.58 absmedian at the same size, and b1.58 absmean at 2×
              hidden (Reloaded's claim that 1.58-bit matches fp at twice the width). Same seed →
              same init draw and data order in every arm, so the seeds pair the arms; a paired t
              test (with its 95% CI) on the held-out loss. Loss curves as a PNG.
``smollm2``   The built-in SmolLM2-135M-Instruct (GGUF, dequantized to fp32): the fp reference,
              round-to-nearest ternary (no training), a short λ-warm-up QAT conversion, bitsandbytes
              NF4 and int8; each scored on WikiText-2 (all 62 test articles), ARC-Easy, LAMBADA and
              BoolQ (``--eval-limit`` items, default 500). Ternary models are scored from the packed
              checkpoint as transformers reloads it (eager), not from the training model.
``bitlinear`` Our BitLinear against the Reloaded authors' ``bitlinear`` package on the same weights
              and inputs: max |Δ| of the forward, and the training-step time ratio, in one run.
              The package is not a dependency: install it beside the bench only,
              ``python -m pip install --no-deps --target .cache/bench-bitlinear bitlinear==2.4.6``.
``size``      SmolLM2 packed ternary vs fp16: bytes on disk, linear-weight bits per weight, and
              inference tokens/s of the packed model vs fp32 on this CPU, in one run.

    python bench/quantize.py --part tiny                  # ~15 min on 2 idle cores
    python bench/quantize.py --part smollm2 --resume      # ~1 h on 2 cores
    python bench/quantize.py --part bitlinear --part size
    python bench/quantize.py --smoke --out /tmp/q.json    # every part on a tiny budget (code path only)
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from prune import Results, log  # noqa: E402  (the prune bench's atomic results file and logger)

ACC_TASKS = ("arc_easy", "lambada", "boolq")
# two-sided 95% Student t critical values, by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

TINY = {
    "full": dict(data="shakespeare+wikitext", tokenizer="bpe:2048", block=128, micro_batch=8, layers=4,
                 width=dict(hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2),
                 tokens=160_000, lr=2e-3, warmup=15, evals=8, eval_blocks=128),
    "smoke": dict(data="shakespeare", tokenizer="bpe:512", block=64, micro_batch=4, layers=2,
                  width=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
                  tokens=4_000, lr=2e-3, warmup=2, evals=2, eval_blocks=8),
}
TINY_ARMS = {  # name -> (scale method or None for fp32, width multiplier)
    "fp32": (None, 1), "b158_absmean": ("absmean", 1), "b158_absmedian": ("absmedian", 1), "b158_absmean_2x": ("absmean", 2),
}


def paired(diffs: list[float]) -> dict[str, Any]:
    """Paired t statistic and 95% CI of the mean of per-seed differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return {"n": n, "mean": mean}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = T95.get(n - 1, 1.96) * se
    return {"n": n, "mean": mean, "sd": sd, "t": mean / se if se > 0 else math.inf, "ci95": [mean - half, mean + half],
            "significant": (mean - half) > 0 or (mean + half) < 0, "diffs": diffs}


# -- part: tiny ------------------------------------------------------------------------------------

def run_tiny(args, results: Results) -> None:
    from lifecycle.data import build_tokenizer, load_corpus, pack
    from lifecycle.methods.quantize.bitlinear import LambdaState
    from lifecycle.methods.quantize.bitnet import BitnetOptions, convert
    from lifecycle.model.presets import build_model, make_config
    from lifecycle.train.engine import TrainConfig, train

    s = TINY["smoke" if args.smoke else "full"]
    corpus = load_corpus(s["data"])
    tokenizer = build_tokenizer(s["tokenizer"], corpus)
    data = pack(corpus, tokenizer, s["block"])
    steps = s["tokens"] // (s["micro_batch"] * s["block"])
    results.put({k: v for k, v in s.items()} | {"steps": steps, "arms": list(TINY_ARMS)}, "tiny", "settings")
    for seed in args.seeds:
        for arm, (scale, mult) in TINY_ARMS.items():
            key = f"{arm},seed={seed}"
            if results.get("tiny", "runs", key) is not None:
                continue
            width = {k: v * mult if k in ("hidden_size", "intermediate_size") else v for k, v in s["width"].items()}
            config = make_config(dict(width, num_hidden_layers=s["layers"]), len(tokenizer), eos_token_id=tokenizer.eos_token_id)
            model = build_model(config, seed=seed)
            if scale is not None:  # from scratch: quantized from the first step (λ = 1 throughout)
                convert(model, [], BitnetOptions(scale=scale), LambdaState(1.0))
            cfg = TrainConfig(steps=steps, lr=s["lr"], warmup_steps=s["warmup"], micro_batch_size=s["micro_batch"],
                              eval_every=max(steps // s["evals"], 1), eval_blocks=s["eval_blocks"], seed=seed,
                              log_every=max(steps // s["evals"], 1), weight_decay=0.0)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                out = train(model, data, cfg, Path(work) / "run", progress=False)
            curve = [[int(r["tokens"]), float(r["val_loss"])] for r in out.history if r.get("val_loss") is not None]
            row = {"held_out_loss": out.final_val_loss, "tokens": out.tokens_seen, "seconds": round(time.perf_counter() - t0, 1),
                   "params": sum(p.numel() for p in out.model.parameters()), "curve": curve}
            results.put(row, "tiny", "runs", key)
            log(f"tiny {key}: held-out loss {out.final_val_loss:.4f} ({row['seconds']} s, {row['params']:,} params)")
    summarize_tiny(results, args.seeds)
    plot_tiny(results, Path(args.out).with_suffix(".png"))


def summarize_tiny(results: Results, seeds: list[int]) -> None:
    runs = results.get("tiny", "runs") or {}
    loss = {arm: [runs[f"{arm},seed={s}"]["held_out_loss"] for s in seeds if f"{arm},seed={s}" in runs] for arm in TINY_ARMS}
    summary: dict[str, Any] = {"mean_loss": {a: sum(v) / len(v) for a, v in loss.items() if v}}
    comparisons = {  # (arm, baseline): positive mean = arm has the higher (worse) loss
        "b158_absmean - fp32": ("b158_absmean", "fp32"),
        "b158_absmedian - fp32": ("b158_absmedian", "fp32"),
        "b158_absmedian - b158_absmean": ("b158_absmedian", "b158_absmean"),
        "b158_absmean_2x - fp32": ("b158_absmean_2x", "fp32"),
    }
    summary["paired"] = {name: paired([x - y for x, y in zip(loss[a], loss[b])])
                         for name, (a, b) in comparisons.items() if loss[a] and len(loss[a]) == len(loss[b])}
    results.put(summary, "tiny", "summary")
    print(f"\n{'arm':<18} {'mean held-out loss':>18}   seeds")
    for arm, v in loss.items():
        if v:
            print(f"{arm:<18} {sum(v) / len(v):>18.4f}   {', '.join(f'{x:.4f}' for x in v)}")
    print(f"\n{'paired difference':<32} {'mean':>8} {'95% CI':>20} {'t':>7}")
    for name, p in summary["paired"].items():
        if "ci95" in p:
            print(f"{name:<32} {p['mean']:>+8.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] {p['t']:>7.2f}")


def plot_tiny(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results.get("tiny", "runs") or {}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, arm in enumerate(TINY_ARMS):
        for key, row in runs.items():
            if key.split(",")[0] == arm and row["curve"]:
                xs, ys = zip(*row["curve"])
                ax.plot(xs, ys, color=f"C{i}", alpha=0.7, label=arm if key.endswith("seed=0") else None)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("tiny LLaMA from scratch: fp32 vs BitNet b1.58 (one line per seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- part: smollm2 ---------------------------------------------------------------------------------

def score(model, tokenizer, args) -> dict[str, Any]:
    from lifecycle.eval.harness import evaluate

    started = time.perf_counter()
    report = evaluate(model, tokenizer, list(ACC_TASKS), limit=args.eval_limit or None, batch_size=8, max_length=1024)
    out: dict[str, Any] = dict(report.scores)
    n = dict(report.settings.get("n_samples") or {})
    wiki = evaluate(model, tokenizer, ["wikitext"], limit=args.wikitext_docs if args.wikitext_docs > 0 else None,
                    batch_size=8, max_length=1024)
    out.update(wiki.scores)
    n.update(wiki.settings.get("n_samples") or {})
    out["n_samples"] = n
    out["eval_seconds"] = round(time.perf_counter() - started, 1)
    return out


def _quantize(args, method: str, work: Path, **extra):
    from lifecycle.methods.quantize.pipeline import QuantizeOptions, quantize_model
    from lifecycle.model.io import load_model

    loaded = load_model(args.model)
    opts = QuantizeOptions(model=args.model, output=str(work / method), method=method, **extra)
    model, report, history, _ = quantize_model(opts, loaded, log=log)
    return model, loaded.tokenizer, report, history


def _reload_packed(model, tokenizer, folder: Path):
    """Save the packed model and score what transformers reloads (eagerly: see docs/quantize.md)."""
    from transformers import AutoModelForCausalLM

    from lifecycle.methods.quantize.export import eager_bitnet

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with eager_bitnet():
        return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")


def run_smollm2(args, results: Results) -> None:
    from lifecycle.methods.quantize.export import eager_bitnet
    from lifecycle.model.io import load_model

    results.put({"model": args.model, "eval_limit": args.eval_limit, "wikitext_docs": args.wikitext_docs,
                 "qat_steps": args.qat_steps, "qat_micro_batch": args.qat_micro_batch, "qat_block": args.qat_block,
                 "qat_data": args.qat_data, "qat_lr": args.qat_lr, "distill": args.distill}, "smollm2", "settings")
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    try:
        if results.get("smollm2", "fp32") is None:
            loaded = load_model(args.model)
            results.put(score(loaded.model, loaded.tokenizer, args), "smollm2", "fp32")
            log(f"fp32: {brief(results.get('smollm2', 'fp32'))}")
        arms = {
            "ternary_rtn": ("ternary-rtn", {}),
            "bitnet_qat": ("bitnet-b158", dict(
                data=args.qat_data, block_size=args.qat_block, distill=args.distill,
                train={"steps": args.qat_steps, "lr": args.qat_lr, "warmup_steps": max(args.qat_steps // 10, 1),
                       "micro_batch_size": args.qat_micro_batch, "eval_every": 0, "schedule": "cosine", "seed": 0},
                **{"bitnet-b158": {"lambda_warmup_steps": args.qat_steps // 2}})),
            "bnb_nf4": ("bnb-nf4", {}),
            "bnb_int8": ("bnb-int8", {}),
        }
        for arm, (method, extra) in arms.items():
            if arm not in args.arms or results.get("smollm2", arm) is not None:
                continue
            t0 = time.perf_counter()
            model, tokenizer, report, history = _quantize(args, method, work, **extra)
            seconds = round(time.perf_counter() - t0, 1)
            if method in ("ternary-rtn", "bitnet-b158"):
                model = _reload_packed(model, tokenizer, work / f"{arm}-packed")
                with eager_bitnet():
                    row = score(model, tokenizer, args)
            else:
                row = score(model, tokenizer, args)
            row["quantize_seconds"] = seconds
            row["report"] = {k: v for k, v in report.items() if k in ("training", "bitnet", "converted_linears")}
            row["train_curve"] = [[r.get("tokens"), r.get("train_loss")] for r in history if r.get("train_loss") is not None]
            results.put(row, "smollm2", arm)
            log(f"{arm}: {brief(row)} (quantize {seconds} s)")
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table_smollm2(results)


def brief(scores: dict[str, Any]) -> str:
    parts = [f"{t} {scores[t]['acc']:.3f}±{scores[t].get('acc_stderr', 0):.3f}" for t in ACC_TASKS if t in scores and "acc" in scores[t]]
    if "wikitext" in scores:
        parts.append(f"wikitext word ppl {scores['wikitext'].get('word_perplexity', float('nan')):.2f}")
    return ", ".join(parts)


def table_smollm2(results: Results) -> None:
    print(f"\n{'SmolLM2-135M':<14}" + "".join(f"{t:>16}" for t in ACC_TASKS) + f"{'wikitext ppl':>14}{'lambada ppl':>13}")
    for arm in ("fp32", "ternary_rtn", "bitnet_qat", "bnb_nf4", "bnb_int8"):
        row = results.get("smollm2", arm)
        if not row:
            continue
        accs = "".join(f"{row[t]['acc']:>9.3f}±{row[t].get('acc_stderr', 0):.3f}" if t in row else f"{'-':>16}" for t in ACC_TASKS)
        print(f"{arm:<14}{accs}{row.get('wikitext', {}).get('word_perplexity', float('nan')):>14.2f}"
              f"{row.get('lambada', {}).get('perplexity', float('nan')):>13.2f}")


# -- part: bitlinear (the authors' package) ---------------------------------------------------------

def run_bitlinear(args, results: Results) -> None:
    sys.path.insert(0, str(Path(args.bitlinear_path).resolve()))
    try:
        import bitlinear as theirs
    except ImportError:
        raise SystemExit(f"the bitlinear package is not at {args.bitlinear_path}: python -m pip install --no-deps "
                         f"--target {args.bitlinear_path} bitlinear==2.4.6")
    from lifecycle.methods.quantize.bitlinear import BitLinear

    torch.manual_seed(0)
    d_in, d_out, tokens = (64, 96, 32) if args.smoke else (576, 1536, 512)
    x = torch.randn(4, tokens // 4, d_in)
    w = torch.randn(d_out, d_in) * 0.02
    rows = {}
    for measure, ours_scale in (("AbsMean", "absmean"), ("AbsMedian", "absmedian")):
        for norm in (False, True):
            ref = theirs.BitLinear(d_in, d_out, bias=False, weight_measure=measure, norm="LayerNorm" if norm else None)
            mine = BitLinear(d_in, d_out, bias=False, scale_method=ours_scale, norm=False)
            with torch.no_grad():
                ref.weight.copy_(w)
                mine.weight.copy_(w)
            # theirs normalizes with a parameter-free LayerNorm; give ours the same normalized input
            xin = torch.layer_norm(x, [d_in]) if norm else x
            with torch.no_grad():
                y_ref, y_mine = ref(x), mine(xin)
            rows[f"{ours_scale},norm={norm}"] = {
                "max_abs_diff": float((y_ref - y_mine).abs().max()), "max_abs_output": float(y_ref.abs().max()),
                "rel_rms_diff": float((y_ref - y_mine).pow(2).mean().sqrt() / y_ref.pow(2).mean().sqrt()),
            }
    # the remaining difference is the activation grid: theirs scales by 128/absmax (the BitNet paper's
    # Q_b = 2^(b-1)), ours by 127/absmax (the b1.58 training-tips reference code); both clamp to [-128, 127].
    rows["explained_by_grid"] = check_grid_explains(x, w, theirs)
    results.put(rows, "bitlinear", "forward")
    results.put(time_training_steps(args, theirs, BitLinear), "bitlinear", "step_time")
    for k, v in rows.items():
        if k != "explained_by_grid":
            print(f"forward {k:<22} max|Δ| {v['max_abs_diff']:.3e} (output max {v['max_abs_output']:.3f}, rel RMS {v['rel_rms_diff']:.2e})")
    print(f"with our quantizers on a 128/absmax grid, max|Δ| = {rows['explained_by_grid']:.3e}")
    st = results.get("bitlinear", "step_time")
    print(f"training step: ours {st['ours_ms']:.2f} ms, theirs {st['theirs_ms']:.2f} ms, ratio ours/theirs {st['ratio']:.3f}")


def check_grid_explains(x, w, theirs) -> float:
    """Our weight quantizer with the activation grid switched to 128/absmax equals theirs exactly."""
    import torch.nn.functional as F

    from lifecycle.methods.quantize.bitlinear import EPS, quantize_weight

    ref = theirs.BitLinear(w.shape[1], w.shape[0], bias=False, weight_measure="AbsMean", norm=None)
    with torch.no_grad():
        ref.weight.copy_(w)
        s = 128 / x.abs().amax(-1, keepdim=True).clamp(min=EPS)
        xq = (x * s).round().clamp(-128, 127) / s
        return float((ref(x) - F.linear(xq, quantize_weight(w, "absmean"))).abs().max())


def time_training_steps(args, theirs, ours_cls) -> dict[str, Any]:
    """One optimizer step (forward, backward, AdamW) of a tiny LLaMA with every decoder linear swapped
    for ours or theirs (absmean, no norm, λ = 1), interleaved so that machine load hits both alike."""
    from lifecycle.methods.quantize.bitlinear import LambdaState
    from lifecycle.methods.quantize.bitnet import BitnetOptions, convert
    from lifecycle.model.presets import build_model, make_config

    width = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2) if args.smoke else \
        dict(hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2)
    config = make_config(dict(width, num_hidden_layers=4), 2048)
    batch = torch.randint(0, 2048, (8, 128))

    def make(kind: str):
        model = build_model(config, seed=0)
        if kind == "ours":
            convert(model, [], BitnetOptions(scale="absmean"), LambdaState(1.0))
        else:
            theirs.bitlinearize(model, replacements=[{"match_name": r"layers", "weight_measure": "AbsMean", "norm": None}])
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    models = {"ours": make("ours"), "theirs": make("theirs")}
    counts = {k: sum(type(m).__module__.startswith("bitlinear" if k == "theirs" else "lifecycle") for m in mdl.modules())
              for k, (mdl, _) in models.items()}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    reps = 3 if args.smoke else 20
    for rep in range(reps + 2):
        for kind, (model, opt) in models.items():
            t0 = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep >= 2:  # two warm-up rounds
                times[kind].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    return {"ours_ms": med["ours"], "theirs_ms": med["theirs"], "ratio": med["ours"] / med["theirs"], "reps": reps,
            "bitlinear_layers": counts, "width": width, "batch": list(batch.shape), "threads": torch.get_num_threads()}


# -- part: size and speed --------------------------------------------------------------------------

def run_size(args, results: Results) -> None:
    from lifecycle.methods.quantize.export import eager_bitnet
    from lifecycle.model.io import load_model

    work = Path(tempfile.mkdtemp(prefix="bench-quantize-size-"))
    try:
        from lifecycle.methods.quantize.pipeline import _forget_gguf

        loaded = load_model(args.model)
        fp = loaded.model
        _forget_gguf(fp)  # the GGUF input is dequantized in memory; save it as a plain fp16 checkpoint
        fp16_dir = work / "fp16"
        fp.to(torch.float16).save_pretrained(fp16_dir)
        fp.to(torch.float32)
        model, tokenizer, _, _ = _quantize(args, "ternary-rtn", work)
        packed = _reload_packed(model, tokenizer, work / "packed")
        from lifecycle.methods.quantize.pipeline import linears_to_convert

        names = [n for n, _ in linears_to_convert(fp, ["lm_head"])]
        n_weights = sum(dict(fp.named_modules())[n].weight.numel() for n in names)
        sd = packed.state_dict()
        packed_bytes = sum(sd[f"{n}.weight"].numel() * sd[f"{n}.weight"].element_size()
                           + sd[f"{n}.weight_scale"].numel() * sd[f"{n}.weight_scale"].element_size() for n in names)
        row = {
            "fp16_dir_bytes": folder_bytes(fp16_dir), "packed_dir_bytes": folder_bytes(work / "packed"),
            "linear_weights": n_weights, "linear_bytes_fp16": 2 * n_weights, "linear_bytes_packed": packed_bytes,
            "packed_bits_per_linear_weight": 8 * packed_bytes / n_weights,
        }
        prompt = tokenizer("The history of the city begins", return_tensors="pt").input_ids
        with eager_bitnet():
            row["tokens_per_second"] = {"fp32": decode_speed(fp, prompt, args), "packed": decode_speed(packed, prompt, args)}
        results.put(row, "size", "smollm2")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = results.get("size", "smollm2")
    print(f"\non disk: fp16 {r['fp16_dir_bytes'] / 1e6:.1f} MB, packed {r['packed_dir_bytes'] / 1e6:.1f} MB; linear weights "
          f"{r['linear_bytes_fp16'] / 1e6:.1f} MB → {r['linear_bytes_packed'] / 1e6:.1f} MB "
          f"({r['packed_bits_per_linear_weight']:.3f} bits/weight)")
    for k, v in r["tokens_per_second"].items():
        print(f"{k:<7} prefill {v['prefill']:.0f} tok/s, greedy decode {v['decode']:.1f} tok/s")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@torch.no_grad()
def decode_speed(model, prompt: torch.Tensor, args) -> dict[str, float]:
    model.eval()
    block = torch.randint(0, model.config.vocab_size, (1, 64 if args.smoke else 256))
    model(input_ids=block)  # warm-up
    t0 = time.perf_counter()
    reps = 1 if args.smoke else 3
    for _ in range(reps):
        model(input_ids=block)
    prefill = reps * block.shape[1] / (time.perf_counter() - t0)
    new = 4 if args.smoke else 32
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return {"prefill": prefill, "decode": new / (time.perf_counter() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=["tiny", "smollm2", "bitlinear", "size"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quantize.json"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="every part on a tiny budget (checks the code path)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--arms", default="ternary_rtn,bitnet_qat,bnb_nf4,bnb_int8")
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--wikitext-docs", type=int, default=-1, help="-1: all 62 test articles")
    parser.add_argument("--qat-steps", type=int, default=40)
    parser.add_argument("--qat-micro-batch", type=int, default=2)
    parser.add_argument("--qat-block", type=int, default=256)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--qat-data", default="wikitext")
    parser.add_argument("--distill", type=float, default=0.0)
    parser.add_argument("--bitlinear-path", default=str(ROOT / ".cache" / "bench-bitlinear"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.arms = args.arms.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.part or ["tiny", "smollm2", "bitlinear", "size"]
    settings = {"parts": parts, "smoke": args.smoke, "seeds": args.seeds}
    results = Results(Path(args.out), args.resume, settings)
    results.data["environment"]["command"] = " ".join(["python", "bench/quantize.py", *sys.argv[1:]])
    runners = {"tiny": run_tiny, "smollm2": run_smollm2, "bitlinear": run_bitlinear, "size": run_size}
    for part in parts:
        log(f"part {part}")
        results.put({"command": results.data["environment"]["command"], "date": time.strftime("%Y-%m-%d %H:%M"),
                     "load_average": list(os.getloadavg())}, part, "run")
        runners[part](args, results)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
