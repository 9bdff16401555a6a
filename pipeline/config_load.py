"""Building a ``JobConfig`` from YAML plus ``a.b=c`` overrides, type-checked against the
dataclass annotations (one-line ``ConfigError`` naming the dotted key), and back: the resolved
config as plain data or YAML, which loads to an equal config."""

from __future__ import annotations

import dataclasses
import os
import reprlib
import types
import typing
from dataclasses import fields
from typing import Any, Literal

import yaml

from extremal_core.methods.registry import parameter_names
from extremal_core.settings import ExtremalSettings
from pipeline.config import ConfigError, JobConfig, MethodConfig
from pipeline.storage import Storage

_SECRET_WORDS = ("key", "secret", "token", "password", "credential")
MAX_CONFIG_BYTES = 64 << 20  # a 100,000-entry shard list is ~5 MB
MAX_CONFIG_VALUES = 5_000_000  # values once YAML aliases are expanded (an alias bomb has 10^9)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 160, 160, 80


def short_repr(value: Any, limit: int = 300) -> str:
    """``repr(value)`` for an error message: bounded work and length, however large the value."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expanded_size(node: yaml.Node, memo: dict[int, int], path: set[int]) -> int:
    """How many values ``node`` stands for once its aliases are expanded (shared nodes counted at
    every use), without expanding them."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in path:
        raise ConfigError("a YAML alias refers to a value that contains it (a recursive structure)")
    path.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, path) + _expanded_size(v, memo, path) for k, v in node.value)
    path.discard(key)
    memo[key] = min(size, MAX_CONFIG_VALUES + 1)
    return memo[key]


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with limits: at most ``MAX_CONFIG_VALUES`` values once aliases are
    expanded, no recursive aliases (ConfigError naming ``where``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES:,} values once YAML aliases are expanded")
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------------------
# Building and type-checking
# ------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised (lists -> tuples,
    ints -> floats where a float is expected). Raises ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    elif origin is dict:  # free-form keyword arguments (model.options)
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - an annotation this module does not know
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {short_repr(value)} ({type(value).__name__})")


def _check_keys(data: Any, cls: type, prefix: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        where = prefix or "the config"
        raise ConfigError(f"{where}: expected a mapping, got {short_repr(data)} ({type(data).__name__})")
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            hint = ""
            if any(w in str(key).lower() for w in _SECRET_WORDS):
                hint = " (credentials are never read from the config: use AWS_* environment variables)"
            raise ConfigError(f"unknown key {short_repr(dotted)}{hint}; valid keys: {', '.join(valid)}")
    return data


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    data = _check_keys(data, cls, prefix)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if tp is ExtremalSettings:
            kwargs[f.name] = _build_extremal(data.get(f.name), key)
        elif tp is MethodConfig:
            kwargs[f.name] = _build_method(data.get(f.name), key)
        elif dataclasses.is_dataclass(tp):
            # Absent sections are built too, so their required fields are checked.
            kwargs[f.name] = _build(tp, data.get(f.name), key)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _build_extremal(data: Any, prefix: str) -> ExtremalSettings:
    """The ``extremal:`` section: flat setting names (``max_iter: 300``) or a group's mapping
    (``optim: {max_iter: 300}``), each checked against its group's annotation."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {short_repr(data)} ({type(data).__name__})")
    groups, where = ExtremalSettings.groups(), ExtremalSettings.group_of()
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        if key in groups:
            mapping = _check_keys(value, groups[key], f"{prefix}.{key}")
            given = [(name, v, f"{prefix}.{key}.{name}") for name, v in mapping.items()]
        elif key in where:
            given = [(key, value, f"{prefix}.{key}")]
        else:
            valid = ", ".join([*where, *groups])
            raise ConfigError(f"unknown key {short_repr(f'{prefix}.{key}')}; valid keys: {valid}")
        for name, v, dotted in given:
            if name in flat:
                raise ConfigError(f"{dotted}: set twice (also as {flat[name][1]})")
            flat[name] = (v, dotted)
    kwargs = {}
    for name, (value, key) in flat.items():
        tp = typing.get_type_hints(groups[where[name]])[name]
        # The engine accepts a single number for `areas`; so does the config.
        if name == "areas" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        kwargs[name] = _coerce(value, tp, key)
    try:
        return ExtremalSettings.from_flat(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc


def _build_method(data: Any, prefix: str) -> MethodConfig:
    """``{name, **params}`` -> MethodConfig; the name and the parameters' names are checked against
    the method registry here, so a typo exits before Ray starts."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping such as {{name: extremal}}, got {short_repr(data)}")
    params = dict(data)
    name = params.pop("name", MethodConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}.name: expected str, got {short_repr(name)} ({type(name).__name__})")
    method = MethodConfig(name=name, params={k: _plain(v) for k, v in params.items()})
    try:
        cls = method.method_class
    except ValueError as exc:
        raise ConfigError(f"{prefix}.name: {exc}") from None
    valid = parameter_names(cls)
    if valid is not None:
        settings = set(ExtremalSettings.group_of()) if method.uses_engine_settings else set()
        allowed = [v for v in valid if v != "settings" and v not in settings]
        for key in params:
            if key in settings:
                raise ConfigError(f"{prefix}.{key} is an engine setting of {name!r}: set extremal.{key}")
            if key not in allowed:
                keys = ", ".join(["name", *allowed])
                raise ConfigError(f"unknown key {short_repr(f'{prefix}.{key}')} for method {name!r}; valid keys: {keys}")
    return method


