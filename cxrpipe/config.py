"""Strict params.yaml -> frozen dataclass loading.

Config flows one way: a ``params.yaml`` section becomes a frozen dataclass, and library code only ever sees
that dataclass. An unknown key, a missing required key or a value of the wrong type is an error that names
the offending key, so a typo in ``params.yaml`` never silently falls back to a default.

Every module owns the dataclass of its own section (``PrepareConfig`` lives beside ``prepare``); this module
only knows how to build and serialise them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from cxrpipe.io import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A params section does not match its dataclass."""


def load_params(path: str | Path) -> dict[str, Any]:
    """Read the whole ``params.yaml`` as a plain mapping (sections are built with :func:`section`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        with path.open() as f:
            params = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return params


def section(params: Mapping[str, Any] | str | Path, name: str, cls: type[T]) -> T:
    """Build dataclass ``cls`` from section ``name`` (dotted for nesting: ``"pretrain.model"``)."""
    if not isinstance(params, Mapping):
        params = load_params(params)
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"params: section '{name}' is missing")
        node = node[part]
    return build(cls, node, where=name)


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Build (and type-check) dataclass ``cls`` from a mapping; nested dataclasses are built recursively."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"params '{where}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"params '{where}': unknown key(s) {unknown}; allowed: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params '{key}' is required")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"params '{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"params '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"params '{key}': expected a list, got {value!r}")
        item = args[0] if args else Any
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
        elif origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"params '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"params '{key}': expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where=key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(
                f"params '{key}': {value!r} is not one of {[m.value for m in tp]}"
            ) from None
    if tp is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"params '{key}': expected a number, got {value!r}")
        return float(number)
    if tp is int:
        number = _number(value)
        if number is None or number != int(number):
            raise ConfigError(f"params '{key}': expected an integer, got {value!r}")
        return int(number)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params '{key}': expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params '{key}': expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"params '{key}': expected a path, got {value!r}")
        return Path(value)
    raise TypeError(f"unsupported config type {tp!r} at '{key}'")


def _number(value: Any) -> int | float | None:
    """A YAML number, or a string that reads as one: YAML 1.1 reads ``1e-3`` (no dot) as the STRING "1e-3",
    so numbers written by hand that way are accepted. None for anything else (bools, "nan", "inf", words)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def to_dict(cfg: Any) -> Any:
    """JSON-ready plain data of a (nested) config dataclass; saved beside outputs and in checkpoints."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    from cxrpipe.io import write_json_atomic

    write_json_atomic(path, to_dict(cfg), sort_keys=True)
