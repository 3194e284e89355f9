"""YAML configs with ``key.sub=value`` command-line overrides, checked against dataclass schemas.

Schemas are plain dataclasses whose fields carry ``metadata={"help": ...}``; the same schema
drives validation (unknown keys and wrong types are errors, not silently ignored) and ``--help``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import UserError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None) -> Any:
    """A schema field with its help text; ``factory`` for mutable defaults."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- reading


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at its top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], parsed value). Values are YAML scalars/lists."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"override '{text}': value is not valid YAML") from err
    return key.split("."), value


def set_path(tree: dict, path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` inside nested dicts/lists, creating dicts as needed."""
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            idx = _list_index(node, part, path)
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override '{'.'.join(path)}': '{part}' is not an index of a list of {len(node)}")
    return int(part)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- building


def build(schema: type[T], data: dict | None, where: str = "") -> T:
    """Instantiate ``schema`` from nested plain data, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config key '{where or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    for key in data:
        if key not in names:
            full = f"{where}.{key}" if where else str(key)
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise UserError(f"unknown config key '{full}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(schema):
        full = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], full)
    try:
        return schema(**kwargs)
    except TypeError as err:  # a required field is missing
        raise UserError(f"config '{where or '<root>'}': {err}") from err


def _coerce(tp: Any, value: Any, where: str) -> Any:
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
                return _coerce(arg, value, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"config key '{where}' has an invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{where}' must be a list, got {value!r}")
        (item,) = args or (Any,)
        return [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{where}' must be a mapping, got {value!r}")
        _, vt = args or (Any, Any)
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"config key '{where}' must be one of {list(args)}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key '{where}' must be a string, got {value!r}")
        return str(value)
    return value


def load(schema: type[T], config_files: list[str | Path], overrides: list[str]) -> T:
    """Merge YAML files left to right, then apply overrides, then validate against ``schema``."""
    return build(schema, merged(config_files, overrides))


def merged(config_files: list[str | Path], overrides: list[str]) -> dict:
    """The plain tree ``load`` validates: the files merged left to right, then the overrides."""
    tree: dict = {}
    for path in config_files:
        tree = deep_merge(tree, read_yaml(path))
    for text in overrides:
        path, value = parse_override(text)
        set_path(tree, path, value)
    return tree


def overrides_list(overrides: dict[str, Any]) -> list[str]:
    """Dotted dict -> ``key=value`` strings (values as YAML flow, so lists and dicts survive)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in overrides.items()]


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- help


def describe(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf option of ``schema``, for ``--help``."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = to_dict(f.default_factory())  # type: ignore[misc]
        else:
            default = "<required>"
        rows.append((key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("..."), f.metadata.get("help", "")))
        item = _list_item_schema(tp)
        if item is not None:
            rows.extend(describe(item, key + ".N."))
    return rows


_MISSING = object()


def _lookup(tree: dict[str, Any] | None, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def get_dotted(tree: dict[str, Any] | None, key: str) -> Any:
    """The value at a dotted key of a config tree (``fl.bn_buffers``), None where there is none."""
    value = _lookup(tree, key)
    return None if value is _MISSING else value


def _list_item_schema(tp: Any) -> type | None:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (None,)
        if item is not None and dataclasses.is_dataclass(item):
            return item
    return None


def help_text(schema: type, effective: dict[str, Any] | None = None) -> str:
    """One line per option; ``effective`` (the default config file, loaded) replaces the schema's defaults
    where it sets a value, so that --help shows what a run without overrides really uses."""
    rows = describe(schema)
    width = min(max(len(k) for k, _, _ in rows), 34)
    lines = []
    for key, default, text in rows:
        value = _lookup(effective, key)
        if value is not _MISSING:
            default = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
        default = default.strip()
        if len(default) > 40:
            default = default[:37] + "..."
        lines.append(f"  {key:<{width}}  {text} [default: {default.strip()}]")
    return "\n".join(lines)