def config_from_dict(data: dict[str, Any] | None) -> JobConfig:
    """Build and validate a JobConfig from a plain mapping (as loaded from YAML)."""
    return _build(JobConfig, data or {}, "")


def _parse_value(text: str) -> Any:
    """An override value as a YAML scalar/list; text YAML cannot parse (``{000..009}.tar``) stays
    a string."""
    try:
        value = safe_yaml(text, f"the value {short_repr(text)}")
    except yaml.YAMLError:
        return text
    # A brace pattern can parse as a YAML flow mapping; the user meant the string.
    return text if isinstance(value, dict) else value


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b=c`` override to a nested mapping in place."""
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"bad override {short_repr(override)}: expected key.path=value, e.g. extremal.max_iter=300")
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"bad override {short_repr(override)}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    if _is_section(parts):
        raise ConfigError(
            f"bad override {short_repr(override)}: {dotted} is a section; set one of its keys ({dotted}.<key>=value)"
        )
    node[parts[-1]] = _parse_value(text)


def _is_section(parts: list[str]) -> bool:
    """Whether ``a.b`` names a section of the config (a dataclass), not a value."""
    tp: Any = JobConfig
    for part in parts:
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return dataclasses.is_dataclass(tp)


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a job from a YAML file (``None``: start from the defaults), apply ``a.b=c`` overrides
    (values parsed as YAML: ``extremal.areas=[0.05,0.1]``), and validate.

    A file may start from another: ``base: demo.yaml`` (relative to the file) is read first and the
    file's sections are merged into it key by key, except ``method``, which replaces the base's
    whole (another method's parameters would not fit)."""
    data: Any = _read_with_base(path, ()) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    return config_from_dict(data)


def results_location(
    results: str | None, config: str | None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[str, Storage]:
    """Where an evaluation reads a job's results: ``results`` as given (``Storage()``: fsspec defaults and the
    environment), or the ``output.uri`` and storage of the job's ``config`` (with ``--set``
    overrides, which need a config). Returns (uri, ``Storage``); ConfigError otherwise."""
    if config is not None:
        cfg = load_config(config, overrides)
        return cfg.output.uri, Storage.from_config(cfg)
    if overrides:
        raise ConfigError("--set needs --config")
    if not results:
        raise ConfigError("give --results <output uri> or --config <job yaml>")
    return results, Storage()


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MB (a long shard list belongs in input.shards: "
                              "'@list.txt')")
        data = safe_yaml(raw.decode("utf-8"), path)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _read_with_base(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another config file, got {short_repr(base)}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    if base_path in chain or base_path == os.path.normpath(path):
        raise ConfigError(f"{path}: base {base!r} leads back to itself")
    merged = _read_with_base(base_path, (*chain, os.path.normpath(path)))
    for section, value in data.items():
        if section != "method" and isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **value}
        else:
            merged[section] = value
    return merged


# ------------------------------------------------------------------------------------------------
# Serialising (the inverse of loading)
# ------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, MethodConfig):
        return value.to_dict()
    if isinstance(value, ExtremalSettings):  # flat, as users write it
        return {k: _plain(v) for k, v in value.flat().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (tuples become lists); feeding it back to
    ``config_from_dict`` gives an equal config."""
    return _plain(cfg)


def dump_config_yaml(cfg: JobConfig) -> str:
    """The resolved config as YAML, loadable by ``load_config``."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
