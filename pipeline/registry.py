"""Name -> implementation tables, so adding an objective, model or stage is one new file.

    @register("objective", "mlm")
    class MaskedLM(Objective): ...

Each registered class carries its typed `Config` (a `config.Choice` subclass); the config
builder looks it up by the `name` written in YAML.
"""

from __future__ import annotations

import importlib
from typing import Any

_TABLES: dict[str, dict[str, Any]] = {}
# the packages whose modules register themselves; imported the first time a table is read
_PLUGIN_PACKAGES = {
    "objective": "pipeline.objectives",
    "model": "pipeline.models",
    "stage": "pipeline.stages",
}


def register(kind: str, name: str):
    def decorator(obj: Any) -> Any:
        table = _TABLES.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        obj.registered_name = name
        return obj

    return decorator


def _table(kind: str) -> dict[str, Any]:
    package = _PLUGIN_PACKAGES.get(kind)
    if package:
        importlib.import_module(package)
    return _TABLES.get(kind, {})


def names(kind: str) -> list[str]:
    return sorted(_table(kind))


def get(kind: str, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; choices: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def config_class(kind: str, name: str) -> type:
    return get(kind, name).Config
