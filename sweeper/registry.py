"""Registries of recipes and tasks: a config dataclass plus the function that runs it.

Adding a recipe or task registers a dataclass and a function here; the sweep engine
only ever looks them up by name or by config type, so it never changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One registered recipe or task."""

    name: str
    config_cls: type
    fn: Callable[..., Any]


class Registry:
    """Name -> (config dataclass, function) for one family ("recipe" or "task")."""

    def __init__(self, family: str):
        self.family = family
        self._by_name: dict[str, Entry] = {}

    def register(self, name: str, fn: Callable[..., Any]):
        """Class decorator registering `cls` under `name` with its function `fn`; returns cls."""

        def deco(cls):
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{self.family} {name}: config must be a dataclass")
            cls.registered_name = name
            self._by_name[name] = Entry(name, cls, fn)
            return cls

        return deco

    def names(self) -> list[str]:
        """Returns the registered names, sorted."""
        return sorted(self._by_name)

    def get(self, name: str) -> Entry:
        """Returns the entry called `name`, or raises ConfigError listing the known names."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(self.family, "name", name, ", ".join(self.names()) or "(none registered)") from None

    def for_config(self, config) -> Entry:
        """Returns the entry whose config class is type(config)."""
        for entry in self._by_name.values():
            if type(config) is entry.config_cls:
                return entry
        raise ConfigError(self.family, "config", type(config).__name__, ", ".join(
            e.config_cls.__name__ for e in self._by_name.values()))


RECIPES = Registry("recipe")
TASKS = Registry("task")


def import_plugin(ref: str):
    """Imports a user module that registers recipes or tasks: a module name on sys.path
    ("my_recipes") or a .py file path. Returns the module; raises ConfigError (one line)."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    try:
        if ref.endswith(".py"):
            path = Path(ref).expanduser().resolve()
            name = f"sweeper_plugin_{path.stem}"
            if name in sys.modules:
                return sys.modules[name]
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(ref)
    except Exception as exc:
        raise ConfigError("experiment", "plugins", ref, f"an importable module or .py file ({type(exc).__name__}: {exc})") from None


def ensure_builtin_registered() -> None:
    """Imports the built-in recipe and task modules so their registrations run."""
    from . import recipes, tasks  # noqa: F401
