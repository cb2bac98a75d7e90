"""Typed configs from plain YAML data: unknown keys rejected with a suggestion, values coerced and range-checked.

A config is a dataclass. Field metadata may hold ``help`` (one line shown by the CLI) and the
bounds ``gt``, ``ge``, ``le`` and ``lt``. ``parse(cls, data, source)`` builds it and raises one
``ConfigError`` naming the file, line and key path of the first problem. ``example`` in the metadata is a valid
value a message shows (``strategies: naive`` -> "expected a list (e.g. [naive, ewc])").

Numbers given as strings are accepted on purpose: ``${VAR}`` expands to a string (``epochs: ${EPOCHS}``) and PyYAML
reads ``1e-3`` (no dot) as a string, so an integer field takes ``"3"`` (or ``"3.0"``) and a number field ``"1e-3"``.
Booleans are not numbers: ``epochs: true`` is refused, as is ``"abc"`` or ``"2.5"`` for an integer.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

from cl_harness.config.limits import check_finite, check_seed_key
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import clip, short_repr


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str | None:
    """Nearest valid name, as a hint, or None."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


_NAMES = {bool: ("true/false", "true/false values"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), list: ("a list", "lists"), tuple: ("a list", "lists"), dict: ("a mapping", "mappings")}


def _type_name(tp: Any, plural: bool = False) -> str:
    """How a message names type ``tp``, in words ("a list of integers"); never a Python type name."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a, plural) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        words = "lists" if plural else "a list"
        return words if arg is Any else f"{words} of {_type_name(arg, plural=True)}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    if tp is Any:
        return "values" if plural else "a value"
    if tp in _NAMES:
        return _NAMES[tp][plural]
    return "values" if plural else "a value"


def _check_bounds(value: Any, meta: typing.Mapping, source: Source, path: KeyPath) -> None:
    for key, ok, word in (
        ("gt", lambda v, b: v > b, ">"),
        ("ge", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("le", lambda v, b: v <= b, "<="),
    ):
        if key in meta and value is not None and not ok(value, meta[key]):
            raise source.error(path, f"must be {word} {meta[key]}, got {short_repr(value)}")


def _describe_number_form(text: str, value: Any) -> str:
    """Which YAML 1.1 number form ``text`` is written in (or that it is a boolean word), in words."""
    if isinstance(value, bool):
        return "a boolean"  # a word: yes, off
    if isinstance(value, datetime.date):
        return "a date"
    lower = text.lower()
    if ":" in text:
        return "a base-60 number"
    if "0b" in lower or "0x" in lower:
        return "a binary number" if "0b" in lower else "a hexadecimal number"
    if "_" in text:
        return "a number with digit separators"
    digits = text.lstrip("+-")
    return "an octal number" if digits.startswith("0") and digits.lstrip("0").isdigit() else "a number"


def _check_number_text(value: Any, source: Source, path: KeyPath, key: bool = False) -> None:
    """Refuse, for a text field (or a text key), a number YAML 1.1 read from another form than its plain decimal one:
    ``name: 010`` is the octal 8, ``10:30`` the base-60 630, ``1_000`` 1000; ``str()`` of it would silently be another
    name. Likewise a word read as a boolean or null (``classes: [yes, no]``). Plain numbers (``name: 123``,
    ``classes: [0, 1]``, ``1.5``) are their own text and pass."""
    text = source.number_text(path, value, key=key)
    if text is None:
        return
    shown = clip(text, 40)
    error = source.error(
        path[:-1] + (shown,) if key else path,
        f"YAML reads {shown} as {_describe_number_form(text, value)}"
        + ("" if isinstance(value, datetime.date) else f", {short_repr(value, 40)}")
        + (f", not as the text {shown!r}" if isinstance(value, (bool, datetime.date)) and not key else
           f"; this {'key' if key else 'value'} is text, so it would become {short_repr(str(value), 40)}"),
        hint=f'quote it to keep it as written: "{shown}"', line=source.line_of(path) if key else None,
    )
    error.number_form = True  # type: ignore[attr-defined]  # what a union with str reports (see coerce)
    raise error


SUPPORTED_TYPES = "bool, int, float, str, Literal[...], list[T], dict[str, T], T | None, unions of these, Any, or a dataclass"


def unsupported_type(tp: Any) -> str | None:
    """The part of type ``tp`` that ``coerce`` cannot read a config value into (e.g. a bare ``tuple``), or None."""
    origin = typing.get_origin(tp)
    if tp in (Any, bool, int, float, str, type(None)) or origin is Literal:
        return None
    if origin in (Union, types.UnionType, list, tuple):
        return next((bad for arg in typing.get_args(tp) if arg is not Ellipsis and (bad := unsupported_type(arg))), None)
    if origin is dict:
        key, arg = typing.get_args(tp)
        return unsupported_type(arg) if key is str else repr(tp)
    if dataclasses.is_dataclass(tp):
        for name, hint in typing.get_type_hints(tp).items():
            bad = unsupported_type(hint)
            if bad:
                return f"{bad} (field {name!r})"
        return None
    return getattr(tp, "__name__", None) or repr(tp)


def coerce(tp: Any, value: Any, source: Source, path: KeyPath, example: str | None = None) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError at ``path`` (``example``: a valid value to show)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, source, path, example)
            except Exception as exc:  # noqa: BLE001 - try the next member of the union
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        quote = next((e for e in errors if getattr(e, "number_form", False)), None)
        if quote is not None:  # `label_names: [010]` for `list[str] | str`: say to quote it, not "expected ..."
            raise quote
        raise source.error(path, f"expected {_type_name(tp)}, got {short_repr(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        hint = did_you_mean(value, [str(a) for a in allowed])
        raise source.error(path, f"must be one of {', '.join(map(str, allowed))}; got {short_repr(value)}", hint=hint)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool) and typing.get_origin(arg) is None
            shown = example or (f"[{value}]" if scalar else None)
            raise source.error(path, f"expected {_type_name(tp)}" + (f" (e.g. {shown})" if shown else "") + f", got {short_repr(value)}")
        return [coerce(arg, v, source, path + (i,)) for i, v in enumerate(value)]
    if origin is dict:
        key_type, arg = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise source.error(path, f"expected a mapping, got {short_repr(value)}")
        out: dict = {}
        keys: dict[str, Any] = {}
        for k, v in value.items():
            if key_type is str:
                _check_number_text(k, source, path + (k,), key=True)
            name = str(k)
            if name in keys:  # `'1': a` and `1: b`: two keys in YAML, one name here (labels are text)
                first, second = source.line_of(path + (keys[name],)), source.line_of(path + (k,))
                raise source.error(
                    path + (name,), f"duplicate key {name!r} (lines {first} and {second}); {short_repr(keys[name], 30)} and "
                                 f"{short_repr(k, 30)} are the same key here (keys are text); give each key once",
                    line=second,
                )
            keys[name] = k
            out[name] = coerce(arg, v, source, path + (k,))
        return out
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, source, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise source.error(path, f"expected true/false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise source.error(path, f"expected an integer, got {short_repr(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number) and number.is_integer():
                return int(number)
        raise source.error(path, f"expected an integer, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise source.error(path, f"expected a number, got {short_repr(value)}")
        if isinstance(value, (int, float)):
            return check_finite(float(value), source, path)
        if isinstance(value, str):  # PyYAML reads 1e-3 as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return check_finite(number, source, path)
        raise source.error(path, f"expected a number, got {short_repr(value)}")
    if tp is str:
        _check_number_text(value, source, path)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise source.error(path, f"expected a string, got {short_repr(value)}")
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def parse(cls: type, data: Any, source: Source | None = None, path: KeyPath = ()) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and bounds."""
    source = source or Source()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise source.error(path, f"expected a mapping with keys {', '.join(field_names(cls))}; got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if not isinstance(key, str):
            shown = {None: "null", True: "true", False: "false"}[key] if key is None or isinstance(key, bool) else short_repr(key)
            raise source.error(
                path, f"the key {shown} is not a name; keys must be names" + (f" ({', '.join(fields)})" if fields else ""),
                hint="write the key as a name; put it in quotes if a name looks like a number", line=source.line_of(path + (key,)),
            )
        if key not in fields:
            if not fields:
                owner = path[-1] if path and isinstance(path[-1], str) else "this section"
                raise source.error(path + (key,), f"{owner} takes no parameters; remove {key!r}",
                                   hint=f"list it by its name alone, e.g. - {owner}; training settings go under `training:`")
            raise source.error(
                path + (key,),
                f"unknown key; allowed: {', '.join(fields)}",
                hint=did_you_mean(key, fields),
            )
    kwargs = {}
    for name, fld in fields.items():
        if name in data:
            kwargs[name] = check_value(hints[name], fld, data[name], source, path + (name,))
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise source.error(path + (name,) if not path else path, f"missing required key {name!r}")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(source, path)
    return obj


def check_value(tp: Any, fld: dataclasses.Field, value: Any, source: Source, path: KeyPath) -> Any:
    """``value`` for field ``fld`` (of type ``tp``) converted and checked against its bounds; the one owner of those
    rules, for a plain value and for each value a search may try."""
    value = coerce(tp, value, source, path, fld.metadata.get("example"))
    _check_bounds(value, fld.metadata, source, path)
    check_seed_key(fld.name, value, source, path)
    return value


def field_of(cls: type, name: str) -> tuple[Any, dataclasses.Field]:
    """The type and the field ``name`` of dataclass ``cls``."""
    fld = next(f for f in dataclasses.fields(cls) if f.name == name)
    return typing.get_type_hints(cls)[name], fld


def to_dict(obj: Any) -> Any:
    """A config back to plain data (what ``config.yaml`` holds)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field, for ``cl-harness strategies``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for fld in dataclasses.fields(cls):
        if not fld.init:
            continue
        if fld.default is not dataclasses.MISSING:
            default = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = "(required)"
        rows.append((fld.name, _type_name(hints[fld.name]), default, fld.metadata.get("help", "")))
    return rows
