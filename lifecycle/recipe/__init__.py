"""Recipes: a YAML list of command steps, validated up front, resumable step by step.

```yaml
name: quickstart
output_dir: runs/quickstart      # optional; default runs/<name>
steps:
  - name: pretrain               # the step's output goes to <output_dir>/<name> unless `output:` is set
    command: train
    config: tiny
    data: shakespeare
    train: {steps: 300}
  - name: score
    command: eval                # takes the previous model when `model` is omitted or `previous`
    tasks: [arc_easy, lambada]
```

A step may name an earlier step's output with ``model: steps.<name>``; a command that takes several
input models (``models:``, e.g. merging) takes a list of earlier steps and specs:
``models: [steps.expert_a, steps.expert_b]`` (a bare step name works too). Every step's options are
validated with its command's options model before anything runs, and errors name the step and the
field. A completed step is skipped on re-run when its key (command, resolved options, and the
identity of its input model) is unchanged, so a crashed chain resumes where it stopped.

Command-line overrides: ``STEP.key=value`` sets an option of one step; ``key=value`` sets a recipe
field (``output_dir``) or, otherwise, that option in every step whose command has it
(``train.steps=5`` shortens every training step).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lifecycle.errors import LifecycleError, TrainingInterrupted
from lifecycle.preflight import run_preflight

STATE_FILE = ".lifecycle-recipe.json"
PREVIOUS = "previous"


class RecipeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="the recipe's name")
    description: str | None = Field(None, description="what it does, for people")
    output_dir: str | None = Field(None, description="folder of the steps' outputs; default runs/<name>")
    steps: list[dict[str, Any]] = Field(..., min_length=1, description="the steps, in order")


def recipe_options_yaml(command_names: list[str]) -> list[str]:
    """What ``lifecycle options run`` prints: a recipe file's fields and one step's, as commented YAML."""
    from lifecycle.options import options_yaml

    lines = ["# lifecycle run RECIPE.yaml [key=value | STEP.key=value ...] [--dry-run] [--force]",
             "# key=value sets a recipe field, or that option in every step that has it; STEP.key=value one step's"]
    lines += [line for line in options_yaml(RecipeFile) if not line.startswith("steps:")]
    lines += [
        "steps:  # the steps, in order (required); each is one command's options plus these keys:",
        "  - name: step1  # its output goes to <output_dir>/<name> unless `output:` is set",
        f"    command: {command_names[0]}  # one of {', '.join(command_names)}; `lifecycle options COMMAND` lists its options",
        f"    model: {PREVIOUS}  # the input: {PREVIOUS} (the default), steps.<name>, or a model spec",
    ]
    return lines


@dataclass
class PlannedStep:
    name: str
    command: Any  # lifecycle.commands.Command
    raw: dict  # options before the input model is resolved
    output: Path | None  # where the step writes its model (None for commands that only score)
    model_ref: str | None  # "previous", "steps.<name>" or a literal spec
    models_refs: list[str] | None = None  # for commands with several inputs: each a step reference or a spec
    # the items given as mappings (mergekit's `{model: steps.a, parameters: {...}}`), else None, per ref
    models_items: list[dict | None] | None = None


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise LifecycleError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LifecycleError(f"recipe {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise LifecycleError(f"recipe {path} must be a mapping with name and steps")
    return data


def _apply_overrides(data: dict, overrides: list[str], commands: dict) -> dict:
    from lifecycle.methods.registry import method_group_keys
    from lifecycle.options import parse_overrides, set_dotted

    step_names = {str(s.get("name")) for s in data.get("steps", []) if isinstance(s, dict)}
    for item in overrides:
        parsed_key = item.split("=", 1)[0]
        value = next(iter(_flatten(parse_overrides([item])).values()))
        head, _, rest = parsed_key.partition(".")
        if head in step_names and rest:
            for step in data["steps"]:
                if str(step.get("name")) == head:
                    set_dotted(step, rest, value)
        elif parsed_key in RecipeFile.model_fields and parsed_key != "steps":
            data[parsed_key] = value
        else:
            hit = False
            for step in data.get("steps", []):
                cmd = commands.get(step.get("command"))
                if cmd is not None and (head in cmd.options.model_fields or head in method_group_keys(cmd.options)):
                    set_dotted(step, parsed_key, value)
                    hit = True
            if not hit:
                raise LifecycleError(f"override '{item}' matches no step option and no recipe field")
    return data


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _error_line(exc: ValidationError, where: str) -> str:
    from lifecycle.options import validation_error_line

    return validation_error_line(exc, where)


def plan_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[RecipeFile, list[PlannedStep], Path]:
    """Parse, override and validate a recipe; nothing runs and nothing is written."""
    from lifecycle.commands import load_all

    path = Path(path)
    commands = load_all()
    data = _apply_overrides(_load_yaml(path), overrides or [], commands)
    try:
        recipe = RecipeFile.model_validate(data)
    except ValidationError as exc:
        raise LifecycleError(_error_line(exc, f"recipe {path.name}")) from None
    output_dir = Path(recipe.output_dir or f"runs/{recipe.name}").expanduser()
    if not output_dir.is_absolute():
        output_dir = (Path.cwd() / output_dir).resolve()

    planned: list[PlannedStep] = []
    seen: set[str] = set()
    produced_any = False
    for index, step in enumerate(recipe.steps, start=1):
        step = dict(step)
        name = str(step.pop("name", f"step{index}"))
        where = f"step '{name}'"
        if name in seen:
            raise LifecycleError(f"{where}: duplicate step name")
        command_name = step.pop("command", None)
        if command_name not in commands:
            known = ", ".join(sorted(commands))
            raise LifecycleError(f"{where}: unknown command '{command_name}' (known: {known})")
        cmd = commands[command_name]
        model_ref = None
        if cmd.model_field:
            value = step.get(cmd.model_field)
            if value is None and not _takes_no_model(cmd, step):
                value = PREVIOUS if produced_any else None
            if value == PREVIOUS and not produced_any:
                raise LifecycleError(f"{where}: model: previous, but no earlier step produces a model")
            if isinstance(value, str) and value.startswith("steps."):
                ref = value[len("steps."):]
                if ref not in seen:
                    raise LifecycleError(f"{where}: model: {value} names no earlier step")
            model_ref = value
        models_refs = None
        if cmd.models_field and step.get(cmd.models_field) is not None:
            value = step[cmd.models_field]
            if not isinstance(value, list) or not value:
                raise LifecycleError(f"{where}: {cmd.models_field} must be a list of models or earlier steps")
            models_refs, models_items = [], []
            for item in value:
                mapping = dict(item) if isinstance(item, dict) and "model" in item else None
                models_items.append(mapping)
                ref = str(mapping["model"] if mapping is not None else item)
                if ref == PREVIOUS:
                    if not produced_any:
                        raise LifecycleError(f"{where}: {cmd.models_field}: previous, but no earlier step produces a model")
                elif ref.startswith("steps.") or ref in seen:
                    name_ref = ref.removeprefix("steps.")
                    if name_ref not in seen:
                        raise LifecycleError(f"{where}: {cmd.models_field}: {ref} names no earlier step")
                    ref = f"steps.{name_ref}"
                models_refs.append(ref)
        output = None
        out_field = cmd.options.model_fields.get("output")
        if out_field is not None and out_field.is_required():
            output = Path(step.get("output") or output_dir / name).expanduser().resolve()
            step["output"] = str(output)
        # Validate now with a placeholder for the input model, so every error surfaces before step 1 runs.
        probe = dict(step)
        if cmd.model_field and isinstance(model_ref, str) and (model_ref == PREVIOUS or model_ref.startswith("steps.")):
            probe[cmd.model_field] = str(output_dir / "<previous>")
        if models_refs is not None:
            probe[cmd.models_field] = _with_items(
                [str(output_dir / f"<{r}>") if _is_ref(r) else r for r in models_refs], models_items)
        if output is not None and "overwrite" in cmd.options.model_fields:
            probe["overwrite"] = True  # the recipe owns its step folders
        try:
            probe_opts = cmd.options.model_validate(probe)
        except ValidationError as exc:
            raise LifecycleError(_error_line(exc, f"recipe {path.name}, {where}")) from None
        pending = _is_ref(model_ref) if isinstance(model_ref, str) else False
        pending = pending or any(_is_ref(r) for r in models_refs or [])
        try:
            run_preflight(cmd, probe_opts, pending_models=pending)
        except LifecycleError as exc:
            raise LifecycleError(f"recipe {path.name}, {where}: {exc}") from None
        planned.append(PlannedStep(name=name, command=cmd, raw=step, output=output, model_ref=model_ref,
                                   models_refs=models_refs, models_items=models_items if models_refs is not None else None))
        seen.add(name)
        produced_any = produced_any or output is not None
    return recipe, planned, output_dir


def _with_items(specs: list[str], items: list[dict | None] | None) -> list:
    """Resolved model specs put back into the mappings they were given in (``{model, parameters}``)."""
    return [spec if not items or items[i] is None else {**items[i], "model": spec} for i, spec in enumerate(specs)]


def _is_ref(ref: str) -> bool:
    return ref == PREVIOUS or ref.startswith("steps.")


def _takes_no_model(cmd, step: dict) -> bool:
    """A step that builds its model from a config (train, grow --config) has no input model."""
    return "config" in cmd.options.model_fields and step.get("config") is not None


def _model_identity(spec: str) -> str:
    """What makes an input model 'the same' for skip decisions: its lineage, config and weight files.

    Scores are left out of the lineage: an eval step writes them into its input's card, and that
    must not make the eval step (or any other reader of the model) look changed on the next run.
    """
    folder = Path(spec)
    if folder.is_dir():
        h = hashlib.sha256()
        lineage = folder / "lifecycle.json"
        if lineage.is_file():
            try:
                data = json.loads(lineage.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = {"unreadable": lineage.stat().st_size}
            data = {k: v for k, v in data.items() if k not in ("eval", "eval_settings", "eval_records")} if isinstance(data, dict) else data
            h.update(json.dumps(data, sort_keys=True, default=str).encode())
        if (folder / "config.json").is_file():
            h.update((folder / "config.json").read_bytes())
        for weights in sorted(folder.glob("*.safetensors")):
            stat = weights.stat()
            h.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    return spec


def _step_key(step: PlannedStep, options: dict) -> str:
    model_spec = options.get(step.command.model_field) if step.command.model_field else None
    many = options.get(step.command.models_field) if step.command.models_field else None
    blob = {
        "command": step.command.name,
        "options": options,
        "input": _model_identity(model_spec) if isinstance(model_spec, str) else None,
        "inputs": [_model_identity(str(m["model"] if isinstance(m, dict) else m)) for m in many] if isinstance(many, list) else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_state(output_dir: Path) -> dict:
    f = output_dir / STATE_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _write_state(output_dir: Path, state: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, output_dir / STATE_FILE)


def _param_count(spec: str | None, options: dict, cmd_name: str) -> str:
    """Parameter count without loading weights (meta device); '' when unknown before running."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if cmd_name == "train" and options.get("config"):
            from lifecycle.model.presets import make_config

            tok = options.get("tokenizer", "bpe:4096")
            vocab = int(tok.split(":")[1]) if tok.startswith("bpe:") else 49152
            config = make_config(options["config"], vocab_size=vocab)
        elif spec and Path(spec, "config.json").is_file():
            config = AutoConfig.from_pretrained(spec)
        else:
            return ""
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        return f"{n / 1e6:.2f}M"
    except Exception:  # a count is a nicety in the plan; never fail the plan for it
        return ""


