"""YAML read into nested dataclasses: every value checked against its annotation, every unknown
key refused with the valid key its writer most likely meant.

Knows no finetuner key: :mod:`finetuner.params` gives the dataclasses (a :class:`Schema`) and
the checks between values.  Its messages name params.yaml and docs/params.md, the one file it
reads and the page that lists the keys.  Invariants: :func:`build` returns an instance
whose every field has its annotated type (an int is never a bool, a float is finite), or raises
:class:`ParamsError` naming the dotted key; :class:`StrictLoader` never constructs a Python
object from a tag and refuses a key given twice.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

import yaml


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown, of the wrong type or out of range."""


_ALLOWED_DOC = " (docs/params.md gives each key's allowed values)"


def fail(key: str, message: str) -> typing.NoReturn:
    raise ParamsError(f"params.yaml: '{key}' {message}")


@dataclass(frozen=True)
class Schema:
    """What :func:`build` reads besides the mapping: the root dataclass (every valid dotted key
    comes from it), names people write for a key where string similarity alone does not find
    it (``learning_rate`` -> ``lr``), and a check every value passes before its type's."""
    root: type
    aliases: dict[str, str]
    check_value: Callable[[str, object], None] = lambda key, value: None


def build(schema: Schema, raw: dict):
    """``schema.root`` built from ``raw`` (a parsed YAML mapping), every value converted."""
    return _build(schema, schema.root, raw)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _convert(schema: Schema, key: str, value, hint):
    """Check ``value`` against the annotation ``hint``; return it in that type."""
    schema.check_value(key, value)
    origin = typing.get_origin(hint)
    if origin in _CONTAINERS:
        return _CONTAINERS[origin](schema, key, value, hint)
    if hint in _SCALARS:
        return _SCALARS[hint](key, value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            fail(key, f"is {value!r}; expected a mapping of {hint.__name__} keys")
        return _build(schema, hint, value, key + ".")
    raise TypeError(f"unsupported annotation {hint!r} for {key}")


def _to_union(schema: Schema, key: str, value, hint):
    options = typing.get_args(hint)
    for option in options:
        try:
            return _convert(schema, key, value, option)
        except ParamsError:
            continue
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    fail(key, f"is {value!r} ({type(value).__name__}); expected {names}")


def _to_tuple(schema: Schema, key: str, value, hint) -> tuple:
    args = typing.get_args(hint)
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        fail(key, f"is {value!r}; expected a list of {len(args)} numbers")
    return tuple(_convert(schema, f"{key}[{i}]", v, a)
                 for i, (v, a) in enumerate(zip(value, args)))


def _to_dict(schema: Schema, key: str, value, hint) -> dict:
    key_hint, value_hint = typing.get_args(hint)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        fail(key, f"is {value!r}; expected a mapping (key: value, or {{}} for none)")
    return {_convert(schema, f"{key} (a key)", k, key_hint):
            _convert(schema, f"{key}[{k!r}]", v, value_hint) for k, v in value.items()}


def _to_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        fail(key, f"is {value!r}; expected true or false")
    return value


def _to_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(key, f"is {value!r} ({type(value).__name__}); expected an integer{_ALLOWED_DOC}")
    return value


def _to_float(key: str, value) -> float:
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # `1e-3`: PyYAML (YAML 1.1) reads it as a string
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(key, f"is {value!r} ({type(value).__name__}); expected a number{_ALLOWED_DOC}")
    return float(value)


def _to_str(key: str, value) -> str:
    if not isinstance(value, str):
        fail(key, f"is {value!r} ({type(value).__name__}); expected a string")
    return value


# how a value of each annotation is checked: generic containers by their origin, then scalars
_CONTAINERS = {typing.Union: _to_union, types.UnionType: _to_union, tuple: _to_tuple,
               dict: _to_dict}
_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _leaf_paths(cls, prefix: str = "") -> list[str]:
    """Every valid dotted key of ``cls``: seed, lr, ..., data.dir, train.epochs, ..."""
    paths = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            paths += _leaf_paths(hint, f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return paths


def _suggest(schema: Schema, key: str, prefix: str, names: list[str]) -> list[str]:
    """The valid keys a user most likely meant by ``prefix + key``."""
    everywhere = _leaf_paths(schema.root)
    if prefix + key in everywhere or key in everywhere:  # `data.dir: x` written flat
        return [prefix + key if prefix + key in everywhere else key]
    if key.lower() in schema.aliases:  # learning_rate -> lr
        return [schema.aliases[key.lower()]]
    same_name = [p for p in everywhere if p.rsplit(".", 1)[-1] == key]  # epochs at the top
    if same_name:
        return same_name[:2]
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.6)  # frezee_depth
    if close:
        return [prefix + c for c in close]
    leaves = {p.rsplit(".", 1)[-1]: p for p in everywhere}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)  # train.bacth_size
    if close:
        return [leaves[close[0]]]
    return [prefix + c for c in difflib.get_close_matches(key, names, n=1, cutoff=0.5)]


def _unknown_key(schema: Schema, key, prefix: str, names: list[str]) -> ParamsError:
    """The error for ``prefix + key``, which ``names`` (the valid keys there) lacks."""
    close = _suggest(schema, str(key), prefix, names)
    hint = ""
    if close:
        hint = "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        if "." in str(key) and close == [prefix + str(key)]:
            outer, inner = close[0].rsplit(".", 1)
            hint = (f"; '{close[0]}' is written nested: '{inner}:' indented under "
                    f"'{outer.rsplit('.', 1)[-1]}:'.")
    return ParamsError(f"params.yaml: unknown key '{prefix}{key}'{hint or '.'} "
                       f"Valid keys: {', '.join(prefix + n for n in names)}")


def _build(schema: Schema, cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise _unknown_key(schema, key, prefix, names)
    values = {k: _convert(schema, prefix + k, v, hints[k]) for k, v in raw.items()}
    return cls(**values)


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice (plain YAML keeps the last silently)."""


def _mapping_without_duplicates(loader: StrictLoader, node, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given below win
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says what is wrong
            break
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {first}); "
                "only one value can apply", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                             _mapping_without_duplicates)
