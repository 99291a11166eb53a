"""The one key-flattener: nested mappings (a config as dicts, a saved config) to dotted keys, ``model.rpn.nms_thresh``."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten_keys(tree: Mapping[str, Any], prefix: str = "", *, tuples_as_lists: bool = False) -> dict[str, Any]:
    """{dotted key: value} of every value (not section) of a nested mapping, in insertion order; with tuples_as_lists,
    tuple values become lists (a config dict and its YAML round trip then compare equal)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, f"{prefix}{key}.", tuples_as_lists=tuples_as_lists))
        else:
            flat[f"{prefix}{key}"] = list(value) if tuples_as_lists and isinstance(value, tuple) else value
    return flat