def run_recipe(path: str | Path, overrides: list[str] | None = None, *, dry_run: bool = False, force: bool = False) -> list[Path]:
    """Run (or with ``dry_run`` print) a recipe; returns the outputs of the steps that produce models."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    recipe, planned, output_dir = plan_recipe(path, overrides)
    state = _read_state(output_dir)
    outputs: dict[str, str] = {}
    last_output: str | None = None
    table = Table(title=f"recipe {recipe.name} → {output_dir}")
    for col in ("step", "command", "input", "output", "params", "status"):
        table.add_column(col)
    results: list[Path] = []
    rerun: set[str] = set()  # steps that run this time: everything downstream of them runs too
    last_step: str | None = None
    for step in planned:
        options = dict(step.raw)
        if step.command.model_field and step.model_ref is not None:
            ref = step.model_ref
            if ref == PREVIOUS:
                options[step.command.model_field] = last_output
            elif isinstance(ref, str) and ref.startswith("steps."):
                options[step.command.model_field] = outputs[ref[len("steps."):]]
        if step.models_refs is not None:
            options[step.command.models_field] = _with_items([
                last_output if r == PREVIOUS else outputs[r[len("steps."):]] if r.startswith("steps.") else r
                for r in step.models_refs
            ], step.models_items)
        if step.output is not None:
            options["overwrite"] = True  # the recipe owns its step folders
        key = _step_key(step, options)
        done = state.get(step.name, {})
        inputs = [step.model_ref] if isinstance(step.model_ref, str) else []
        inputs += step.models_refs or []
        upstream_reruns = any(
            (r == PREVIOUS and last_step in rerun) or (r.startswith("steps.") and r[len("steps."):] in rerun) for r in inputs
        )
        complete = (
            not force
            and not upstream_reruns
            and done.get("key") == key
            and not done.get("interrupted")
            and (step.output is None or (step.output / "config.json").is_file())
        )
        if not complete:
            rerun.add(step.name)
        if done.get("interrupted") and done.get("key") == key and "resume" in step.command.options.model_fields:
            options["resume"] = True  # continue the interrupted attempt from its checkpoint
        input_spec = options.get(step.command.model_field) if step.command.model_field else None
        if dry_run:
            many = options.get(step.command.models_field) if step.command.models_field else None
            if not input_spec and isinstance(many, list):
                input_spec_shown = ", ".join(str(m["model"] if isinstance(m, dict) else m) for m in many)
            else:
                input_spec_shown = input_spec
            shown_input = input_spec_shown or "-"
            params = _param_count(input_spec if step.command.name != "train" or not options.get("config") else None, options, step.command.name)
            table.add_row(step.name, step.command.name, str(shown_input), str(step.output or "-"), params,
                          "done (skip)" if complete else "to run")
        elif complete:
            console.print(f"[dim]skip[/dim] {step.name}: already done with the same inputs")
        else:
            console.rule(f"[bold]{step.name}[/bold] ({step.command.name})")
            started = time.time()
            opts = step.command.options.model_validate(options)
            try:
                written = step.command.run(opts)
            except TrainingInterrupted as exc:
                state[step.name] = {"key": key, "interrupted": True, "step": exc.step}
                _write_state(output_dir, state)
                raise TrainingInterrupted(exc.step, exc.signum, exc.checkpoint, resumable=True,
                                          hint=f"run the recipe again to resume step '{step.name}'") from None
            state[step.name] = {"key": key, "output": str(step.output) if step.output else None,
                                "seconds": round(time.time() - started, 1)}
            _write_state(output_dir, state)
            if written is not None and step.command.name != "push":  # push lists what it sent itself
                from lifecycle.finish import print_summary

                print_summary(written, time.time() - started, console)
        if step.output is not None:
            outputs[step.name] = str(step.output)
            last_output = str(step.output)
            last_step = step.name
            results.append(step.output)
    if dry_run:
        console.print(table)
    else:
        print_run_table(output_dir, console)
        console.print(f"[green]recipe {recipe.name} complete[/green]: {output_dir}")
    return results


def print_run_table(output_dir: Path, console: Any) -> None:
    """The run's summary: one row per step (the table `lifecycle report` shows), with the change in
    held-out loss from the step before. A run whose cards cannot be read still completes."""
    from rich.table import Table

    from lifecycle.errors import LifecycleError
    from lifecycle.report.collect import collect
    from lifecycle.report.page import step_table

    try:
        headers, rows, _ = step_table(collect(output_dir))
    except LifecycleError:
        return
    keep = [i for i, h in enumerate(headers) if h not in ("parents", "train loss")]  # fits a terminal
    table = Table(title="the run, step by step")
    for i in keep:
        table.add_column(headers[i], justify="left" if i < 3 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
