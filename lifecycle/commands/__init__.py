"""The registry of lifecycle commands (``train``, ``eval``, ``grow``, ...).

Each command is a typed options model (pydantic, ``extra="forbid"`` so misspelt keys are errors)
plus a function ``run(options) -> Path`` that does the work and returns the folder it wrote. The
Typer CLI and recipe steps both build the options model and call ``run``; nothing else is needed to
add a command to both (peft/mergekit-style registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Type

from pydantic import BaseModel, ConfigDict


class CommandOptions(BaseModel):
    """Base for every command's options: unknown keys are rejected, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


@dataclass(frozen=True)
class Command:
    name: str
    options: Type[CommandOptions]
    run: Callable[[CommandOptions], object]
    help: str
    # The option that receives the previous recipe step's output when a step says `model: previous`
    # (or leaves its model unset). None for commands that take no model.
    model_field: str | None = "model"


COMMANDS: dict[str, Command] = {}


def register(name: str, options: Type[CommandOptions], help: str, model_field: str | None = "model"):
    """Decorator: ``@register("train", TrainOptions, help=...)`` on the command's run function."""

    def wrap(fn: Callable[[CommandOptions], object]):
        COMMANDS[name] = Command(name=name, options=options, run=fn, help=help, model_field=model_field)
        return fn

    return wrap


def load_all() -> dict[str, Command]:
    """Import every command module so it registers itself; returns the registry."""
    import importlib

    for module in ("train", "eval", "grow", "prune", "push"):
        try:
            importlib.import_module(f"lifecycle.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lifecycle.commands.{module}":
                raise
    return COMMANDS
