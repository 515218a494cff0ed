"""The method registry: every published method is one module that registers itself by name.

A method module in ``lifecycle/methods/<command>/`` declares::

    @register_method("prune", "flap", paper="An et al. 2024, FLAP (arXiv:2312.11983)",
                     options=FlapOptions, summary="fluctuation metric, global search, bias compensation")
    def prune_flap(ctx: PruneContext) -> dict: ...

and that is all: the command finds it by name (``--method flap``), ``lifecycle ls`` lists it with its
paper, ``lifecycle options prune`` shows its option group, and recipes accept it. What ``run``
receives is the command's calling convention, documented in ``lifecycle/methods/<command>/__init__``.

Option groups. A method's own options (``options=``) live under a key named after the method
(``flap: {bias_compensation: false}``), and are validated only when that method is chosen: a group
for another method is an error, not silently ignored. Command options models that choose a method
subclass :class:`MethodOptions` (a discriminated union keyed by ``method``).

Plugins. Modules named in ``$LIFECYCLE_PLUGINS`` (comma-separated import paths) are imported when a
registry is first read, so a method can also live outside the package (one file on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, model_serializer, model_validator

from lifecycle.errors import LifecycleError
from lifecycle.options import CommandOptions


@dataclass(frozen=True)
class Method:
    command: str
    name: str
    run: Callable[..., Any]
    paper: str
    summary: str = ""
    options: type[BaseModel] | None = None
    aliases: tuple[str, ...] = ()
    experimental: bool = False


_REGISTRY: dict[str, dict[str, Method]] = {}
_LOADED: set[str] = set()


def register_method(
    command: str,
    name: str,
    *,
    paper: str,
    summary: str = "",
    options: type[BaseModel] | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    experimental: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as method ``name`` of ``command``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        methods = _REGISTRY.setdefault(command, {})
        if name in methods and methods[name].run is not fn:
            raise LifecycleError(f"method '{name}' of '{command}' is registered twice")
        methods[name] = Method(command=command, name=name, run=fn, paper=paper, summary=summary, options=options,
                               aliases=tuple(aliases), experimental=experimental)
        return fn

    return wrap


def _import_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("LIFECYCLE_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise LifecycleError(f"LIFECYCLE_PLUGINS: cannot import {module}: {exc}") from None


def _load(command: str) -> None:
    """Import ``lifecycle.methods.<command>`` and every module in it, so each registers itself."""
    if command in _LOADED:
        return
    _LOADED.add(command)
    try:
        package = importlib.import_module(f"lifecycle.methods.{command}")
    except ModuleNotFoundError as exc:
        if exc.name != f"lifecycle.methods.{command}":
            raise
        package = None
    if package is not None and hasattr(package, "__path__"):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _import_plugins()


def methods_for(command: str) -> dict[str, Method]:
    """Every registered method of ``command`` by name (importing their modules on first use)."""
    _load(command)
    return dict(_REGISTRY.get(command, {}))


def canonical_name(command: str, name: str) -> str:
    """The registered name for ``name`` or one of its aliases; a one-line error listing the known ones."""
    methods = methods_for(command)
    key = str(name).strip().lower()
    for method in methods.values():
        if key == method.name or key in method.aliases:
            return method.name
    known = ", ".join(sorted(methods)) or "none registered"
    raise LifecycleError(f"unknown {command} method '{name}' (known: {known})")


def get_method(command: str, name: str) -> Method:
    return methods_for(command)[canonical_name(command, name)]


class MethodOptions(CommandOptions):
    """Options of a command that runs one of several registered methods.

    Subclasses set ``method_command`` and give ``method`` a default. The chosen method's option group
    (the key named after it) is validated by that method's options model into ``method_options``;
    a group for any other method is an error.
    """

    method_command: ClassVar[str] = ""
    method: str
    method_options: Any = None

    @model_validator(mode="before")
    @classmethod
    def _resolve_method(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        field = cls.model_fields["method"]
        chosen = data.get("method", None if field.is_required() else field.default)
        if chosen is None:
            return data  # "method: field required" comes from pydantic
        try:
            name = canonical_name(cls.method_command, chosen)
        except LifecycleError as exc:
            raise ValueError(str(exc)) from None
        data["method"] = name
        methods = methods_for(cls.method_command)
        for other in methods.values():
            if other.name != name and other.options is not None and other.name in data:
                raise ValueError(f"option group '{other.name}' belongs to method {other.name}, but method is {name}")
        method = methods[name]
        group = data.pop(name, None)
        if group is None:
            group = data.pop("method_options", None)
        else:
            data.pop("method_options", None)
        if method.options is None:
            if group:
                raise ValueError(f"method {name} takes no option group")
            data["method_options"] = None
            return data
        if isinstance(group, BaseModel):
            group = group.model_dump()
        if group is not None and not isinstance(group, dict):
            raise ValueError(f"option group '{name}' must be a mapping")
        from pydantic import ValidationError

        from lifecycle.options import validation_error_line

        try:
            data["method_options"] = method.options.model_validate(group or {})
        except ValidationError as exc:
            raise ValueError(validation_error_line(exc, name).replace(f"{name}: ", f"{name}.", 1)) from None
        return data

    @model_serializer(mode="wrap")
    def _dump_group_under_method_name(self, handler: Any) -> Any:
        # Written back under the method's own key, so a dump validates again and reads like the YAML.
        data = handler(self)
        if isinstance(data, dict) and "method_options" in data:
            group = data.pop("method_options")
            if group is not None:
                data[self.method] = group
        return data

    @property
    def registered_method(self) -> Method:
        return get_method(self.method_command, self.method)


def method_group_keys(options_cls: type[BaseModel]) -> set[str]:
    """Top-level keys an options model accepts beyond its fields: the option groups of its methods."""
    command = getattr(options_cls, "method_command", "")
    if not command:
        return set()
    return {m.name for m in methods_for(command).values() if m.options is not None}


__all__ = ["Method", "MethodOptions", "canonical_name", "get_method", "method_group_keys", "methods_for", "register_method"]
