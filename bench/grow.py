"""Does growth save tokens? G_stack vs scratch, and layer-wise frozen-substrate growth vs monolithic.

Usage (from the repository root; reads the shared corpora, fully offline, 2 CPU cores)::

    nice -n 10 python bench/grow.py            # full: numbers in docs/grow.md
    python bench/grow.py --quick               # part 1 only, no ladder (~4 min); tests/test_grow.py (slow) runs it

Part 1, G_stack (Du et al. 2024) vs training the same target from scratch, with the same total token
budget T on the same data stream (same seed, so the same blocks in the same order):

* scratch: the target (8 layers) trained for T tokens, warmup + cosine;
* G_stack: a model of target/4 layers trained for d tokens, stacked x4 (0123..0123 order), then
  trained for T - d tokens with a fresh AdamW, a restarted warmup + cosine and the data stream
  continuing after the d tokens the small model saw. Its total is T tokens, small model included.

Held-out loss is measured on the same validation blocks for every arm. Seed noise: every arm runs
with several seeds (init and data order change together). The token-saving ratio is the number of
tokens scratch needs to reach G_stack's final loss divided by T; it is read off a ladder of scratch
runs with budgets T, 1.5T, 2T (each with its own full cosine schedule, so every point is a finished
run, not the middle of a longer one), interpolated linearly in log(tokens). The compute ratio does
the same with FLOPs = 6 · params · tokens per phase (the small phase costs 6 · N_small · d).

Part 2 (full run only), layer-wise growth on a frozen substrate (Bochkov 2025) vs monolithic
training of the same depth, both on the same frozen hashed embedding with a trained head: layer-wise
trains layer 1, then adds and trains one layer per stage (T/4 tokens each); monolithic trains all 4
layers together for T tokens; a normal run (embedding trained too) is the reference. Reported: loss vs
tokens, and per stage the trainable parameters, training FLOPs (forward through all layers, backward
only through the new one) and wall time.

Outputs: ``bench/results/grow{,_quick}.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifecycle.data import build_tokenizer, load_corpus, pack  # noqa: E402
from lifecycle.methods.grow.gstack import flops_budget, run_gstack  # noqa: E402
from lifecycle.methods.grow.layerwise import freeze_substrate, grow_layerwise  # noqa: E402
from lifecycle.model.adapter import adapter_for  # noqa: E402
from lifecycle.model.presets import build_model, make_config  # noqa: E402
from lifecycle.train.engine import TrainConfig, train  # noqa: E402

SETTINGS = {
    "full": dict(
        data="shakespeare+wikitext", tokenizer="bpe:2048", block=128, micro_batch=8,
        width=dict(hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2),
        target_layers=8, g=4, tokens=200_000, growth_fraction=0.25, lr=2e-3, warmup=20,
        seeds=[0, 1, 2], ladder=[1.5, 2.0], eval_blocks=128, evals=8, scratch_lr_check=[1e-3],
        layerwise=dict(layers=4, tokens=200_000, lr=3e-3),
    ),
    "quick": dict(
        data="shakespeare+wikitext", tokenizer="bpe:2048", block=128, micro_batch=8,
        width=dict(hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=2),
        target_layers=8, g=4, tokens=200_000, growth_fraction=0.25, lr=2e-3, warmup=20,
        seeds=[0, 1, 2], ladder=[], eval_blocks=128, evals=8,
        layerwise=None,
    ),
    # code-path check only (seconds): tiny budget, every part of the full run
    "smoke": dict(
        data="shakespeare", tokenizer="bpe:512", block=64, micro_batch=4,
        width=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
        target_layers=4, g=2, tokens=6_000, growth_fraction=0.25, lr=2e-3, warmup=2,
        seeds=[0, 1], ladder=[1.5, 2.0], eval_blocks=8, evals=3,
        layerwise=dict(layers=3, tokens=6_000, lr=3e-3),
    ),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def n_params(model) -> int:
    return adapter_for(model).num_parameters()


def val_curve(history: list[dict]) -> list[list[float]]:
    return [[int(r["tokens"]), round(float(r["val_loss"]), 5)] for r in history if r.get("val_loss") is not None]


class Bench:
    def __init__(self, s: dict, work: Path):
        self.s = s
        self.work = work
        corpus = load_corpus(s["data"])
        self.tokenizer = build_tokenizer(s["tokenizer"], corpus)
        self.data = pack(corpus, self.tokenizer, s["block"])
        self.tokens_per_step = s["micro_batch"] * s["block"]
        self.steps = s["tokens"] // self.tokens_per_step

    def config(self, layers: int):
        return make_config(dict(self.s["width"], num_hidden_layers=layers), len(self.tokenizer), eos_token_id=self.tokenizer.eos_token_id)

    def train_cfg(self, steps: int, seed: int, lr: float | None = None) -> TrainConfig:
        s = self.s
        return TrainConfig(
            steps=steps, lr=lr or s["lr"], warmup_steps=min(s["warmup"], max(steps // 10, 1)), micro_batch_size=s["micro_batch"],
            eval_every=max(steps // s["evals"], 1), eval_blocks=s["eval_blocks"], seed=seed, log_every=max(steps // s["evals"], 1),
        )

    # -- part 1 ----------------------------------------------------------------------------------
    def scratch(self, seed: int, steps: int, lr: float | None = None) -> dict:
        model = build_model(self.config(self.s["target_layers"]), seed=seed)
        started, cpu0 = time.perf_counter(), time.process_time()
        result = train(model, self.data, self.train_cfg(steps, seed, lr=lr), self.work / f"scratch-{seed}-{steps}-{lr}",
                       progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        params = n_params(result.model)
        return {
            "seed": seed, "lr": lr or self.s["lr"], "tokens": result.tokens_seen, "params": params, "final_val_loss": result.final_val_loss,
            "flops": flops_budget(params, result.tokens_seen), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "curve": val_curve(result.history),
        }

    def gstack(self, seed: int) -> dict:
        s = self.s
        small_layers = s["target_layers"] // s["g"]
        small_steps = int(round(self.steps * s["growth_fraction"]))
        small = build_model(self.config(small_layers), seed=seed)
        small_cfg = self.train_cfg(small_steps, seed).model_copy(update={"eval_every": max(small_steps // 2, 1)})
        grown_cfg = self.train_cfg(self.steps - small_steps, seed)
        started, cpu0 = time.perf_counter(), time.process_time()
        run = run_gstack(small_model=small, data=self.data, small_cfg=small_cfg, grown_cfg=grown_cfg,
                         run_dir=self.work / f"gstack-{seed}", target_layers=s["target_layers"], order="stack", progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        return {
            "seed": seed, "tokens": run.tokens_seen, "small_tokens": run.small_tokens, "grown_tokens": run.grown_tokens,
            "small_params": run.small_params, "params": run.grown_params, "layer_map": run.layer_map,
            "final_val_loss": run.grown_result.final_val_loss, "small_final_val_loss": run.small_result.final_val_loss,
            "flops": run.train_flops, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "small_seconds": round(run.small_result.seconds, 1), "grown_seconds": round(run.grown_result.seconds, 1),
            "curve": val_curve(run.history),
        }

    # -- part 2 ----------------------------------------------------------------------------------
    def _substrate_model(self, layers: int, seed: int):
        model = build_model(self.config(layers), seed=seed)
        freeze_substrate(model, embedding="hashed", head="train", tokenizer=self.tokenizer, seed=seed)
        return model

    def layerwise(self, seed: int) -> dict:
        lw = self.s["layerwise"]
        stage_steps = lw["tokens"] // self.tokens_per_step // lw["layers"]
        model = self._substrate_model(1, seed)
        cfg = self.train_cfg(stage_steps, seed, lr=lw["lr"]).model_copy(update={"eval_every": max(stage_steps // 2, 1)})
        started, cpu0 = time.perf_counter(), time.process_time()
        run = grow_layerwise(model, self.data, cfg, self.work / f"layerwise-{seed}", target_layers=lw["layers"],
                             layers_per_stage=1, train_initial=True, progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        stages = [
            {"stage": st.stage, "layers": st.layers, "trainable_params": st.trainable_params, "tokens": st.tokens,
             "flops": st.flops, "seconds": round(st.seconds, 1), "final_val_loss": st.final_val_loss}
            for st in run.stages
        ]
        return {"seed": seed, "tokens": run.tokens_seen, "params": n_params(run.model), "flops": run.train_flops,
                "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "final_val_loss": run.stages[-1].final_val_loss, "stages": stages,
                "curve": val_curve(run.history)}

    def monolithic(self, seed: int, frozen: bool) -> dict:
        lw = self.s["layerwise"]
        steps = lw["tokens"] // self.tokens_per_step
        if frozen:
            model = self._substrate_model(lw["layers"], seed)
        else:
            model = build_model(self.config(lw["layers"]), seed=seed)
        cfg = self.train_cfg(steps, seed, lr=lw["lr"])
        started, cpu0 = time.perf_counter(), time.process_time()
        result = train(model, self.data, cfg, self.work / f"mono-{int(frozen)}-{seed}", progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        adapter = adapter_for(result.model)
        params = adapter.num_parameters()
        lookup = 0 if adapter.tied_embeddings else adapter.embed_tokens.weight.numel()
        return {"seed": seed, "frozen_substrate": frozen, "tokens": result.tokens_seen, "params": params,
                "flops": 6.0 * (params - lookup) * result.tokens_seen if frozen else flops_budget(params, result.tokens_seen),
                "trainable_params": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
                "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "final_val_loss": result.final_val_loss, "curve": val_curve(result.history)}


def tokens_to_reach(target: float, ladder: list[tuple[int, float]]) -> tuple[float | None, str]:
    """Tokens a from-scratch run needs to reach ``target`` loss, from (budget, final loss) points."""
    pts = sorted(ladder)
    if target >= pts[0][1]:
        # scratch at the smallest budget is already this good: the ratio is at most that budget / T
        return pts[0][0], "at most"
    for (t0, l0), (t1, l1) in zip(pts, pts[1:]):
        if l1 <= target <= l0:
            w = (l0 - target) / (l0 - l1) if l0 != l1 else 0.0
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0))), "interpolated"
    return pts[-1][0], "more than"


def _stats(xs: list[float]) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(out: dict) -> dict:
    """Means over seeds, seed noise, the equal-token gap and its margin, and the saving ratios.

    Seed noise: the standard deviation of one run's final loss over seeds (init and data order change
    with the seed), pooled over the two arms. The margin is two standard errors of the difference of
    the two arms' means, ``2·σ·sqrt(2/n)``: G_stack "beats scratch by more than seed noise" when the
    gap exceeds it (about a 95% one-sided criterion under a normal approximation) and wins for every
    seed.
    """
    scratch, gst = out["scratch"], out["gstack"]
    sc_loss = [r["final_val_loss"] for r in scratch]
    gs_loss = [r["final_val_loss"] for r in gst]
    sc_mean, sc_std = _stats(sc_loss)
    gs_mean, gs_std = _stats(gs_loss)
    n = len(sc_loss)
    pooled = math.sqrt((sc_std**2 + gs_std**2) / 2)
    margin = 2 * pooled * math.sqrt(2 / n)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    summary = {
        "tokens_each_arm": scratch[0]["tokens"],
        "seeds": n,
        "scratch_final_losses": sc_loss, "gstack_final_losses": gs_loss,
        "scratch_final_loss_mean": sc_mean, "scratch_seed_std": sc_std, "scratch_seed_spread": max(sc_loss) - min(sc_loss),
        "gstack_final_loss_mean": gs_mean, "gstack_seed_std": gs_std, "gstack_seed_spread": max(gs_loss) - min(gs_loss),
        "gap_at_equal_tokens": sc_mean - gs_mean,
        "paired_gaps": [a["final_val_loss"] - b["final_val_loss"] for a, b in zip(scratch, gst)],
        "noise": pooled,
        "margin": margin,
        "beats_scratch_by_more_than_noise": (sc_mean - gs_mean) > margin
        and all(a["final_val_loss"] > b["final_val_loss"] for a, b in zip(scratch, gst)),
        "flops_scratch": scratch[0]["flops"], "flops_gstack": gst[0]["flops"],
        "seconds_scratch_mean": mean([r["seconds"] for r in scratch]), "seconds_gstack_mean": mean([r["seconds"] for r in gst]),
        "cpu_seconds_scratch_mean": mean([r.get("cpu_seconds", 0.0) for r in scratch]),
        "cpu_seconds_gstack_mean": mean([r.get("cpu_seconds", 0.0) for r in gst]),
    }
    if out.get("scratch_lr_check"):
        by_lr: dict = {}
        for r in out["scratch_lr_check"]:
            by_lr.setdefault(r["lr"], []).append(r["final_val_loss"])
        by_lr[out["settings"]["lr"]] = sc_loss
        summary["scratch_mean_by_lr"] = {str(k): mean(v) for k, v in sorted(by_lr.items())}
    if out.get("ladder"):
        budgets: dict[int, list[float]] = {scratch[0]["tokens"]: sc_loss}
        for r in out["ladder"]:
            budgets.setdefault(r["tokens"], []).append(r["final_val_loss"])
        points = sorted((t, mean(v)) for t, v in budgets.items())
        need, how = tokens_to_reach(gs_mean, points)
        g_tokens, g_flops = gst[0]["tokens"], gst[0]["flops"]
        summary["scratch_ladder_mean"] = points
        summary["scratch_tokens_to_match_gstack"] = need
        summary["match_kind"] = how
        summary["token_saving_ratio"] = need / g_tokens
        summary["flops_saving_ratio"] = flops_budget(scratch[0]["params"], need) / g_flops
    return summary


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if out.get("layerwise") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), dpi=120)
    ax = axes[0]
    for i, r in enumerate(out["scratch"]):
        ax.plot(*zip(*r["curve"]), color="tab:gray", alpha=0.8, label=f"scratch ({out['settings']['target_layers']} layers)" if i == 0 else None)
    for i, r in enumerate(out["gstack"]):
        ax.plot(*zip(*r["curve"]), color="tab:blue", alpha=0.8,
                label=f"G_stack ({len(set(r['layer_map']))} → {len(r['layer_map'])} layers)" if i == 0 else None)
    for r in out.get("ladder", []):
        ax.plot(*zip(*r["curve"]), color="tab:gray", alpha=0.35, linestyle="--")
        ax.plot(r["tokens"], r["final_val_loss"], "s", color="tab:gray")
    d = out["gstack"][0]["small_tokens"]
    ax.axvline(d, color="tab:blue", linestyle=":", linewidth=1, label=f"growth at d = {d:,} tokens")
    ax.set_xlabel("tokens (G_stack: small model's included)")
    ax.set_ylabel("held-out loss")
    ax.set_title("G_stack vs scratch, same token budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    runs = out["scratch"] + out["gstack"] + out.get("ladder", [])
    lo = min(min(y for _, y in r["curve"]) for r in runs)
    hi = min(max(max(y for _, y in r["curve"]) for r in runs), lo + 1.6)
    ax.set_ylim(lo - 0.05, hi + 0.05)

    ax = axes[1]
    for i, r in enumerate(out["scratch"]):
        ax.plot([t * 6 * r["params"] for t, _ in r["curve"]], [y for _, y in r["curve"]], color="tab:gray", alpha=0.8,
                label="scratch" if i == 0 else None)
    for i, r in enumerate(out["gstack"]):
        xs = [6 * (min(t, r["small_tokens"]) * r["small_params"] + max(t - r["small_tokens"], 0) * r["params"]) for t, _ in r["curve"]]
        ax.plot(xs, [y for _, y in r["curve"]], color="tab:blue", alpha=0.8, label="G_stack" if i == 0 else None)
    ax.set_xlabel("training FLOPs (6 · params · tokens per phase)")
    ax.set_ylabel("held-out loss")
    ax.set_title("the same runs against compute")
    ax.set_ylim(lo - 0.05, hi + 0.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    if out.get("layerwise"):
        ax = axes[2]
        colors = {"layer-wise (frozen substrate)": "tab:green", "monolithic (frozen substrate)": "tab:orange",
                  "monolithic (embedding trained)": "tab:gray"}
        for label, runs in (("layer-wise (frozen substrate)", out["layerwise"]),
                            ("monolithic (frozen substrate)", out["monolithic_frozen"]),
                            ("monolithic (embedding trained)", out["monolithic"])):
            for i, r in enumerate(runs):
                ax.plot(*zip(*r["curve"]), color=colors[label], alpha=0.8, label=label if i == 0 else None)
        bounds = []
        total = 0
        for st in out["layerwise"][0]["stages"][:-1]:
            total += st["tokens"]
            bounds.append(total)
        for b in bounds:
            ax.axvline(b, color="tab:green", linestyle=":", linewidth=1)
        ax.set_xlabel("tokens")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"layer-wise (1 layer/stage) vs monolithic, {out['settings']['layerwise']['layers']} layers")
        runs2 = out["layerwise"] + out["monolithic_frozen"] + out["monolithic"]
        lo2 = min(min(y for _, y in r["curve"]) for r in runs2)
        hi2 = min(max(max(y for _, y in r["curve"]) for r in runs2), lo2 + 1.8)
        ax.set_ylim(lo2 - 0.05, hi2 + 0.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI variant: G_stack vs scratch at equal tokens only (no ratio ladder, no layer-wise part)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/grow[_quick].json)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads that must wait for each "
                             "other's core run up to 50x slower; 1 thread degrades gracefully)")
    parser.add_argument("--work", type=Path, help="scratch folder for run state (default: a temp folder)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    s = dict(SETTINGS[mode])
    if args.seeds:
        s["seeds"] = [int(x) for x in args.seeds.split(",")]
    out_path = args.out or ROOT / "bench" / "results" / f"grow{'' if mode == 'full' else '_' + mode}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="lifecycle-grow-bench-"))
    started = time.perf_counter()
    bench = Bench(s, work)
    out: dict = {
        "command": "python bench/grow.py" + ("" if mode == "full" else f" --{mode}") + (f" --seeds {args.seeds}" if args.seeds else "")
        + (f" --threads {args.threads}" if args.threads != 1 else ""),
        "settings": s,
        "data": bench.data.describe(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_start": os.getloadavg()},
        "scratch": [], "gstack": [], "ladder": [],
    }
    log(f"{mode}: {bench.data.describe()['train_tokens']:,} training tokens; {bench.steps} steps of {bench.tokens_per_step} tokens per arm")
    for seed in s["seeds"]:
        r = bench.scratch(seed, bench.steps)
        out["scratch"].append(r)
        log(f"scratch seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens ({r['seconds']} s)")
        r = bench.gstack(seed)
        out["gstack"].append(r)
        log(f"G_stack seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens "
            f"(small {r['small_tokens']:,} → loss {r['small_final_val_loss']:.4f}; {r['seconds']} s)")
    for m in s["ladder"]:
        for seed in s["seeds"]:
            r = bench.scratch(seed, int(round(bench.steps * m)))
            out["ladder"].append(r)
            log(f"scratch ladder x{m} seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens ({r['seconds']} s)")
    out["scratch_lr_check"] = []
    for lr in s.get("scratch_lr_check", []):
        for seed in s["seeds"]:
            r = bench.scratch(seed, bench.steps, lr=lr)
            out["scratch_lr_check"].append(r)
            log(f"scratch lr {lr:g} seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens ({r['seconds']} s)")
    if s.get("layerwise"):
        out["layerwise"], out["monolithic_frozen"], out["monolithic"] = [], [], []
        seed = s["seeds"][0]
        r = bench.layerwise(seed)
        out["layerwise"].append(r)
        log(f"layer-wise: loss {r['final_val_loss']:.4f}; stages " + ", ".join(
            f"{st['layers']}L {st['final_val_loss']:.3f} ({st['seconds']} s)" for st in r["stages"]))
        r = bench.monolithic(seed, frozen=True)
        out["monolithic_frozen"].append(r)
        log(f"monolithic, frozen substrate: loss {r['final_val_loss']:.4f} ({r['seconds']} s)")
        r = bench.monolithic(seed, frozen=False)
        out["monolithic"].append(r)
        log(f"monolithic, embedding trained: loss {r['final_val_loss']:.4f} ({r['seconds']} s)")
    out["summary"] = summarize(out)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["seconds_total"] = round(time.perf_counter() - started, 1)
    out["cpu_seconds_total"] = round(time.process_time(), 1)
    out_path.write_text(json.dumps(out, indent=1))
    plot(out, out_path.with_suffix(".png"))
    sm = out["summary"]
    log(f"G_stack − scratch at {sm['tokens_each_arm']:,} tokens: {-sm['gap_at_equal_tokens']:+.4f} "
        f"(seed std {sm['noise']:.4f}, margin 2·SE {sm['margin']:.4f}, beats: {sm['beats_scratch_by_more_than_noise']}); "
        f"total {out['seconds_total']} s → {out_path}")
    if "token_saving_ratio" in sm:
        log(f"token-saving ratio {sm['token_saving_ratio']:.2f}x ({sm['match_kind']}), FLOPs ratio {sm['flops_saving_ratio']:.2f}x")
    return out


if __name__ == "__main__":
    main()
