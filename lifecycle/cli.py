"""The ``lifecycle`` command line: parse, validate, call the library.

Every subcommand takes a few common flags plus ``key=value`` overrides for any option of its
options model (``train.steps=100 eval.tasks=arc_easy,lambada``), and ``--options FILE.yaml`` for a
whole options block. Errors a user can cause print one line and exit non-zero.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from lifecycle.errors import LifecycleError

# Heavy modules (torch, transformers, pydantic models of every command) are imported inside the
# command functions, so `lifecycle --help` and usage errors answer at once.

app = typer.Typer(
    name="lifecycle",
    help="Grow, prune, quantize, continually train, merge and steer Hugging Face causal LMs; score them with lm-eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def __getattr__(name: str):
    # Older code imports the override parser from here; it lives in lifecycle.options.
    if name == "parse_overrides":
        from lifecycle.options import parse_overrides

        return parse_overrides
    raise AttributeError(name)

def _version(value: bool) -> None:
    if value:
        from lifecycle import __version__

        print(f"lifecycle {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Grow, prune, quantize, continually train, merge and steer Hugging Face causal LMs; score them with lm-eval."""


OVERRIDES_HELP = "Option overrides as key=value, dotted for nested options (train.steps=100 eval.tasks=arc_easy); `lifecycle options COMMAND` lists them all."
KEEP_RUN_HELP = "Keep the whole hidden run folder (.OUT.run) once OUT is written (default: only what resuming and auditing need)."
CLEAN_HELP = "Remove the hidden run folder (.OUT.run) once OUT is written (default: keep only what resuming and auditing need)."


def _run_folder(keep_run: bool, clean: bool) -> Optional[str]:
    """``--keep-run`` / ``--clean`` as the ``run_folder`` option (None: the options file or default decides)."""
    if keep_run and clean:
        raise LifecycleError("--keep-run and --clean contradict each other; give one")
    return "keep" if keep_run else "clean" if clean else None


def build_options(command: str, flags: dict, overrides: list[str], options_file: Optional[Path] = None):
    """Flags, then ``--options FILE``, then ``key=value`` overrides, validated by the command's model."""
    from lifecycle.commands import load_all
    from lifecycle.options import build_options as validate, deep_merge, parse_overrides, read_options_file

    cmd = load_all()[command]
    values: dict = read_options_file(options_file) if options_file is not None else {}
    values = deep_merge(values, {k: v for k, v in flags.items() if v is not None})
    values = deep_merge(values, parse_overrides(overrides))
    return cmd, validate(command, values)


# Commands whose own output is their summary (push lists the files it sent).
_OWN_SUMMARY = {"push"}


def run_command(command: str, flags: dict, overrides: list[str], options_file: Optional[Path] = None) -> Path:
    """Validate, preflight, run; then the shared end-of-command summary of what was written."""
    import time

    from lifecycle.preflight import run_preflight

    started = time.perf_counter()
    cmd, opts = build_options(command, flags, overrides, options_file)
    run_preflight(cmd, opts)  # every check that needs no work, before any work
    out = cmd.run(opts)
    if out is not None and command not in _OWN_SUMMARY:
        from lifecycle.finish import print_summary

        print_summary(out, time.perf_counter() - started)
    return out


def _maybe_relaunch(num_processes: int) -> None:
    """Re-exec this command under ``accelerate launch`` for multi-process runs (axolotl-style)."""
    if num_processes <= 1 or os.environ.get("LIFECYCLE_LAUNCHED") == "1" or "LOCAL_RANK" in os.environ:
        return
    import importlib.util

    args = [a for a in sys.argv[1:]]
    cleaned: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--num-processes", "-n"):
            skip = True
            continue
        if a.startswith("--num-processes="):
            continue
        cleaned.append(a)
    # `python -m accelerate...` with this interpreter, not whatever `accelerate` is first on PATH
    # (an un-activated virtualenv has none, another environment's would run the wrong code).
    if importlib.util.find_spec("accelerate") is None:
        raise LifecycleError("multi-process runs need accelerate installed")
    env = dict(os.environ, LIFECYCLE_LAUNCHED="1")
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
              "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    import torch

    if not torch.cuda.is_available():
        if any(arg == "--deepspeed" or arg.startswith(("--deepspeed=", "deepspeed=")) for arg in cleaned):
            raise LifecycleError("DeepSpeed with several processes needs GPUs; on CPU use -n without --deepspeed, "
                                 "or --deepspeed with one process")
        # `accelerate launch --cpu` starts ONE process unless MPI is set up; the torchrun-based
        # launcher (--multi_gpu) plus ACCELERATE_USE_CPU gives N gloo processes on the CPU.
        env["ACCELERATE_USE_CPU"] = "1"
    os.execve(sys.executable, [*launch, "-m", "lifecycle", *cleaned], env)


