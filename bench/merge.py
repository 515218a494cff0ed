"""lifecycle merge against mergekit on SmolLM2-135M and two fine-tuned variants (issue 10, evidence).

    OMP_NUM_THREADS=1 python bench/merge.py mergekit --mergekit-python /tmp/mk-venv/bin/python --repeats 3
    OMP_NUM_THREADS=1 python bench/merge.py lora --tasks agnews amazon --train-examples 160 --test-items 50 --icm-steps 100

``mergekit``: the parents are SmolLM2-135M-Instruct (the built-in GGUF, dequantized once and saved as
safetensors, because mergekit reads no GGUF) and two variants fine-tuned from it here with
``lifecycle train`` on two real domains (drama and C code, ``--parent-steps`` steps each; made once
in ``--work`` and reused). Every method's YAML runs through ``lifecycle merge`` and through
mergekit's ``mergekit-yaml``, each in its own subprocess, alternating which goes first, ``--repeats``
times; wall time, CPU time and peak RSS are those of that subprocess (``os.wait4``'s rusage of the one
child, so one run's peak never leaks into the next), and the medians are compared. Reported: max |lifecycle − mergekit| of every output tensor, and
the time and memory ratios lifecycle / mergekit. Results: bench/results/merge_smollm2_vs_mergekit.json.

``lora``: multi-task accuracy of fused LoRA adapters on SmolLM2-135M-Instruct. One LoRA per task
(``lifecycle continual``'s LoRA settings: q/v, r 8, alpha 32, dropout 0.1, LR 1e-3, constant; one
epoch over the first ``--train-examples`` training rows, on the engine), then the fusions, all with
weight 1 per adapter (both tasks' updates applied in full): ``lora_concat`` (exact), ``lora_svd`` at the
inputs' rank (peft's default ``svd`` combination; the two are compared update by update and the
peft one is not scored twice), ``icm_fusion`` (EXPERIMENTAL) and peft's ``add_weighted_adapter`` with
``combination_type="linear"`` (A and B averaged separately: lossy). Each is scored on every task by
multiple choice over the label set, the way ``lifecycle continual`` scores
(:func:`lifecycle.methods.continual.tasks.score_tasks`, first ``--test-items`` test rows), beside the
base model (the floor) and each task's own LoRA on its task (the upper reference). Standard error of
each accuracy: ``sqrt(p(1-p)/(n-1))``. Results: bench/results/merge_lora_fusion.json.

The tiny-model comparison (more configs, bf16, gradients) is ``bench/merge_vs_mergekit.py``; the
logit-MoE bench is ``bench/merge_logit_moe.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOMAINS = {"drama": "shakespeare", "c": "linux_c"}


def train_command(name: str, data: str, out: Path, steps: int) -> list[str]:
    """The fine-tune that makes one parent: short, small blocks, a fine-tuning learning rate."""
    return [sys.executable, "-m", "lifecycle", "train", "--model", "smollm2", "--data", data, "--steps", str(steps),
            "-o", str(out), "block_size=64", "train.micro_batch_size=4", "train.lr=1e-4", "train.warmup_steps=4",
            "train.eval_every=0", "train.eval_blocks=8", "train.log_every=10", "train.seed=0"]


def base_folder(work: Path) -> Path:
    """SmolLM2-135M-Instruct (the built-in Q4_1 GGUF, dequantized) saved once as safetensors."""
    base = work / "parents" / "base"
    if not (base / "config.json").exists():
        from lifecycle.model.io import load_model, save_checkpoint

        loaded = load_model("smollm2")
        save_checkpoint(loaded.model, loaded.tokenizer, base, lineage={"command": "bench", "source": "smollm2"})
    return base


def make_parents(work: Path, steps: int) -> dict:
    """The base and the two fine-tuned variants; reused when present."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    models, commands = {}, {}
    models["base"] = str(base_folder(work))
    for name, data in DOMAINS.items():
        out = work / "parents" / name
        commands[name] = train_command(name, data, out, steps)
        if not (out / "config.json").exists():
            subprocess.run(commands[name], env=env, check=True)
        models[name] = str(out)
    return {"models": models, "train_commands": [" ".join(c[1:]) for c in commands.values()]}


