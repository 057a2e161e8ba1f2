"""Name -> implementation tables, filled by discovery, so adding an objective, model family,
stage or command is one new file:

    # pipeline/objectives/my_objective.py
    @register("objective", "mine")
    class Mine(Objective): ...

The first time a kind's table is read, every module of that kind's packages is imported (see
PLUGIN_PACKAGES), and the classes it decorates register themselves. Each registered class
carries its typed `Config` (a `config.Choice` subclass); the config builder looks it up by the
`name` written in YAML. Modules whose name starts with "_" are not imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

_TABLES: dict[str, dict[str, Any]] = {}
# the packages whose modules are searched for each kind
PLUGIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "objective": ("pipeline.objectives", "pipeline.finetune"),
    "model": ("pipeline.models",),
    "stage": ("pipeline.stages",),
    "command": ("pipeline.commands",),
}
_discovered: set[str] = set()


def register(kind: str, name: str):
    def decorator(obj: Any) -> Any:
        table = _TABLES.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        obj.registered_name = name
        return obj

    return decorator


def discover(kind: str) -> None:
    """Import every module of the packages of `kind` (once per process)."""
    if kind in _discovered:
        return
    _discovered.add(kind)
    for package_name in PLUGIN_PACKAGES.get(kind, ()):
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")


def _table(kind: str) -> dict[str, Any]:
    discover(kind)
    return _TABLES.get(kind, {})


def names(kind: str) -> list[str]:
    return sorted(_table(kind))


def get(kind: str, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; choices: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def items(kind: str) -> list[tuple[str, Any]]:
    """(name, implementation) of every registered `kind`, sorted by name."""
    table = _table(kind)
    return [(n, table[n]) for n in sorted(table)]


def config_class(kind: str, name: str) -> type:
    return get(kind, name).Config
