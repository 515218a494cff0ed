"""The registry of lifecycle commands (``train``, ``eval``, ``grow``, ...).

Each command is a typed options model (pydantic, ``extra="forbid"`` so misspelt keys are errors)
plus a function ``run(options) -> Path`` that does the work and returns the folder it wrote. The
Typer CLI and recipe steps both build the options model and call ``run``; nothing else is needed to
add a command to both (peft/mergekit-style registry). A command's *methods* have their own registry,
:mod:`lifecycle.methods.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Type

from lifecycle.options import CommandOptions


@dataclass(frozen=True)
class Command:
    name: str
    options: Type[CommandOptions]
    run: Callable[[CommandOptions], object]
    help: str
    # The option that receives the previous recipe step's output when a step says `model: previous`
    # (or leaves its model unset). None for commands that take no model.
    model_field: str | None = "model"
    # The option holding a list of input models (merging), whose items a recipe may fill with earlier
    # steps' outputs (`models: [steps.a, steps.b]`). None for commands with one input.
    models_field: str | None = None
    # preflight(options, pending_models=False): every check that needs no work, run by the CLI and by
    # recipes (for all steps, before the first runs). See lifecycle.preflight.
    preflight: Callable[..., None] | None = None
    # What the command itself rests on, for `lifecycle ls` (its methods list their own papers).
    paper: str = ""


COMMANDS: dict[str, Command] = {}

# Modules under lifecycle/commands/ that register a command, in the order `lifecycle ls` lists them.
COMMAND_MODULES = ("train", "eval", "grow", "prune", "quantize", "continual", "merge", "vpretrain", "push", "report")


def register(name: str, options: Type[CommandOptions], help: str, model_field: str | None = "model",
             models_field: str | None = None, preflight: Callable[..., None] | None = None, paper: str = ""):
    """Decorator: ``@register("train", TrainOptions, help=...)`` on the command's run function."""

    def wrap(fn: Callable[[CommandOptions], object]):
        COMMANDS[name] = Command(name=name, options=options, run=fn, help=help, model_field=model_field,
                                 models_field=models_field, preflight=preflight, paper=paper)
        return fn

    return wrap


def load_all() -> dict[str, Command]:
    """Import every command module so it registers itself; returns the registry."""
    import importlib

    from lifecycle.methods.registry import _import_plugins

    for module in COMMAND_MODULES:
        try:
            importlib.import_module(f"lifecycle.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lifecycle.commands.{module}":
                raise
    _import_plugins()
    return COMMANDS


__all__ = ["COMMANDS", "Command", "CommandOptions", "load_all", "register"]