def configs(m: dict[str, str]) -> dict[str, dict]:
    """One YAML per method, as a mergekit user would write it."""
    base = m["base"]
    two = [{"model": m["drama"], "parameters": {"weight": 0.6}}, {"model": m["c"], "parameters": {"weight": 0.4}}]
    sparse = [{"model": m["drama"], "parameters": {"weight": 1.0, "density": 0.5}},
              {"model": m["c"], "parameters": {"weight": 0.5, "density": [0.3, 0.8]}}]
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
         {"value": 0.5}]
    return {
        "linear": {"merge_method": "linear", "models": two},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base, "models": two,
                            "parameters": {"lambda": 0.8}},
        "ties": {"merge_method": "ties", "base_model": base, "models": sparse},
        "dare_linear": {"merge_method": "dare_linear", "base_model": base, "models": sparse},
        "dare_ties": {"merge_method": "dare_ties", "base_model": base, "models": sparse},
        "slerp": {"merge_method": "slerp", "base_model": m["drama"],
                  "models": [{"model": m["drama"]}, {"model": m["c"]}], "parameters": {"t": t}},
    }


def measured(cmd: list[str], env: dict) -> dict:
    """Run one command; its wall time and its own peak RSS (wait4 reports this child only)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{output[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def compare(ours: Path, theirs: Path) -> dict:
    from merge_vs_mergekit import read

    a, b = read(ours), read(theirs)
    common = sorted(set(a) & set(b))
    diffs = {n: (a[n].float() - b[n].float()).abs().max().item() for n in common}
    worst = max(diffs, key=diffs.get)
    return {"tensors_compared": len(common), "only_lifecycle": sorted(set(a) - set(b)),
            "only_mergekit": sorted(set(b) - set(a)),
            "dtypes": sorted({str(t.dtype) for t in a.values()} | {str(t.dtype) for t in b.values()}),
            "max_abs_diff": diffs[worst], "worst_tensor": worst,
            "tensors_nonzero_diff": sum(d > 0 for d in diffs.values()), "per_tensor": diffs}


def run_mergekit(args: argparse.Namespace) -> None:
    version = subprocess.run([args.mergekit_python, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    work = args.work
    parents = make_parents(work, args.parent_steps)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mergekit_yaml = str(Path(args.mergekit_python).parent / "mergekit-yaml")
    results = {"command": " ".join(sys.argv), "mergekit_version": version, "machine": platform.processor() or platform.machine(),
               "threads": 1, **parents, "methods": {}}
    for index, (name, cfg) in enumerate(configs(parents["models"]).items()):
        if args.only and name not in args.only:
            continue
        cfg_file = work / f"{name}.yml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        ours, theirs = work / "out" / f"{name}-lifecycle", work / "out" / f"{name}-mergekit"
        runs = {
            "lifecycle": [sys.executable, "-m", "lifecycle", "merge", "--config", str(cfg_file), "-o", str(ours),
                          "--random-seed", "0", "--overwrite"],
            "mergekit": [mergekit_yaml, str(cfg_file), str(theirs), "--random-seed", "0"],
        }
        # Each tool runs --repeats times, alternating which goes first, so load drift hits both sides;
        # the ratios are of the medians (wall and CPU time) and of the largest peak RSS.
        samples: dict[str, list[dict]] = {tool: [] for tool in runs}
        for repeat in range(args.repeats):
            order = list(runs) if (index + repeat) % 2 == 0 else list(runs)[::-1]
            for tool in order:
                samples[tool].append(measured(runs[tool], env))
        timing = {tool: {"wall_s": statistics.median(r["wall_s"] for r in rows),
                         "cpu_s": statistics.median(r["cpu_s"] for r in rows),
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in rows), "runs": rows}
                  for tool, rows in samples.items()}
        row = compare(ours, theirs)
        row.update({tool: timing[tool] for tool in runs}, repeats=args.repeats, load_average=list(os.getloadavg()),
                   wall_ratio=round(timing["lifecycle"]["wall_s"] / timing["mergekit"]["wall_s"], 3),
                   cpu_ratio=round(timing["lifecycle"]["cpu_s"] / timing["mergekit"]["cpu_s"], 3),
                   rss_ratio=round(timing["lifecycle"]["peak_rss_mib"] / timing["mergekit"]["peak_rss_mib"], 3))
        results["methods"][name] = row
        print(f"{name:16s} {row['tensors_compared']} tensors  max|Δ| {row['max_abs_diff']:.3g} ({row['worst_tensor']}, "
              f"{row['tensors_nonzero_diff']} nonzero)  wall {timing['lifecycle']['wall_s']}/{timing['mergekit']['wall_s']} s"
              f" = {row['wall_ratio']}  CPU {row['cpu_ratio']}  RSS {timing['lifecycle']['peak_rss_mib']}/{timing['mergekit']['peak_rss_mib']} MiB"
              f" = {row['rss_ratio']}", flush=True)
    if args.only:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


def _accuracy(p: float, n: int) -> dict:
    return {"acc": p, "stderr": math.sqrt(p * (1 - p) / max(n - 1, 1)), "n": n}


def train_lora(base: Path, task, args: argparse.Namespace, out: Path) -> dict:
    """One task's LoRA on the engine, with ``lifecycle continual``'s LoRA settings; saved as a peft adapter."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model

    from lifecycle.methods.continual.lora import LoRAOptions
    from lifecycle.methods.continual.options import _default_train
    from lifecycle.methods.continual.pipeline import load_task_data
    from lifecycle.model.io import load_model
    from lifecycle.train.engine import train
    from lifecycle.train.hooks import TrainHooks

    lora = LoRAOptions()
    loaded = load_model(str(base))
    data = load_task_data(task, loaded.tokenizer, SimpleNamespace(max_length=256, max_train_examples=args.train_examples))
    cfg = _default_train().model_copy(update={"lr": lora.lr, "steps": math.ceil(data.num_train / 8), "seed": 0})
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                        bias="none", task_type="CAUSAL_LM")
    started = time.perf_counter()
    result = train(loaded.model, data, cfg, out.parent / f".run-{task.name}",
                   hooks=TrainHooks(prepare_model=lambda m: get_peft_model(m, config)), description=f"LoRA {task.name}")
    result.model.save_pretrained(str(out))
    return {"examples": data.num_train, "steps": cfg.steps, "tokens_seen": result.tokens_seen,
            "final_train_loss": result.final_train_loss, "seconds": round(time.perf_counter() - started, 1),
            "r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": list(lora.target_modules),
            "lr": lora.lr}


