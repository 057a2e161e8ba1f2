"""Typed configuration: YAML recipe -> `a.b=c` overrides -> strict dataclass build -> validation.

Why our own small loader instead of OmegaConf: we want *every* problem (unknown key, wrong type,
invalid value) collected and reported at once, with the valid keys listed, and polymorphic
sections (`objective: {name: mlm, ...}`) whose schema is chosen by their `name` through the
registry. Docstrings written under dataclass fields are the help text (`--help`), litgpt-style.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml


class ConfigError(ValueError):
    """Every problem found in a config, reported at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        if len(problems) == 1:
            super().__init__(f"config error{where}: {problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{len(problems)} config errors{where}:\n{lines}")


@dataclasses.dataclass
class Choice:
    """A config section whose schema is picked by `name` from the registry (objective, model...)."""

    kind: ClassVar[str] = ""
    name: str = ""


# --------------------------------------------------------------------------- docstrings -> help


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right under a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[str]:
    """One help line per leaf key: `key (type, default): doc`."""
    lines = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_dataclass_type(tp) and not _is_choice(tp):
            lines.extend(describe(tp, key + "."))
            continue
        default = _default_of(f)
        shown = default.name if isinstance(default, Choice) else default
        lines.append(f"{key} ({_type_name(tp)}, default {shown!r}): {docs.get(f.name, '')}")
        if _is_choice(tp) and isinstance(default, Choice):
            lines.extend(
                f"  {line}" for line in describe(type(default), key + ".") if ".name " not in line
            )
    return lines


def check_minimums(obj: Any, minimums: dict[str, int | float]) -> list[str]:
    """Problems for fields below their minimum (None means unset and passes): for validate()."""
    return [
        f"{name} must be >= {low}, got {getattr(obj, name)}"
        for name, low in minimums.items()
        if getattr(obj, name) is not None and getattr(obj, name) < low
    ]


# --------------------------------------------------------------------------- YAML and overrides


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"malformed YAML{where}: {problem}"], str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"not UTF-8 text ({err.reason} at byte {err.start})"], str(path)
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], str(path))
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides; values are parsed as YAML (`1e-3`, `true`, `[1, 2]`, `null`)."""
    raw = _deep_copy(raw)
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = parsed
    if problems:
        raise ConfigError(problems)
    return raw


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


# --------------------------------------------------------------------------- strict typed build


def build(cls: type, raw: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """Build dataclass `cls` from a plain mapping; return (object, problems). Never raises."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return _default_instance(cls), [f"{prefix or 'config'} must be a mapping, got {raw!r}"]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            problems.append(
                f"unknown key {prefix}{key!s}; valid keys here: {', '.join(sorted(names))}"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value, errs = _convert(hints[f.name], raw[f.name], f"{prefix}{f.name}", _default_of(f))
        problems.extend(errs)
        if not errs:
            kwargs[f.name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate) and not problems:
        problems.extend(f"{prefix}{p}" for p in validate())
    return obj, problems


def _convert(tp: Any, value: Any, key: str, default: Any = None) -> tuple[Any, list[str]]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, []
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key, default)
        for candidate in inner:
            out, errs = _convert(candidate, value, key, default)
            if not errs:
                return out, []
        return None, [f"{key} must be {_type_name(tp)}, got {value!r}"]
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            spelled = ("on", "true", "yes") if value else ("off", "false", "no")
            value = next((w for w in spelled if w in args), value)
        if value in args:
            return value, []
        return None, [f"{key} must be one of {', '.join(map(repr, args))}; got {value!r}"]
    if _is_choice(tp):
        return _build_choice(tp, value, key, default)
    if _is_dataclass_type(tp):
        return build(tp, value, key + ".")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: `data.path=a.txt`
        if not isinstance(value, list):
            return None, [f"{key} must be a list, got {value!r}"]
        out, problems = [], []
        item_tp = args[0] if args else Any
        for i, item in enumerate(value):
            v, errs = _convert(item_tp, item, f"{key}[{i}]")
            out.append(v)
            problems.extend(errs)
        return (tuple(out) if origin is tuple else out), problems
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return None, [f"{key} must be a mapping, got {value!r}"]
        return dict(value), []
    if tp is Any:
        return value, []
    if tp is bool:
        if isinstance(value, bool):
            return value, []
        return None, [f"{key} must be true or false, got {value!r}"]
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, []
        if isinstance(value, float) and value.is_integer():
            return int(value), []
        return None, [f"{key} must be an integer, got {value!r}"]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), []
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value), []
            except ValueError:
                pass
        return None, [f"{key} must be a number, got {value!r}"]
    if tp is str:
        if isinstance(value, str):
            return value, []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), []
        return None, [f"{key} must be a string, got {value!r}"]
    return value, []


def _build_choice(base: type, value: Any, key: str, default: Any) -> tuple[Any, list[str]]:
    from pipeline import registry

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        return None, [f"{key} must be a mapping with a `name`, got {value!r}"]
    value = dict(value)
    name = value.get("name") or (default.name if isinstance(default, Choice) else None)
    if not name:
        return None, [f"{key}.name is required; choices: {', '.join(registry.names(base.kind))}"]
    try:
        cfg_cls = registry.config_class(base.kind, name)
    except KeyError as err:
        return None, [f"{key}.name: {err.args[0]}"]
    # keys not given fall back to the recipe default only when the same choice is kept
    if isinstance(default, Choice) and default.name == name and type(default) is cfg_cls:
        merged = {**to_dict(default), **value}
    else:
        merged = value
    merged["name"] = name
    return build(cfg_cls, merged, key + ".")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_choice(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Choice)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except TypeError:
        return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if _is_choice(tp):
        return f"{tp.kind} (by name)"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- output


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for YAML/JSON, keeping Choice `name` first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        if isinstance(obj, Choice):
            out["name"] = obj.name
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# `hf_token`, `api_key`, `password`... but not `tokenizer` or `max_tokens`
SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|auth)$", re.IGNORECASE)


def redact(data: Any) -> Any:
    """Replace values of secret-looking keys so a config dump never carries credentials."""
    if isinstance(data, dict):
        return {
            k: ("<redacted>" if v and SECRET_KEY.search(str(k)) else redact(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(redact(to_dict(obj)), sort_keys=False), encoding="utf-8")


def load_config(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """The one entry point: YAML file + overrides -> validated dataclass, or ConfigError."""
    if path is not None:
        from pipeline import recipes

        path = recipes.resolve(path)  # a file, or a shipped recipe by name (mlm/tiny)
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, list(overrides))
    obj, problems = build(cls, raw)
    if problems:
        raise ConfigError(problems, str(path) if path else None)
    return obj


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: for trackers that want flat hyperparameters."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
