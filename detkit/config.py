"""Configs: YAML files with `_base_` inheritance, dotted command-line overrides, and validation.

A file may name `_base_: path` or a list of paths (relative to the file); bases are merged depth-first in order,
then the file's own keys on top, then `key.sub=value` overrides (values parsed as YAML). Every key is checked
against the schema in detkit.config_schema: an unknown key or a wrong type is a DetkitError naming the key,
where it came from and, for unknown keys, the closest valid one.

A loaded Config also carries three plain attributes (not schema keys): ``sources`` (dotted key -> the file or command
line that set it), ``user_keys`` (the dotted keys the files, their ``_base_`` files and the overrides set, as opposed
to the schema's defaults), which detkit.config_checks.check_keys_apply reads to refuse keys an arch ignores, and
``checked`` (what config_checks.check_config last checked, so that build_model and the recipes check a config built
in Python once and a loaded one not again).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from detkit.atomic import atomic_write_text
from detkit.config_checks import COMMAND_LINE, check_command_line_keys, check_config, check_values, ignored_keys
from detkit.config_schema import Config
from detkit.errors import DetkitError
from detkit.keys import flatten_keys
from detkit.registries import Names

__all__ = ["Config", "load_config", "config_from_dict", "config_to_dict", "save_config", "parse_overrides"]

# Old dotted key -> its new name, for keys renamed after a release: an old config fails naming the new key.
RENAMED_KEYS: dict[str, str] = {}

# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent (1.0e-4); YAML 1.2 and JSON also read
# 1e-4, 2E3, 1.5e3.
# A plain decimal or scientific number, nothing else (no 'nan', 'inf', '1_000' or sexagesimal forms).
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 scientific notation without a dot (1e-4) as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^{_NUMBER.pattern}$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML text as Python values, 1e-4 read as a float (YAML 1.2), everything else as PyYAML's safe_load."""
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DetkitError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DetkitError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DetkitError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _merge(base: dict, update: dict, sources: dict, source: str, prefix: str = "") -> dict:
    """Deep-merges update into base (in place), recording which file set each dotted key."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, sources, source, dotted + ".")
        else:
            base[key] = value
            _record(value, sources, source, dotted)
    return base


def _record(value: Any, sources: dict, source: str, dotted: str) -> None:
    sources[dotted] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record(sub, sources, source, f"{dotted}.{key}")


def _load_tree(path: Path, sources: dict, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise DetkitError(f"config {path} includes itself through _base_")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise DetkitError(f"config key '_base_' in {path} must be a file path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        # The base recorded its own keys' sources while loading; merging it must not overwrite them.
        _merge(merged, _load_tree(path.parent / base, sources, chain + (path,)), {}, "")
    return _merge(merged, data, sources, str(path))


def parse_overrides(items: list[str]) -> dict:
    """Nested dict from `a.b=value` strings, values parsed as YAML."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DetkitError(f"override {item!r} must look like key.sub=value")
        try:
            value = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DetkitError(f"override {item!r} sets a key below {part!r}, which is already a value")
        node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config (or the defaults when path is None), applies overrides, and validates it: types and
    allowed values (the schema and its registries), value ranges, and the keys that do not apply to the config's
    arch and recipe (config_checks.check_config). Raises DetkitError naming the key and the file or command line
    that set it."""
    sources: dict[str, str] = {}
    tree = _load_tree(Path(path), sources) if path is not None else {}
    dumped = _keys_at_default_in_dumps(tree, sources)
    _merge(tree, parse_overrides(overrides or []), sources, COMMAND_LINE)
    config = config_from_dict(tree, sources)
    config.user_keys = config.user_keys - {k for k in dumped if sources.get(k) != COMMAND_LINE}
    check_command_line_keys(config)
    check_config(config)  # every whole-config key check, once (config_checks.ensure_checked skips it later)
    return config


# A file that sets at least this share of the schema's keys is a whole resolved config (a run's config.yaml).
_DUMP_SHARE = 0.9


def _keys_at_default_in_dumps(tree: dict, sources: dict[str, str]) -> set[str]:
    """Keys at their default value that come from a whole resolved config rather than from a user's choice.

    Runs saved before save_config left out the keys an arch ignores wrote every key; loading such a config.yaml
    for eval or infer must not read those defaults as keys the user set (check_keys_apply). A key set to another
    value than its default still counts as set.
    """
    defaults = flatten_keys(config_to_dict(Config()))
    per_file: dict[str, int] = {}
    for key in defaults:
        if key in sources:
            per_file[sources[key]] = per_file.get(sources[key], 0) + 1
    dumps = {f for f, n in per_file.items() if n >= _DUMP_SHARE * len(defaults)}
    if not dumps:
        return set()
    values = flatten_keys(tree)
    return {k for k, v in values.items() if sources.get(k) in dumps and k in defaults and v == defaults[k]}


def config_from_dict(tree: dict, sources: dict[str, str] | None = None) -> Config:
    """A validated Config from a nested dict of the keys to change from the defaults."""
    config = _build(Config, tree, "", sources or {})
    _resolve_roots(config)
    check_values(config)
    config.sources = dict(sources or {})
    config.user_keys = frozenset(flatten_keys(tree))
    return config


def _build(cls: type, tree: dict, prefix: str, sources: dict[str, str]) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("provenance")}
    values = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in RENAMED_KEYS:
            raise DetkitError(f"config key {dotted!r} in {sources.get(dotted, COMMAND_LINE)} is now "
                              f"{RENAMED_KEYS[dotted]!r}; rename it")
        if key not in fields:
            valid = [f"{prefix}{name}" for name in fields]
            close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys here: {', '.join(valid)})"
            raise DetkitError(f"unknown config key {dotted!r} in {sources.get(dotted, COMMAND_LINE)}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise DetkitError(f"config key {dotted!r} in {sources.get(dotted, COMMAND_LINE)} must be a "
                                  f"mapping of keys, got {value!r}")
            default = fields[key].default_factory()  # nested defaults (e.g. data.train.split) stay unless set
            values[key] = _build(tp, {**config_to_dict(default), **value}, dotted + ".", sources)
        else:
            values[key] = _check(value, tp, dotted, sources)
    return cls(**values)


def _registry_names(tp: Any) -> list[str] | None:
    """The valid names of an ``Annotated[str, Names(...)]`` key (detkit.registries), or None for any other type."""
    if typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Names):
                return meta.names()
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    names = _registry_names(tp)
    if names is not None:
        return "one of " + ", ".join(repr(a) for a in names)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    names = _registry_names(tp)
    if names is not None:
        return isinstance(value, str) and value in names, value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off / on as a boolean
            value = "on" if value else "off"
        return value in typing.get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _matches(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        converted = []
        for item in value:
            ok, item = _matches(item, typing.get_args(tp)[0])
            if not ok:
                return False, value
            converted.append(item)
        return True, converted
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return True, float(value)  # a number written as a string (e.g. a Python dict holding "1e-4")
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(
            value, (int, float)) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _check(value: Any, tp: Any, dotted: str, sources: dict[str, str]) -> Any:
    ok, converted = _matches(value, tp)
    if not ok:
        raise DetkitError(f"config key {dotted!r} in {sources.get(dotted, COMMAND_LINE)} must be "
                          f"{_type_name(tp)}, got {value!r}")
    return converted


def _resolve_roots(config: Config) -> None:
    for split in (config.data.train, config.data.test):
        if split.root is None:
            split.root = config.data.root


def config_to_dict(config: Any) -> dict:
    """The config's keys as plain nested dicts and lists (provenance, Config.sources and user_keys, left out)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if not f.metadata.get("provenance")}
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v) for k, v in values.items()}


def save_config(config: Config, path: str | Path) -> Path:
    """Writes the resolved config as YAML (atomically) and returns the path.

    Every key is written except those the config's model.arch ignores (config_checks.ignored_keys), so the file
    loads back as a config whose every key applies (a key an arch ignores is an error when set in a file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = config_to_dict(config)
    for key in ignored_keys(config):
        _remove(tree, key.split("."))
    atomic_write_text(path, yaml.safe_dump(tree, sort_keys=False))
    return path


def _remove(tree: dict, parts: list[str]) -> None:
    """Deletes the key at path `parts` from a nested dict, and each section it leaves empty."""
    if len(parts) > 1:
        _remove(tree[parts[0]], parts[1:])
        if not tree[parts[0]]:
            del tree[parts[0]]
    else:
        del tree[parts[0]]