def _deltas(model) -> dict:
    """Each adapted module's update ``scaling·B·A`` of the active adapter, by module name."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and module.active_adapters and module.active_adapters[0] in module.lora_A:
            out[name.split("base_model.model.", 1)[-1]] = module.get_delta_weight(module.active_adapters[0]).float()
    return out


def run_lora(args: argparse.Namespace) -> None:
    import torch
    from peft import PeftModel

    from lifecycle.methods.continual.tasks import check_test_labels, resolve_task, score_tasks
    from lifecycle.methods.merge.pipeline import merge_models
    from lifecycle.model.io import load_model

    work = args.work / "lora"
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else base_folder(args.work)
    tasks = [resolve_task(t) for t in args.tasks]
    for task in tasks:
        check_test_labels(task, args.test_items)
    timings, results = {}, {"command": " ".join(sys.argv), "tasks": args.tasks, "train_examples": args.train_examples,
                            "test_items": args.test_items, "threads": torch.get_num_threads(), "scores": {}}

    def score(label: str, model, subset) -> None:
        started = time.perf_counter()
        accs = score_tasks(model.eval(), tokenizer, subset, limit=args.test_items, max_length=512)
        timings[f"score {label}"] = round(time.perf_counter() - started, 1)
        results["scores"].setdefault(label, {}).update({name: _accuracy(p, args.test_items) for name, p in accs.items()})
        print(label, {n: round(p, 3) for n, p in accs.items()}, f"{timings[f'score {label}']} s", flush=True)

    def with_adapter(folder: Path):
        return PeftModel.from_pretrained(load_model(str(base)).model, str(folder))

    tokenizer = load_model(str(base)).tokenizer
    adapters, prompts = {}, {}
    results["lora"] = {}
    for task in tasks:
        adapters[task.name] = work / f"lora_{task.name}"
        info = work / f"lora_{task.name}.json"
        if not (adapters[task.name] / "adapter_config.json").exists():
            info.write_text(json.dumps(train_lora(base, task, args, adapters[task.name])))
        results["lora"][task.name] = json.loads(info.read_text())
        prompts[task.name] = work / f"prompts_{task.name}.jsonl"  # ICM-Fusion's task vector: the task's own prompts
        rows = [json.loads(line) for line in task.train_file.read_text().splitlines()[:30]]
        template = task.prompt_template().replace("{instruction}", task.instruction or "")
        prompts[task.name].write_text("".join(json.dumps({"prompt": template.replace("{input}", r[task.prompt_field])}) + "\n"
                                              for r in rows))
    fused = {}
    for method, extra in (("lora_concat", {}), ("lora_svd", {}), ("icm_fusion", {"steps": args.icm_steps, "seed": 0})):
        started = time.perf_counter()
        models = [{"model": str(adapters[t.name]),
                   "parameters": {"weight": 1.0, **({"data": str(prompts[t.name])} if method == "icm_fusion" else {})}}
                  for t in tasks]
        fused[method] = merge_models({"merge_method": method, "base_model": str(base), "models": models,
                                      **({"parameters": extra} if extra else {})}, work / method, overwrite=True)
        timings[f"merge {method}"] = round(time.perf_counter() - started, 1)

    # peft's add_weighted_adapter: its default (svd at the largest input rank) and "linear"
    peft_model = with_adapter(adapters[tasks[0].name])
    for t in tasks[1:]:
        peft_model.load_adapter(str(adapters[t.name]), adapter_name=t.name)
    names = ["default", *[t.name for t in tasks[1:]]]
    peft_model.add_weighted_adapter(names, [1.0] * len(names), "peft_svd")
    peft_model.add_weighted_adapter(names, [1.0] * len(names), "peft_linear", combination_type="linear")
    peft_model.set_adapter("peft_svd")
    peft_svd = _deltas(peft_model)
    ours_svd = _deltas(with_adapter(fused["lora_svd"]))
    results["peft_svd_vs_lora_svd"] = {
        "modules": len(ours_svd), "max_abs_diff": max((peft_svd[m] - ours_svd[m]).abs().max().item() for m in ours_svd),
        "max_abs_update": max(d.abs().max().item() for d in ours_svd.values())}
    print("peft svd vs lora_svd", results["peft_svd_vs_lora_svd"], flush=True)

    score("base", load_model(str(base)).model, tasks)
    for task in tasks:
        score(f"own LoRA ({task.name})", with_adapter(adapters[task.name]), [task])
    for method, folder in fused.items():
        score(method, with_adapter(folder), tasks)
    peft_model.set_adapter("peft_linear")
    score("peft add_weighted_adapter linear", peft_model, tasks)
    results["timings_s"] = timings
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    mk = sub.add_parser("mergekit", help="SmolLM2 and two fine-tunes through lifecycle and mergekit")
    mk.add_argument("--mergekit-python", required=True, help="an interpreter with mergekit installed")
    mk.add_argument("--work", type=Path, default=Path("/tmp/mergebench"))
    mk.add_argument("--parent-steps", type=int, default=30)
    mk.add_argument("--repeats", type=int, default=3, help="runs per tool and method (medians are compared)")
    mk.add_argument("--only", nargs="*", help="run only these methods (results file not written)")
    mk.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merge_smollm2_vs_mergekit.json")
    lora = sub.add_parser("lora", help="LoRA fusion: multi-task accuracy of the fused adapters")
    lora.add_argument("--tasks", nargs="+", default=["agnews", "amazon"])
    lora.add_argument("--train-examples", type=int, default=256)
    lora.add_argument("--test-items", type=int, default=150)
    lora.add_argument("--icm-steps", type=int, default=400)
    lora.add_argument("--work", type=Path, default=Path("/tmp/mergebench"))
    lora.add_argument("--base", help="another base checkpoint folder (a tiny one for a smoke run)")
    lora.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merge_lora_fusion.json")
    args = parser.parse_args()
    if args.part == "mergekit":
        run_mergekit(args)
    else:
        run_lora(args)


if __name__ == "__main__":
    main()
