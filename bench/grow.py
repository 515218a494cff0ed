"""Does growth save tokens? G_stack vs scratch, and layer-wise frozen-substrate growth vs monolithic.

Usage (from the repository root; reads the shared corpora, fully offline, one thread)::

    OMP_NUM_THREADS=1 python bench/grow.py                # full (~15-20 min of one core; docs/grow.md ran it with --d-sweep 0.5)
    python bench/grow.py --quick               # G_stack vs scratch only, 5 seeds (~5 min); a `bench` test runs it
    python bench/grow.py --smoke               # every part on a tiny budget (~30 s); a CI test runs it
    python bench/grow.py --tokens 200000 --lr-sweep "" --d-sweep "" --variants none --no-layerwise
                                               # the longer budget: headline and ladder only

Part 1, G_stack (Du et al. 2024) vs training the same target from scratch, with the same total token
budget T on the same data stream (same seed, so the same blocks in the same order):

* scratch: the target (8 layers) trained for T tokens, warmup + cosine, at the base LR; the LR sweep
  (``--lr-sweep``) repeats it at half and twice that LR and, if the best mean is at an edge, one step
  further out (up to twice), so that the base LR is shown to be the best scratch LR with a worse
  lower and a worse higher one (``lr_bracketed``). Every G_stack arm and the ladder use the base LR;
  if the sweep finds a better one, the summary says so rather than silently switching;
* G_stack (the default arm): a model of target/4 layers trained for d tokens at its peak LR (warmup,
  then constant: prts' mid-schedule growth point), stacked x4 (0123..0123), then trained for T - d
  tokens with a fresh AdamW, a restarted warmup + cosine, the data stream continuing after d;
* variants (``--variants``): ``annealed`` (the small model annealed to 10% before stacking: the earlier
  default) and ``grown_lr`` (the grown phase at 0.3x the LR, prts' 1e-3 -> 3e-4);
* the d sweep (``--d-sweep``): the default arm at other growth points d/T;
* the scratch ladder (``--ladder``): scratch at 1.3T and 2T (each its own full cosine, so every point
  is a finished run), for the token-saving ratio.

Statistics over seeds (init and data order change together; ``--seeds``, 5 by default): per arm the
paired difference to scratch at T (same seed) with a paired t-test (two-sided p, and one-sided for
"G_stack is better"), and the paired test against scratch at 1.3T (the issue's target: G_stack at T
beats scratch given 1.3x the tokens). The token-saving ratio is the number of tokens scratch needs to
reach the arm's mean final loss, interpolated in log(tokens) between the ladder's mean losses,
divided by T; its 95% CI is a percentile bootstrap over seeds (resampling seeds, with each resampled
seed's runs kept together). A ratio outside the ladder is censored at its end and reported as such.

Part 2 (full only), layer-wise growth on a frozen substrate (Bochkov 2025) vs monolithic training of
the same depth, one seed: layer-wise on the hashed substrate (T/4 tokens per stage), the same on the
unit-norm substrate, the same with the held-out plateau stopping rule, monolithic on the frozen
hashed substrate, and a normal run (embedding trained). Per stage: trainable parameters, steps,
training FLOPs (forward 2n for every weight, activation gradient 2n where backward passes through,
weight gradient 2n where trained) and wall time.

Outputs: ``bench/results/grow{,_quick,_smoke}.json`` and ``.png`` (the JSON is rewritten after every
run, so an interrupted bench leaves its finished runs).
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
from lifecycle.methods.grow.gstack import flops_budget, phase_configs, run_gstack  # noqa: E402
from lifecycle.methods.grow.layerwise import freeze_substrate, grow_layerwise  # noqa: E402
from lifecycle.model.adapter import adapter_for  # noqa: E402
from lifecycle.model.presets import build_model, make_config  # noqa: E402
from lifecycle.train.engine import TrainConfig, train  # noqa: E402

# Width 64 and 100k tokens per arm: the size whose full run fits about 35 minutes of one shared core
# (issue #13's bench). The earlier evidence used width 128, BPE 2048, 200k tokens and LR 2e-3
# (``--width 128 --tokenizer bpe:2048 --tokens 200000 --lr 2e-3 --evals 8 --eval-blocks 128``).
WIDTH = dict(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2)
SETTINGS = {
    "full": dict(
        data="shakespeare+wikitext", tokenizer="bpe:1024", block=128, micro_batch=8, width=WIDTH,
        target_layers=8, g=4, tokens=100_000, growth_fraction=0.25, lr=3e-3, warmup=20,
        seeds=[0, 1, 2, 3, 4], lr_sweep=[0.5, 2.0], lr_extend=2, ladder=[1.3, 2.0], d_sweep=[0.125, 0.5],
        variants=["annealed", "grown_lr"], grown_lr_factor=0.3, eval_blocks=64, evals=4, boot=2000,
        layerwise=dict(layers=4, tokens=100_000, lr=3e-3, patience=2, min_delta=0.01, evals_per_stage=6),
    ),
    "quick": dict(
        data="shakespeare+wikitext", tokenizer="bpe:1024", block=128, micro_batch=8, width=WIDTH,
        target_layers=8, g=4, tokens=100_000, growth_fraction=0.25, lr=3e-3, warmup=20,
        seeds=[0, 1, 2, 3, 4], lr_sweep=[], lr_extend=0, ladder=[], d_sweep=[], variants=[], grown_lr_factor=0.3,
        eval_blocks=64, evals=4, boot=2000, layerwise=None,
    ),
    # code-path check only (seconds): tiny budget, every part of the full run
    "smoke": dict(
        data="shakespeare", tokenizer="bpe:512", block=64, micro_batch=4,
        width=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
        target_layers=4, g=2, tokens=4_000, growth_fraction=0.25, lr=2e-3, warmup=2,
        seeds=[0, 1], lr_sweep=[0.5, 2.0], lr_extend=1, ladder=[1.3, 2.0], d_sweep=[0.5],
        variants=["annealed", "grown_lr"], grown_lr_factor=0.3, eval_blocks=4, evals=2, boot=200,
        layerwise=dict(layers=3, tokens=4_000, lr=3e-3, patience=1, min_delta=0.0, evals_per_stage=3),
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

    def train_cfg(self, steps: int, seed: int, lr: float | None = None, evals: int | None = None) -> TrainConfig:
        s = self.s
        every = max(steps // (evals or s["evals"]), 1)
        return TrainConfig(
            steps=steps, lr=lr or s["lr"], warmup_steps=min(s["warmup"], max(steps // 10, 1)), micro_batch_size=s["micro_batch"],
            eval_every=every, eval_blocks=s["eval_blocks"], seed=seed, log_every=every,
        )

    # -- part 1 ----------------------------------------------------------------------------------
    def scratch(self, seed: int, steps: int, lr: float) -> dict:
        model = build_model(self.config(self.s["target_layers"]), seed=seed)
        started, cpu0 = time.perf_counter(), time.process_time()
        result = train(model, self.data, self.train_cfg(steps, seed, lr=lr), self.work / f"scratch-{seed}-{steps}-{lr}",
                       progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        params = n_params(result.model)
        return {
            "seed": seed, "lr": lr, "tokens": result.tokens_seen, "params": params, "final_val_loss": result.final_val_loss,
            "flops": flops_budget(params, result.tokens_seen), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "curve": val_curve(result.history),
        }

    def gstack(self, seed: int, lr: float, *, growth_fraction: float, growth_point: str = "peak",
               grown_lr: float | None = None) -> dict:
        s = self.s
        small_layers = s["target_layers"] // s["g"]
        small_steps = max(1, int(round(self.steps * growth_fraction)))
        small = build_model(self.config(small_layers), seed=seed)
        # The small phase logs twice; the grown phase as often as a scratch run.
        base = self.train_cfg(small_steps, seed, lr=lr).model_copy(update={"eval_every": max(small_steps // 2, 1)})
        small_cfg, _ = phase_configs(base, small_steps, 0, growth_point=growth_point)
        grown_cfg = self.train_cfg(self.steps - small_steps, seed, lr=grown_lr or lr)
        started, cpu0 = time.perf_counter(), time.process_time()
        run = run_gstack(small_model=small, data=self.data, small_cfg=small_cfg, grown_cfg=grown_cfg,
                         run_dir=self.work / f"gstack-{seed}-{growth_fraction}-{growth_point}-{grown_lr}",
                         target_layers=s["target_layers"], order="stack", progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        return {
            "seed": seed, "lr": lr, "grown_lr": grown_cfg.lr, "growth_point": growth_point, "growth_fraction": growth_fraction,
            "tokens": run.tokens_seen, "small_tokens": run.small_tokens, "grown_tokens": run.grown_tokens,
            "small_params": run.small_params, "params": run.grown_params, "layer_map": run.layer_map,
            "final_val_loss": run.grown_result.final_val_loss, "small_final_val_loss": run.small_result.final_val_loss,
            "flops": run.train_flops, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "small_seconds": round(run.small_result.seconds, 1), "grown_seconds": round(run.grown_result.seconds, 1),
            "curve": val_curve(run.history),
        }

    # -- part 2 ----------------------------------------------------------------------------------
    def _substrate_model(self, layers: int, seed: int, embedding: str = "hashed"):
        model = build_model(self.config(layers), seed=seed)
        freeze_substrate(model, embedding=embedding, head="train", tokenizer=self.tokenizer, seed=seed)
        return model

    def layerwise(self, seed: int, *, embedding: str = "hashed", stop: bool = False) -> dict:
        lw = self.s["layerwise"]
        stage_steps = lw["tokens"] // self.tokens_per_step // lw["layers"]
        model = self._substrate_model(1, seed, embedding)
        cfg = self.train_cfg(stage_steps, seed, lr=lw["lr"], evals=lw["evals_per_stage"])
        started, cpu0 = time.perf_counter(), time.process_time()
        run = grow_layerwise(model, self.data, cfg, self.work / f"layerwise-{seed}-{embedding}-{int(stop)}",
                             target_layers=lw["layers"], layers_per_stage=1, train_initial=True, progress=False,
                             stop_patience=lw["patience"] if stop else 0, stop_min_delta=lw["min_delta"])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        stages = [
            {"stage": st.stage, "layers": st.layers, "trainable_params": st.trainable_params, "steps": st.steps,
             "stopped_early": st.stopped_early, "tokens": st.tokens, "flops": st.flops, "seconds": round(st.seconds, 1),
             "final_val_loss": st.final_val_loss}
            for st in run.stages
        ]
        return {"seed": seed, "embedding": embedding, "stopping_rule": stop, "tokens": run.tokens_seen, "params": n_params(run.model),
                "flops": run.train_flops, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                "final_val_loss": run.stages[-1].final_val_loss, "stages": stages, "curve": val_curve(run.history)}

    def monolithic(self, seed: int, frozen: bool) -> dict:
        lw = self.s["layerwise"]
        steps = lw["tokens"] // self.tokens_per_step
        model = self._substrate_model(lw["layers"], seed) if frozen else build_model(self.config(lw["layers"]), seed=seed)
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


def tokens_to_reach(target: float, ladder: list[tuple[int, float]]) -> tuple[float, str]:
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


def paired_test(baseline: list[float], arm: list[float]) -> dict:
    """Paired t-test of ``baseline - arm`` over seeds (positive: the arm has the lower loss)."""
    from scipy import stats

    gaps = [a - b for a, b in zip(baseline, arm)]
    mean, std = _stats(gaps)
    n = len(gaps)
    out = {"gaps": gaps, "mean_gap": mean, "gap_std": std, "n": n, "wins": sum(g > 0 for g in gaps)}
    if n < 2 or std == 0:
        out.update(t=None, p_two_sided=None, p_one_sided=None)
        return out
    t = mean / (std / math.sqrt(n))
    out.update(t=t, p_two_sided=float(2 * stats.t.sf(abs(t), n - 1)), p_one_sided=float(stats.t.sf(t, n - 1)))
    return out


def saving_ratio(arm_by_seed: dict[int, float], ladder_by_seed: dict[int, dict[int, float]], tokens: int,
                 *, boot: int, seed: int = 0) -> dict:
    """Token-saving ratio at the seed means and its percentile-bootstrap 95% CI over seeds.

    ``ladder_by_seed[budget][seed]`` is scratch's final loss; each bootstrap draw resamples seeds with
    replacement and recomputes the arm's mean, every ladder mean and the interpolated ratio from the
    same seeds. Draws outside the ladder are censored at its ends (counted in ``censored``).
    """
    import numpy as np

    seeds = sorted(arm_by_seed)
    arm = np.array([arm_by_seed[k] for k in seeds])
    budgets = sorted(ladder_by_seed)
    lad = np.array([[ladder_by_seed[b][k] for k in seeds] for b in budgets])

    def ratio(idx) -> tuple[float, str]:
        need, how = tokens_to_reach(float(arm[idx].mean()), list(zip(budgets, lad[:, idx].mean(axis=1).tolist())))
        return need / tokens, how

    point, how = ratio(np.arange(len(seeds)))
    rng = np.random.default_rng(seed)
    draws, censored = [], 0
    for _ in range(boot):
        r, kind = ratio(rng.integers(0, len(seeds), len(seeds)))
        draws.append(r)
        censored += kind != "interpolated"
    lo, hi = (np.percentile(draws, [2.5, 97.5]).tolist() if draws else (None, None))
    return {"ratio": point, "match_kind": how, "ci95": [lo, hi], "boot": boot, "censored_draws": censored,
            "ladder_budgets": budgets}


def summarize(out: dict) -> dict:
    """Seed means, paired tests, the LR sweep and the saving ratios of every G_stack arm."""
    s = out["settings"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    best_lr = out["best_lr"]
    base_lr = s["lr"]  # every G_stack arm and the ladder run at the base LR; the sweep checks it is the best
    scratch = [r for r in out["lr_sweep"] if r["lr"] == base_lr and r["tokens"] == out["tokens_each_arm"]]
    scratch.sort(key=lambda r: r["seed"])
    seeds = [r["seed"] for r in scratch]
    sc_loss = [r["final_val_loss"] for r in scratch]
    by_lr: dict[float, list[float]] = {}
    for r in out["lr_sweep"]:
        by_lr.setdefault(r["lr"], []).append(r["final_val_loss"])
    lrs = sorted(by_lr)
    summary: dict = {
        "tokens_each_arm": out["tokens_each_arm"], "seeds": len(seeds), "base_lr": base_lr, "best_lr": best_lr,
        "scratch_by_lr": {f"{lr:g}": {"mean": _stats(v)[0], "std": _stats(v)[1], "n": len(v)} for lr, v in sorted(by_lr.items())},
        "lr_bracketed": best_lr == base_lr and lrs[0] < best_lr < lrs[-1],
        "scratch_final_losses": sc_loss, "scratch_final_loss_mean": _stats(sc_loss)[0], "scratch_seed_std": _stats(sc_loss)[1],
        "seconds_scratch_mean": mean([r["seconds"] for r in scratch]) if scratch else None,
    }
    # scratch ladder: budget -> seed -> loss, the T point included
    ladder: dict[int, dict[int, float]] = {out["tokens_each_arm"]: dict(zip(seeds, sc_loss))}
    for r in out["ladder"]:
        ladder.setdefault(r["tokens"], {})[r["seed"]] = r["final_val_loss"]
    ladder = {b: v for b, v in ladder.items() if set(v) >= set(seeds)}
    summary["scratch_ladder_mean"] = sorted((b, mean([v[k] for k in seeds])) for b, v in ladder.items())
    target_budget = next((b for b in sorted(ladder) if abs(b / out["tokens_each_arm"] - 1.3) < 0.05), None)
    arms = {}
    for name, runs in out["arms"].items():
        runs = sorted(runs, key=lambda r: r["seed"])
        if [r["seed"] for r in runs] != seeds:
            continue  # an interrupted arm: not every seed finished
        loss = [r["final_val_loss"] for r in runs]
        m, sd = _stats(loss)
        arm = {"settings": {k: runs[0][k] for k in ("growth_point", "growth_fraction", "lr", "grown_lr")},
               "final_losses": loss, "mean": m, "std": sd, "vs_scratch": paired_test(sc_loss, loss),
               "flops": runs[0]["flops"], "flops_scratch": scratch[0]["flops"], "seconds_mean": mean([r["seconds"] for r in runs]),
               "small_final_loss_mean": mean([r["small_final_val_loss"] for r in runs])}
        default = out["arms"].get("gstack")
        if name != "gstack" and default and [r["seed"] for r in sorted(default, key=lambda r: r["seed"])] == seeds:
            # paired against the default arm (positive: this arm has the lower loss)
            arm["vs_default"] = paired_test([r["final_val_loss"] for r in sorted(default, key=lambda r: r["seed"])], loss)
        if target_budget is not None:
            arm["vs_scratch_at_1.3T"] = paired_test([ladder[target_budget][k] for k in seeds], loss)
        if len(ladder) > 1:
            sr = saving_ratio(dict(zip(seeds, loss)), ladder, out["tokens_each_arm"], boot=s["boot"])
            arm["token_saving"] = sr
            # compute: what scratch spends to reach the arm's loss over what the arm spent
            arm["flops_saving_ratio"] = flops_budget(scratch[0]["params"], sr["ratio"] * out["tokens_each_arm"]) / runs[0]["flops"]
        arms[name] = arm
    summary["arms"] = arms
    # The default arm, in the keys the earlier summary had (tests and docs read them).
    main = arms.get("gstack")
    if main is not None:
        pooled = math.sqrt((summary["scratch_seed_std"] ** 2 + main["std"] ** 2) / 2)
        n = len(seeds)
        summary.update(
            gstack_final_losses=main["final_losses"], gstack_final_loss_mean=main["mean"], gstack_seed_std=main["std"],
            gap_at_equal_tokens=summary["scratch_final_loss_mean"] - main["mean"], paired_gaps=main["vs_scratch"]["gaps"],
            paired_p_one_sided=main["vs_scratch"]["p_one_sided"], paired_p_two_sided=main["vs_scratch"]["p_two_sided"],
            noise=pooled, margin=2 * pooled * math.sqrt(2 / n),
        )
        summary["beats_scratch_by_more_than_noise"] = bool(
            summary["gap_at_equal_tokens"] > summary["margin"] and main["vs_scratch"]["wins"] == n
        )
        if "token_saving" in main:
            summary["token_saving_ratio"] = main["token_saving"]["ratio"]
            summary["token_saving_ci95"] = main["token_saving"]["ci95"]
            summary["flops_saving_ratio"] = main["flops_saving_ratio"]
    return summary


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sm = out["summary"]
    panels = 3 + bool(out.get("layerwise"))
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), dpi=120)
    scratch = [r for r in out["lr_sweep"] if r["lr"] == out["settings"]["lr"] and r["tokens"] == out["tokens_each_arm"]]
    main = out["arms"].get("gstack", [])
    ax = axes[0]
    for i, r in enumerate(scratch):
        ax.plot(*zip(*r["curve"]), color="tab:gray", alpha=0.8, label=f"scratch ({out['settings']['target_layers']} layers)" if i == 0 else None)
    for i, r in enumerate(main):
        ax.plot(*zip(*r["curve"]), color="tab:blue", alpha=0.8,
                label=f"G_stack ({len(set(r['layer_map']))} → {len(r['layer_map'])} layers)" if i == 0 else None)
    for r in out.get("ladder", []):
        ax.plot(*zip(*r["curve"]), color="tab:gray", alpha=0.3, linestyle="--")
        ax.plot(r["tokens"], r["final_val_loss"], "s", color="tab:gray", alpha=0.5)
    if main:
        d = main[0]["small_tokens"]
        ax.axvline(d, color="tab:blue", linestyle=":", linewidth=1, label=f"growth at d = {d:,} tokens")
    ax.set_xlabel("tokens (G_stack: small model's included)")
    ax.set_ylabel("held-out loss")
    ax.set_title("G_stack vs scratch (dashed: scratch ladder)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    runs = scratch + main + out.get("ladder", [])
    if runs:
        lo = min(min(y for _, y in r["curve"]) for r in runs)
        hi = min(max(max(y for _, y in r["curve"]) for r in runs), lo + 1.6)
        ax.set_ylim(lo - 0.05, hi + 0.05)

    ax = axes[1]  # every arm: mean final loss ± SE vs scratch's
    names = ["scratch"] + list(sm.get("arms", {}))
    means = [sm["scratch_final_loss_mean"]] + [a["mean"] for a in sm.get("arms", {}).values()]
    n = max(sm["seeds"], 1)
    errs = [sm["scratch_seed_std"] / math.sqrt(n)] + [a["std"] / math.sqrt(n) for a in sm.get("arms", {}).values()]
    ax.errorbar(range(len(names)), means, yerr=errs, fmt="o", color="tab:blue", capsize=3)
    for b, m in sm.get("scratch_ladder_mean", []):
        if b != sm["tokens_each_arm"]:
            ax.axhline(m, color="tab:gray", linestyle="--", linewidth=1)
            ax.text(len(names) - 0.5, m, f"scratch {b / sm['tokens_each_arm']:.1f}T", fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"held-out loss at T (mean ± SE, {n} seeds)")
    ax.set_title("arms at equal tokens T")
    ax.grid(alpha=0.3)

    ax = axes[2]  # scratch LR sweep
    for lr, v in sm["scratch_by_lr"].items():
        ax.errorbar(float(lr), v["mean"], yerr=v["std"] / math.sqrt(max(v["n"], 1)), fmt="o", color="tab:gray", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("scratch peak LR")
    ax.set_ylabel("held-out loss at T (mean ± SE)")
    ax.set_title(f"scratch LR sweep (best {sm['best_lr']:g})")
    ax.grid(alpha=0.3)

    if out.get("layerwise"):
        ax = axes[3]
        series = [(f"layer-wise ({r['embedding']}{', stop rule' if r['stopping_rule'] else ''})", r) for r in out["layerwise"]]
        series += [("monolithic (frozen hashed)", r) for r in out["monolithic_frozen"]]
        series += [("monolithic (embedding trained)", r) for r in out["monolithic"]]
        for label, r in series:
            ax.plot(*zip(*r["curve"]), alpha=0.8, label=label)
        ax.set_xlabel("tokens")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"layer-wise (1 layer/stage) vs monolithic, {out['settings']['layerwise']['layers']} layers")
        lo2 = min(min(y for _, y in r["curve"]) for _, r in series)
        hi2 = min(max(max(y for _, y in r["curve"]) for _, r in series), lo2 + 1.8)
        ax.set_ylim(lo2 - 0.05, hi2 + 0.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(out: dict) -> str:
    """The evidence tables of docs/grow.md, from a results JSON (``--table``)."""
    sm = out["summary"]
    T = sm["tokens_each_arm"]
    fmt_p = lambda p: "n/a" if p is None else f"{p:.2g}"  # noqa: E731
    lines = [f"Command: `{out['command']}`; {sm['seeds']} seeds; T = {T:,} tokens per arm.", ""]
    seeds = out["settings"]["seeds"]
    lines += ["| held-out loss at T | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | std |",
              "|---|" + "---|" * (len(seeds) + 2)]
    lines.append(f"| scratch, LR {sm['base_lr']:g} | " + " | ".join(f"{x:.4f}" for x in sm["scratch_final_losses"])
                 + f" | {sm['scratch_final_loss_mean']:.4f} | {sm['scratch_seed_std']:.4f} |")
    for name, a in sm["arms"].items():
        lines.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in a["final_losses"]) + f" | {a['mean']:.4f} | {a['std']:.4f} |")
    for b, m in sm["scratch_ladder_mean"]:
        if b != T:
            runs = sorted((r for r in out["ladder"] if r["tokens"] == b), key=lambda r: r["seed"])
            lines.append(f"| scratch at {b:,} tokens ({b / T:.2f}T) | " + " | ".join(f"{r['final_val_loss']:.4f}" for r in runs)
                         + f" | {m:.4f} | {_stats([r['final_val_loss'] for r in runs])[1]:.4f} |")
    lines += ["", "| arm (vs scratch at T, paired over seeds) | gap (nats) | wins | p two-sided | p one-sided | vs scratch at 1.3T: gap, p one-sided "
              "| token saving | 95% bootstrap CI | censored draws | compute saving |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in sm["arms"].items():
        v = a["vs_scratch"]
        w = a.get("vs_scratch_at_1.3T")
        ts = a.get("token_saving")
        lines.append(
            f"| {name} | {v['mean_gap']:+.4f} | {v['wins']}/{v['n']} | {fmt_p(v['p_two_sided'])} | {fmt_p(v['p_one_sided'])} | "
            + (f"{w['mean_gap']:+.4f}, {fmt_p(w['p_one_sided'])}" if w else "–") + " | "
            + (f"{ts['ratio']:.3f}× ({ts['match_kind']}) | {ts['ci95'][0]:.3f}–{ts['ci95'][1]:.3f} | {ts['censored_draws']}/{ts['boot']} | "
               f"{a['flops_saving_ratio']:.3f}× |" if ts else "– | – | – | – |"))
    others = [(n, a["vs_default"]) for n, a in sm["arms"].items() if "vs_default" in a]
    if others:
        lines += ["", "| arm vs the default G_stack arm (paired) | gap (nats, + = arm better) | wins | p two-sided |", "|---|---|---|---|"]
        lines += [f"| {n} | {v['mean_gap']:+.4f} | {v['wins']}/{v['n']} | {fmt_p(v['p_two_sided'])} |" for n, v in others]
    lines += ["", "| scratch LR | mean loss at T | std | seeds |", "|---|---|---|---|"]
    for lr, v in sm["scratch_by_lr"].items():
        lines.append(f"| {lr} | {v['mean']:.4f} | {v['std']:.4f} | {v['n']} |")
    lines.append(f"\nbest scratch LR {sm['best_lr']:g}; base LR {sm['base_lr']:g} bracketed as the best: {sm['lr_bracketed']}")
    if out.get("layerwise"):
        lines += ["", "| run | stage | layers | trainable params | steps | stopped early | tokens | training FLOPs | wall s | held-out loss |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in out["layerwise"]:
            name = f"layer-wise, {r['embedding']}" + (", stop rule" if r["stopping_rule"] else "")
            for st in r["stages"]:
                lines.append(f"| {name} | {st['stage']} | {st['layers']} | {st['trainable_params']:,} | {st['steps']} | "
                             f"{'yes' if st['stopped_early'] else 'no'} | {st['tokens']:,} | {st['flops']:.3e} | {st['seconds']} | {st['final_val_loss']:.4f} |")
            lines.append(f"| {name}, total | | {r['stages'][-1]['layers']} | | | | {r['tokens']:,} | {r['flops']:.3e} | {r['seconds']} | {r['final_val_loss']:.4f} |")
        for label, key in (("monolithic, frozen substrate", "monolithic_frozen"), ("monolithic, embedding trained", "monolithic")):
            for r in out[key]:
                lines.append(f"| {label} | | {out['settings']['layerwise']['layers']} | {r['trainable_params']:,} | | | {r['tokens']:,} | "
                             f"{r['flops']:.3e} | {r['seconds']} | {r['final_val_loss']:.4f} |")
    return "\n".join(lines)


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="G_stack vs scratch at equal tokens only (no sweeps, no ladder, no layer-wise)")
    parser.add_argument("--smoke", action="store_true", help="every part on a tiny budget (a code-path check; its numbers are not evidence)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2,3,4)")
    parser.add_argument("--tokens", type=int, help="token budget T of every arm (default 200000; layer-wise part unchanged)")
    parser.add_argument("--lr-sweep", help="scratch LRs as factors of the base LR, besides 1 (default 0.5,2)")
    parser.add_argument("--ladder", help="scratch budgets as multiples of T for the saving ratio (default 1.3,2)")
    parser.add_argument("--d-sweep", help="extra growth points d/T for the default G_stack arm (default 0.125,0.5)")
    parser.add_argument("--variants", help="G_stack variants: annealed, grown_lr (default both; 'none' for neither)")
    parser.add_argument("--width", type=int, help="hidden size of every model (FFN 2.75x, 4 heads / 2 KV heads; default 128)")
    parser.add_argument("--tokenizer", help="tokenizer spec (default bpe:2048)")
    parser.add_argument("--lr", type=float, help="base peak LR (default 2e-3)")
    parser.add_argument("--evals", type=int, help="held-out evaluations per run (default 8; the final one always)")
    parser.add_argument("--eval-blocks", type=int, help="held-out blocks per evaluation (default 128)")
    parser.add_argument("--no-layerwise", action="store_true", help="skip part 2")
    parser.add_argument("--table", type=Path, help="print the markdown evidence tables of a results JSON (statistics recomputed from its runs) and exit")
    parser.add_argument("--boot", type=int, help="bootstrap draws for the ratio's CI (default 2000)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/grow[_quick|_smoke].json)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads that must wait for each "
                             "other's core run up to 50x slower; 1 thread degrades gracefully)")
    parser.add_argument("--work", type=Path, help="scratch folder for run state (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.table is not None:
        done = json.loads(args.table.read_text())
        done["summary"] = summarize(done)  # recomputed from the stored runs, so the tables follow this file's statistics
        print(markdown(done))
        return {}
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    s = dict(SETTINGS[mode])
    if args.seeds:
        s["seeds"] = [int(x) for x in args.seeds.split(",")]
    for key, value in (("tokens", args.tokens), ("boot", args.boot), ("lr_sweep", _floats(args.lr_sweep)),
                       ("ladder", _floats(args.ladder)), ("d_sweep", _floats(args.d_sweep)), ("tokenizer", args.tokenizer),
                       ("lr", args.lr), ("evals", args.evals), ("eval_blocks", args.eval_blocks)):
        if value is not None:
            s[key] = value
    if args.tokens is not None and s.get("layerwise"):
        s["layerwise"] = dict(s["layerwise"], tokens=args.tokens)
    if args.width:
        s["width"] = dict(s["width"], hidden_size=args.width, intermediate_size=int(round(2.75 * args.width)))
    if args.variants is not None:
        s["variants"] = [] if args.variants == "none" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(s["variants"]) - {"annealed", "grown_lr"}
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)} (use annealed, grown_lr)")
    if args.no_layerwise:
        s["layerwise"] = None
    out_path = args.out or ROOT / "bench" / "results" / f"grow{'' if mode == 'full' else '_' + mode}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="lifecycle-grow-bench-"))
    started = time.perf_counter()
    bench = Bench(s, work)
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--out") and not a.startswith("--work")]
    out: dict = {
        "command": " ".join(["python bench/grow.py", *[a for a in shown if a != str(args.out) and a != str(args.work)]]),
        "settings": s,
        "data": bench.data.describe(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_start": os.getloadavg()},
        "tokens_each_arm": bench.steps * bench.tokens_per_step,
        "lr_sweep": [], "best_lr": s["lr"], "arms": {}, "ladder": [],
    }

    def save() -> None:
        try:  # a summary of what has finished so far (an interrupted run keeps one)
            out["summary"] = summarize(out)
        except Exception as exc:  # noqa: BLE001 - partial data; the final summary below is strict
            out["summary"] = {"error": f"not yet: {exc}"}
        out["seconds_total"] = round(time.perf_counter() - started, 1)
        out["cpu_seconds_total"] = round(time.process_time(), 1)
        out_path.write_text(json.dumps(out, indent=1))

    log(f"{mode}: {bench.data.describe()['train_tokens']:,} training tokens; {bench.steps} steps of {bench.tokens_per_step} tokens per arm")

    # Order: what the headline needs first (scratch and G_stack at T, the ladder), then the checks
    # (LR sweep, variants, d sweep), so an interrupted run still leaves a complete headline.
    lr = s["lr"]

    def scratch_runs(lr_: float, steps: int, into: list, label: str) -> list[float]:
        losses = []
        for seed in s["seeds"]:
            r = bench.scratch(seed, steps, lr_)
            into.append(r)
            losses.append(r["final_val_loss"])
            log(f"scratch {label} seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens ({r['seconds']} s)")
            save()
        return losses

    def gstack_runs(name: str, **kw) -> None:
        out["arms"][name] = []
        for seed in s["seeds"]:
            r = bench.gstack(seed, lr, **kw)
            out["arms"][name].append(r)
            log(f"G_stack {name} seed {seed}: loss {r['final_val_loss']:.4f} after {r['tokens']:,} tokens "
                f"(small {r['small_tokens']:,} → loss {r['small_final_val_loss']:.4f}; {r['seconds']} s)")
            save()

    # 1. the headline: scratch at T, G_stack (default arm) at T, the scratch ladder, all at the base LR
    means = {lr: sum(scratch_runs(lr, bench.steps, out["lr_sweep"], f"lr {lr:g}")) / len(s["seeds"])}
    gstack_runs("gstack", growth_fraction=s["growth_fraction"])
    for m in s["ladder"]:
        scratch_runs(lr, int(round(bench.steps * m)), out["ladder"], f"ladder x{m:g}")

    # 2. the scratch LR sweep around the base LR, extended outward while the best LR is at an edge. Every
    # arm above used the base LR; the summary says whether it is the bracketed best (lr_bracketed).
    for f in s["lr_sweep"]:
        lr_ = lr * f
        means[lr_] = sum(scratch_runs(lr_, bench.steps, out["lr_sweep"], f"lr {lr_:g}")) / len(s["seeds"])
    for _ in range(s["lr_extend"] if s["lr_sweep"] else 0):
        best = min(means, key=means.get)
        lrs = sorted(means)
        if lrs[0] < best < lrs[-1]:
            break
        step = max(lrs[-1] / lrs[-2], lrs[1] / lrs[0])
        nxt = best * step if best == lrs[-1] else best / step
        means[nxt] = sum(scratch_runs(nxt, bench.steps, out["lr_sweep"], f"lr {nxt:g}")) / len(s["seeds"])
    out["best_lr"] = min(means, key=means.get)
    log("scratch means by LR: " + ", ".join(f"{k:g} → {v:.4f}" for k, v in sorted(means.items())) + f"; best {out['best_lr']:g}")

    # 3. G_stack variants and the d sweep, at the base LR
    if "annealed" in s["variants"]:
        gstack_runs("annealed", growth_fraction=s["growth_fraction"], growth_point="annealed")
    if "grown_lr" in s["variants"]:
        gstack_runs(f"grown_lr_x{s['grown_lr_factor']:g}", growth_fraction=s["growth_fraction"], grown_lr=lr * s["grown_lr_factor"])
    for f in s["d_sweep"]:
        gstack_runs(f"d={f:g}T", growth_fraction=f)

    # 4. layer-wise growth (one seed)
    if s.get("layerwise"):
        out["layerwise"], out["monolithic_frozen"], out["monolithic"] = [], [], []
        seed = s["seeds"][0]
        for embedding, stop in (("hashed", False), ("unit", False), ("hashed", True)):
            r = bench.layerwise(seed, embedding=embedding, stop=stop)
            out["layerwise"].append(r)
            log(f"layer-wise {embedding}{' + stop rule' if stop else ''}: loss {r['final_val_loss']:.4f}; stages " + ", ".join(
                f"{st['layers']}L {st['steps']} steps {st['final_val_loss']:.3f} ({st['seconds']} s)" for st in r["stages"]))
            save()
        r = bench.monolithic(seed, frozen=True)
        out["monolithic_frozen"].append(r)
        log(f"monolithic, frozen substrate: loss {r['final_val_loss']:.4f} ({r['seconds']} s)")
        r = bench.monolithic(seed, frozen=False)
        out["monolithic"].append(r)
        log(f"monolithic, embedding trained: loss {r['final_val_loss']:.4f} ({r['seconds']} s)")
    out["summary"] = summarize(out)
    out["machine"]["loadavg_end"] = os.getloadavg()
    save()
    plot(out, out_path.with_suffix(".png"))
    sm = out["summary"]
    for name, a in sm["arms"].items():
        v = a["vs_scratch"]
        msg = (f"{name}: mean {a['mean']:.4f} vs scratch {sm['scratch_final_loss_mean']:.4f}; gap {v['mean_gap']:+.4f} "
               f"({v['wins']}/{v['n']} seeds), paired p = {v['p_two_sided']} (one-sided {v['p_one_sided']})")
        if "token_saving" in a:
            ts = a["token_saving"]
            msg += f"; token saving {ts['ratio']:.3f}x ({ts['match_kind']}), 95% CI {ts['ci95'][0]:.3f}–{ts['ci95'][1]:.3f}"
        log(msg)
    log(f"total {out['seconds_total']} s → {out_path}")
    return out


if __name__ == "__main__":
    main()
