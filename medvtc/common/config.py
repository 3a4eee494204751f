"""Typed configs: YAML files and `key.sub=value` overrides loaded into dataclasses.

Every task's config is a tree of dataclasses. Loading validates as it goes: an unknown key is an
error that lists the valid keys at that level, a value of the wrong type or outside a `Literal`
is an error that names the key and what was expected. The resolved config is saved beside a
run's outputs (`save_config`) so the run can be repeated exactly.

Written here rather than taken from OmegaConf/draccus because we need exactly this behaviour
(one-line errors naming the key and the valid choices, `Literal` checks, YAML round trip) and
LeRobot's draccus pins its own CLI conventions.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

import yaml

from medvtc.common.errors import ConfigError

C = TypeVar("C")

_NONE_WORDS = {"none", "null", "~"}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "value"
        return f"list of {inner}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML) to type `tp`, or raise a ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        # A YAML override such as `precision=bf16` arrives as str already; numbers too.
        raise ConfigError(
            f"bad value {value!r} for {key}; expected one of: {', '.join(repr(c) for c in choices)}"
        )
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in _NONE_WORDS and type(None) in args:
            return None
        errors = []
        # Try the most specific members first so that 3 stays an int in `int | float`.
        for arg in sorted((a for a in args if a is not type(None)), key=_specificity):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"bad value {value!r} for {key}; expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"bad value {value!r} for {key}; expected a mapping of {tp.__name__} keys")
        return _build(tp, value, prefix=key + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            value = parsed
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value {value!r} for {key}; expected {_type_name(tp)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"bad value {value!r} for {key}; expected {len(args)} items")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else list(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"bad value {value!r} for {key}; expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        raise ConfigError(f"bad value {value!r} for {key}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for {key}; expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"bad value {value!r} for {key}; expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for {key}; expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"bad value {value!r} for {key}; expected a number") from None
            if math.isnan(out):
                raise ConfigError(f"bad value {value!r} for {key}; expected a number, not NaN")
            return out
        raise ConfigError(f"bad value {value!r} for {key}; expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"bad value {value!r} for {key}; expected a string")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"bad value {value!r} for {key}; expected {_type_name(tp)}")


def _specificity(tp: Any) -> int:
    order = {bool: 0, int: 1, float: 2}
    if get_origin(tp) is Literal:
        return -1
    return order.get(tp, 3 if tp is not str else 4)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys at {where}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # A partial mapping overrides the field's own default instance, so a task that sets
            # `train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=200))`
            # keeps max_steps=200 when only `train.lr` is given.
            default = _field_default(fields[name])
            if dataclasses.is_dataclass(default):
                value = _merge(to_dict(default), value)
        kwargs[name] = _coerce(value, tp, prefix + name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None
    return obj


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=3e-4` -> ("train.lr", 3e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}; expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"bad override {text!r}; expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; a number is what anyone typing it means.
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "+inf") else value
        except ValueError:
            pass
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def to_dict(cfg: Any) -> Any:
    """A dataclass config as plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> C:
    """Build `cls` from its defaults, then `base`, then the YAML at `path`, then `overrides`."""
    tree: dict[str, Any] = {}
    if base:
        tree = _merge(tree, dict(base))
    if path is not None:
        tree = _merge(tree, read_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return _build(cls, tree)


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    from medvtc.common.io import atomic_write_yaml

    atomic_write_yaml(path, to_dict(cfg))


def replace(cfg: C, **changes: Any) -> C:
    return dataclasses.replace(cfg, **changes)


# train.* keys that change how a run is logged or checkpointed, not the weights it produces.
TRAIN_BOOKKEEPING = frozenset({"progress", "log_every", "save_every", "keep_last", "device", "num_workers", "eval_every",
                               "threads"})


def flatten_config(tree: Mapping[str, Any], keep_whole: Sequence[str] = (), prefix: str = "") -> dict[str, Any]:
    """A nested config dict (as `to_dict` / `read_yaml` give it) -> {dotted key: value}. Dicts
    under a key named in `keep_whole` (free-form arguments such as compressor_args) stay whole."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and k not in keep_whole:
            out.update(flatten_config(v, keep_whole, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_settings_diff(saved: Mapping[str, Any], current: Mapping[str, Any], sections: Sequence[str],
                      keep_whole: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every setting of `sections` (top-level keys
    such as "seed", "data", "model", "train") that differs between a finished run's saved config
    and the current one; train bookkeeping keys and keys only one side has are skipped. Lets a
    benchmark refuse to reuse a run trained under other settings."""
    old = flatten_config({k: saved[k] for k in sections if k in saved}, keep_whole)
    new = flatten_config({k: current[k] for k in sections if k in current}, keep_whole)
    return [(k, old[k], new[k]) for k in new
            if k in old and old[k] != new[k] and not (k.startswith("train.") and k[6:] in TRAIN_BOOKKEEPING)]
