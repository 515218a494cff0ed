"""Options shared by the CLI and recipes: the base model, common groups, overrides, YAML listing.

Every command's options are a pydantic model (``extra="forbid"``, so a misspelt key is an error).
The CLI and the recipe runner both turn flags, ``--options FILE`` and ``key=value`` overrides into
one nested dict and validate it here; the library never imports the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lifecycle.errors import LifecycleError


class CommandOptions(BaseModel):
    """Base for every command's options: unknown keys are rejected, values are validated on assignment.

    A group given in part (``train.lr=2e-5``) is merged into the command's own defaults for that group
    (prune's recovery settings, say), not into the group class's generic defaults.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _merge_into_group_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = None
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if isinstance(value, dict) and field.default_factory is not None:
                default = field.default_factory()
                if isinstance(default, BaseModel):
                    merged = merged if merged is not None else dict(data)
                    merged[name] = deep_merge(default.model_dump(), value)
        return merged if merged is not None else data


def split_csv(value: Any) -> Any:
    """``"a, b"`` → ``["a", "b"]``; lists pass through."""
    return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value


class EvalAfter(CommandOptions):
    """lm-eval tasks to score the output with (written into its model card)."""

    tasks: list[str] = Field(default_factory=list)
    limit: int | float | None = 100
    batch_size: int = 8
    max_length: int = 1024
    include_path: str | None = Field(None, description="folder of your own lm-eval task YAMLs, as lm-eval's --include_path")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_csv(value)

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        return check_limit(value)


def check_limit(value: Any) -> Any:
    """lm-eval's ``limit``: a whole number of items (>= 1) or a fraction of each task (< 1)."""
    if isinstance(value, str):
        value = float(value) if value.strip() else None
    if isinstance(value, float) and value >= 1:
        if not value.is_integer():
            raise ValueError(f"limit {value:g} is neither a whole number of items nor a fraction below 1")
        return int(value)
    if value is not None and value <= 0:
        raise ValueError(f"limit must be positive, got {value}")
    return value


class TextDataOptions(CommandOptions):
    """Plain-text training data (train, grow): the spec, the tokenizer for new models, and packing."""

    data: str = Field("shakespeare", description="data spec: built-in corpus, file, folder or hf:NAME; a:0.3+b:0.7 weights parts")
    tokenizer: str = Field("bpe:4096", description="for --config: bpe:N (trained on the data) or a model spec")
    block_size: int = Field(256, ge=8)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)


RunFolder = Literal["tidy", "keep", "clean"]


def run_folder_field() -> Any:
    """The ``run_folder`` option of every command that trains (``--keep-run`` / ``--clean``)."""
    return Field("tidy", description="the hidden run folder .OUT.run once OUT is written: tidy keeps what resuming "
                                     "(the newest checkpoint, where the command can extend a finished run) and auditing "
                                     "(tracker logs) need; keep leaves all of it; clean removes it")


class OutputOptions(CommandOptions):
    output: str = Field(..., description="folder to write the checkpoint to")
    overwrite: bool = False


# -- overrides ---------------------------------------------------------------------------------------


def set_dotted(target: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "train.steps", 5)`` sets ``d["train"]["steps"] = 5``, creating groups."""
    parts = key.split(".")
    for part in parts[:-1]:
        node = target.get(part)
        if not isinstance(node, dict):
            node = {}
            target[part] = node
        target = node
    target[parts[-1]] = value


def _number_or_text(text: str) -> Any:
    """YAML 1.1 reads ``3e-3`` as text; users mean a number."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.steps=10", "data=wikitext"]`` → nested dict; values parsed as YAML scalars/lists."""
    result: dict = {}
    for item in items or []:
        if "=" not in item:
            raise LifecycleError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise LifecycleError(f"override '{item}' has no key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):
            value = _number_or_text(value)
        set_dotted(result, key.strip(), value)
    return result


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, merging nested groups key by key instead of replacing them."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validation_error_line(exc: Any, where: str) -> str:
    """One line from a pydantic ValidationError: the first problem, with its field path."""
    # A misspelt key also makes its real name "missing"; the misspelling is the useful message.
    errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown option"
    msg = msg.removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {loc}: {msg}{more}" if loc else f"{where}: {msg}{more}"


def read_options_file(path: str | Path) -> dict:
    """A YAML mapping of options (``--options FILE``); one-line errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise LifecycleError(f"options file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise LifecycleError(f"options file {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise LifecycleError(f"options file {path} is not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    if not isinstance(loaded, dict):
        raise LifecycleError(f"options file {path} must hold a mapping of options")
    return loaded


def build_options(command: str, values: dict, *, where: str | None = None) -> CommandOptions:
    """Validate ``values`` with the command's options model; errors are one line naming the field."""
    from pydantic import ValidationError

    from lifecycle.commands import load_all

    commands = load_all()
    if command not in commands:
        raise LifecycleError(f"unknown command '{command}' (known: {', '.join(sorted(commands))})")
    try:
        return commands[command].options.model_validate(values)
    except ValidationError as exc:
        raise LifecycleError(validation_error_line(exc, where or command)) from None


# -- listing -------------------------------------------------------------------------------------------


def _yaml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def options_yaml(model_cls: type[BaseModel], indent: int = 0, defaults: BaseModel | None = None) -> list[str]:
    """The options model as commented YAML: every field, the default that will be used, its description.

    ``defaults`` is the group's default instance when the command gives its own (prune's recovery
    settings differ from ``TrainConfig``'s).
    """
    from pydantic_core import PydanticUndefined

    lines: list[str] = []
    pad = "  " * indent
    for name, field in model_cls.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            group_default = None
            if defaults is not None:
                group_default = getattr(defaults, name, None)
            elif field.default_factory is not None:
                group_default = field.default_factory()
            lines.append(f"{pad}{name}:" + (f"  # {field.description}" if field.description else ""))
            lines.extend(options_yaml(annotation, indent + 1, group_default if isinstance(group_default, BaseModel) else None))
            continue
        if defaults is not None:
            default = getattr(defaults, name)
        elif field.default is not PydanticUndefined:
            default = field.default
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = None
        required = " (required)" if field.is_required() else ""
        comment = f"  # {field.description}{required}" if field.description or required else ""
        lines.append(f"{pad}{name}: {_yaml_value(default)}{comment}")
    return lines


__all__ = [
    "CommandOptions",
    "RunFolder",
    "run_folder_field",
    "EvalAfter",
    "OutputOptions",
    "build_options",
    "deep_merge",
    "options_yaml",
    "parse_overrides",
    "read_options_file",
    "set_dotted",
    "split_csv",
    "validation_error_line",
]