@app.command()
def train(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to write the checkpoint to (required, here or in --options)."),
    config: Optional[str] = typer.Option(None, help="Train from scratch: micro, tiny, small or a config .json."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Continue pretraining this checkpoint (folder, Hub id, .gguf, smollm2)."),
    data: Optional[str] = typer.Option(None, help="Data: shakespeare, wikitext, linux_c, python_stdlib, a file/folder, or hf:NAME."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (train.steps)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint of this run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    deepspeed: Optional[str] = typer.Option(None, help="DeepSpeed ZeRO config JSON."),
    num_processes: int = typer.Option(1, "--num-processes", "-n", min=1, help="Processes (re-launches under accelerate)."),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Pretrain a model from a config, or continue pretraining a checkpoint."""
    _maybe_relaunch(num_processes)
    flags = {"output": str(output) if output else None, "config": config, "model": model, "data": data, "resume": resume or None,
             "overwrite": overwrite or None, "deepspeed": deepspeed}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("train", flags, overrides or [], options)


@app.command()
def grow(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the grown checkpoint (not needed with --plan)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Trained source checkpoint to grow."),
    config: Optional[str] = typer.Option(None, help="Target config to grow from scratch: micro, tiny, small or a .json."),
    method: Optional[str] = typer.Option(None, help="gstack (stack layers, default) or layerwise (frozen substrate)."),
    target_layers: Optional[int] = typer.Option(None, "--target-layers", help="Depth of the grown model."),
    factor: Optional[float] = typer.Option(None, help="Growth factor g (target = g x source depth; default 4)."),
    layer_map: Optional[str] = typer.Option(None, "--layer-map", help="Source layer of every target layer: 0,1,2,3,0,1,2,3."),
    order: Optional[str] = typer.Option(None, help="G_stack order: stack (0123 0123) or interleave (0011 2233)."),
    data: Optional[str] = typer.Option(None, help="Data: shakespeare, wikitext, linux_c, python_stdlib, a file/folder, or hf:NAME."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (train.steps; the total budget when growing from --config)."),
    plan: bool = typer.Option(False, "--plan", help="Print the G_stack growth plan (d, small model, saving) and exit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Grow a model deeper: G_stack layer stacking, or layer-wise growth on a frozen substrate."""
    flags = {"output": str(output) if output else ("(plan: nothing is written)" if plan else None), "model": model,
             "config": config, "method": method, "target_layers": target_layers, "factor": factor, "layer_map": layer_map,
             "order": order, "data": data, "plan": plan or None, "overwrite": overwrite or None}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("grow", flags, overrides or [], options)


@app.command()
def prune(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the pruned checkpoint."),
    model: str = typer.Option(..., "--model", "-m", help="Model to prune: folder, Hub id, .gguf file, or smollm2."),
    method: Optional[str] = typer.Option(None, help="adapt (Adapt-Pruner, default), taylor-uniform, flap or depth."),
    target_params: Optional[str] = typer.Option(None, "--target-params", help="Total parameters to reach, e.g. 95M."),
    ratio: Optional[float] = typer.Option(None, help="Share of the decoder's non-embedding parameters to remove, e.g. 0.3."),
    plan: Optional[str] = typer.Option(None, "--plan", help="Per-layer plan file (num_key_value_heads, intermediate_size, drop_layers)."),
    uniform: bool = typer.Option(False, "--uniform", help="Same width in every layer: a vanilla config."),
    attention_ratio: Optional[float] = typer.Option(None, "--attention-ratio", help="taylor-uniform: share of KV groups removed in every layer (whole GQA groups)."),
    stages: Optional[int] = typer.Option(None, help="Adapt-Accel: prune/train stages (needs train.steps)."),
    data: Optional[str] = typer.Option(None, help="Recovery/calibration data: wikitext, shakespeare, a file/folder, or hf:NAME."),
    steps: Optional[int] = typer.Option(None, help="Recovery training steps (train.steps; 0 = prune only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Structured pruning (Adapt-Pruner, uniform Taylor, FLAP, depth) into checkpoints that load."""
    flags = {"output": str(output), "model": model, "method": method, "target_params": target_params, "ratio": ratio,
             "plan": plan, "uniform": uniform or None, "attention_ratio": attention_ratio, "stages": stages,
             "data": data, "overwrite": overwrite or None}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("prune", flags, overrides or [], options)


@app.command()
def quantize(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the quantized checkpoint."),
    model: str = typer.Option(..., "--model", "-m", help="Full-precision model: folder, Hub id, .gguf file, or smollm2."),
    method: Optional[str] = typer.Option(None, help="bitnet-b158 (default), ternary-rtn, bnb-nf4 or bnb-int8."),
    export: Optional[str] = typer.Option(None, help="Ternary methods: packed (2-bit, default), online (fp, trainable) or master."),
    data: Optional[str] = typer.Option(None, help="QAT training data: wikitext, shakespeare, a file/folder, or hf:NAME."),
    steps: Optional[int] = typer.Option(None, help="QAT training steps (train.steps; 0 = convert only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """BitNet b1.58 ternary QAT (packed 2-bit export) and post-training baselines."""
    flags = {"output": str(output), "model": model, "method": method, "export": export, "data": data,
             "overwrite": overwrite or None}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("quantize", flags, overrides or [], options)


@app.command()
def continual(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the final model (per-task checkpoints in its tasks/)."),
    model: str = typer.Option(..., "--model", "-m", help="Model: folder, Hub id, .gguf file, or smollm2."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated task sequence: task folders, prompt/completion .jsonl files (test split beside them) or names in shared/data/continual."),
    method: Optional[str] = typer.Option(None, help="osft (default), olora, seq-ft, seq-lora, l2, ewc, replay, slca or multitask."),
    steps: Optional[int] = typer.Option(None, help="Training steps per task (train.steps)."),
    limit: Optional[int] = typer.Option(None, help="Test items scored per task."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (at the task and step where it stopped)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Train a task sequence without forgetting (OSFT, O-LoRA, baselines); writes the accuracy matrix, AA, BWT, FWT."""
    flags = {"output": str(output), "model": model, "tasks": tasks, "method": method, "limit": limit,
             "resume": resume or None, "overwrite": overwrite or None}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("continual", flags, overrides or [], options)


@app.command()
def merge(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="mergekit YAML (merge_method, models, base_model, parameters, dtype)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged checkpoint (a LoRA adapter folder for lora_*/icm_fusion)."),
    method: Optional[str] = typer.Option(None, "--method", help="merge_method: linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, logit_moe, lora_concat, lora_svd, icm_fusion (EXPERIMENTAL)."),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="A model (or, for lora_*/icm_fusion, a LoRA adapter folder) to merge (repeat the flag); replaces the config's models."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model (task vectors; slerp's t = 0)."),
    random_seed: Optional[int] = typer.Option(None, "--random-seed", help="Seed for DARE's random drop (as mergekit's --random-seed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Merge models from a mergekit YAML: weight merges (linear, task arithmetic, TIES, DARE, SLERP) tensor by tensor, a logit-averaging MoE (logit_moe), exact LoRA fusion (lora_concat, lora_svd) and ICM-Fusion (icm_fusion, EXPERIMENTAL: a reconstruction)."""
    flags = {"config": str(config) if config else None, "output": str(output), "merge_method": method,
             "models": list(model) if model else None, "base_model": base_model, "random_seed": random_seed,
             "overwrite": overwrite or None}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("merge", flags, overrides or [])


@app.command()
def vpretrain(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the learner checkpoint (designer saved beside it)."),
    model: str = typer.Option(..., "--model", "-m", help="Learner: folder, Hub id, .gguf file, or smollm2."),
    data: Optional[str] = typer.Option(None, help="Pretraining stream: corpus spec, or prompt/completion JSONL (loss on answers)."),
    feedback: Optional[Path] = typer.Option(None, help="Feedback set: prompt/completion JSONL of verified answers."),
    method: Optional[str] = typer.Option(None, help="v-pretraining (default), ntp, uniform-topk or self-topk."),
    steps: Optional[int] = typer.Option(None, help="Learner optimizer steps (train.steps)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    keep_run: bool = typer.Option(False, "--keep-run", help=KEEP_RUN_HELP),
    clean: bool = typer.Option(False, "--clean", help=CLEAN_HELP),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Continued pretraining with targets shaped by a learned task designer (V-Pretraining)."""
    flags = {"output": str(output), "model": model, "data": data, "method": method,
             "feedback": str(feedback) if feedback else None, "overwrite": overwrite or None, "resume": resume or None}
    if steps is not None:
        flags["train"] = {"steps": steps}
    flags["run_folder"] = _run_folder(keep_run, clean)
    run_command("vpretrain", flags, overrides or [], options)


@app.command(name="eval")
def eval_(
    model: str = typer.Option(..., "--model", "-m", help="Model: folder, Hub id, .gguf file, or smollm2."),
    tasks: str = typer.Option("arc_easy,lambada", help="Comma-separated lm-eval tasks."),
    limit: Optional[float] = typer.Option(None, help="Items per task (an integer) or a fraction."),
    batch_size: Optional[int] = typer.Option(None, help="Evaluation batch size."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results JSON here."),
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of your own lm-eval task YAMLs (as lm-eval's --include_path)."),
    options: Optional[Path] = typer.Option(None, "--options", help="YAML file of options."),
    overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Score a model with lm-eval on the project's offline tasks (or any lm-eval task when online)."""
    if limit is not None and float(limit).is_integer() and limit >= 1:
        limit = int(limit)
    flags = {"model": model, "tasks": tasks, "limit": limit, "batch_size": batch_size,
             "output": str(output) if output else None, "include_path": str(include_path) if include_path else None}
    run_command("eval", flags, overrides or [], options)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML: a list of steps."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Overrides: key=value for every step, or STEP.key=value."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan with parameter counts; run nothing."),
    force: bool = typer.Option(False, "--force", help="Re-run steps that already completed."),
) -> None:
    """Run a recipe: steps chained so each can take the previous step's output as its model."""
    from lifecycle.recipe import run_recipe

    run_recipe(recipe, overrides or [], dry_run=dry_run, force=force)


@app.command()
def push(
    model: Path = typer.Argument(..., help="Checkpoint folder written by lifecycle."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repository, e.g. org/name."),
    private: bool = typer.Option(True, "--private/--public"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded; contact nothing."),
    commit_message: Optional[str] = typer.Option(None, help="Commit message on the Hub."),
    revision: Optional[str] = typer.Option(None, help="Branch to push to (created if missing)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to main."),
) -> None:
    """Upload a checkpoint folder and its model card to the Hugging Face Hub (token from HF_TOKEN or the HF login)."""
    run_command("push", {"model": str(model), "repo_id": repo_id, "private": private, "dry_run": dry_run,
                         "commit_message": commit_message, "revision": revision, "create_pr": create_pr or None}, [])


@app.command()
def report(
    source: Path = typer.Argument(..., metavar="RUN_OR_CHECKPOINT", help="Checkpoint folder (with lifecycle.json) or recipe run folder (runs/<name>)."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write: one self-contained page, images inline."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write every figure as a PNG file into this folder."),
    title: Optional[str] = typer.Option(None, help="Page title (default: the run's or the checkpoint's name)."),
) -> None:
    """One HTML page of a model's life: lineage graph, loss curves, scores, accuracy matrix, pruning plan, bit budget, merge weights."""
    run_command("report", {"model": str(source), "output": str(output), "png": str(png) if png else None,
                           "title": title}, [])


@app.command(name="options")
def show_options(command: str = typer.Argument(..., help="A command name, e.g. train.")) -> None:
    """Print every option of a command with its default, as YAML usable with --options."""
    from lifecycle.commands import load_all

    from lifecycle.methods.registry import methods_for
    from lifecycle.options import options_yaml

    commands = load_all()
    if command == "run":  # a recipe file, not an options model
        from lifecycle.recipe import recipe_options_yaml

        print("\n".join(recipe_options_yaml(list(commands))))
        return
    if command not in commands:
        group = typer.main.get_command(app)
        cli_only = getattr(group, "commands", {}).get(command)
        if cli_only is None:
            raise LifecycleError(f"unknown command '{command}' (known: {', '.join(sorted(getattr(group, 'commands', commands)))})")
        # ls, options: no options model, only their command-line arguments
        lines = [f"# lifecycle {command}: command-line arguments only (no --options file)"]
        for param in cli_only.params:
            help_text = getattr(param, "help", None) or ""
            lines.append(f"# {' / '.join(param.opts)}" + (f": {help_text}" if help_text else ""))
        print("\n".join(lines if len(lines) > 1 else [*lines, "# (none)"]))
        return
    options_cls = commands[command].options
    lines = options_yaml(options_cls)
    method_command = getattr(options_cls, "method_command", "")
    for method in methods_for(method_command).values() if method_command else []:
        if method.options is not None:
            lines.append(f"{method.name}:  # options of method {method.name} only ({method.paper})")
            lines.extend(options_yaml(method.options, indent=1))
    print("\n".join(lines))


@app.command(name="ls")
def list_commands() -> None:
    """List the registered commands, their methods and the papers behind them."""
    from rich.table import Table

    from lifecycle.commands import load_all
    from lifecycle.methods.registry import methods_for

    table = Table(title="lifecycle commands and methods")
    table.add_column("command")
    table.add_column("method")
    table.add_column("paper")
    table.add_column("what it does")
    commands = load_all()
    for name, cmd in commands.items():
        methods = methods_for(getattr(cmd.options, "method_command", "") or name)
        table.add_row(name, "", cmd.paper, cmd.help, style="bold")
        for method in methods.values():
            label = method.name + (" (experimental)" if method.experimental else "")
            table.add_row("", label, method.paper, method.summary)
    # The commands of the command line that are not in the registry (run, options, ls): every command is listed.
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        if name not in commands:
            table.add_row(name, "", "", (info.callback.__doc__ or "").strip().splitlines()[0], style="bold")
    from rich.console import Console

    Console(soft_wrap=True).print(table)


def _quiet_libraries() -> None:
    """Our rich progress bars are the only ones; library bars and info logs are noise here.

    Only environment variables and logger levels: importing transformers or torch here would cost
    seconds on every `lifecycle --help`.
    """
    import logging

    for name in ("DeepSpeed", "deepspeed", "accelerate", "datasets", "lm-eval", "lm_eval", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed sets its logger back to WARNING when imported (accelerate imports it whenever it is
    # installed) and then warns "Setting accelerator to CPU" on every CPU run; a filter outlives that.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)


def set_environment_defaults() -> None:
    """Offline-first defaults for the command line (a library import changes no environment).

    huggingface_hub reads these at import time, so they are set before anything imports it. A user
    who is online and wants Hub downloads sets HF_HUB_OFFLINE=0 explicitly.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not sys.stderr.isatty():
        # lm-eval and datasets draw tqdm bars; in a log file they are a wall of carriage returns.
        os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    """Console entry point: one error boundary (one line, non-zero exit, no traceback)."""
    set_environment_defaults()
    _quiet_libraries()
    from lifecycle.boundary import run_guarded

    sys.exit(run_guarded(app, sys.argv[1:]))


if __name__ == "__main__":
    main()
