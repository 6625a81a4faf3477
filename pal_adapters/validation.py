"""Type checks of dataclass fields from their annotations, with errors that name field, value and type.

Configs are read from YAML and JSON, where a typo gives a value of the wrong type (``lr: fast``,
``mixed_batches: maybe``) that would otherwise fail deep inside torch, or silently count as true.
``check_fields(self, "training")`` in a ``__post_init__`` checks every field against its annotation:

- ``bool`` accepts only ``True``/``False`` (not 0/1); ``int`` accepts no ``bool``; ``float`` accepts
  ``int`` too (``lr: 1``) but no ``bool``; ``str`` only strings; ``None`` only ``None``;
- ``Literal[...]`` lists its choices; unions (``int | None``) accept any arm;
- ``dict[K, V]``, ``list[X]``, ``tuple[X, ...]`` and ``tuple[X, Y]`` check every key and item (a
  list is accepted where a tuple is annotated: JSON and YAML have no tuples); ``Any`` accepts all.

``from_fields(cls, mapping, what)`` builds a config from a mapping with those checks (unknown and,
for saved files, missing keys named); ``check_choice`` names a value outside its choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


class FieldTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type. A ``ValueError`` too, so code that reports bad
    user input (``except ValueError``) reports it as such."""


def check_fields(obj: Any, what: str) -> None:
    """Check every field of dataclass instance ``obj`` against its annotation.

    Raises ``FieldTypeError`` naming ``what``, the field, the value and the expected type.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_type(f.name, getattr(obj, f.name), hints[f.name], what)


def check_type(name: str, value: Any, hint: Any, what: str = "config") -> None:
    """Raise ``FieldTypeError`` unless ``value`` fits the annotation ``hint`` (see the module doc)."""
    problem = _mismatch(value, hint, name)
    if problem is None:
        return
    where, bad, expected_hint = problem
    expected = describe(expected_hint)
    if _is_choice(expected_hint):  # the wording of config.check_choice
        raise FieldTypeError(f"{what} field {where}={bad!r} is not valid; choose {expected}")
    extra = ""
    if isinstance(bad, str) and _is_number_text(bad) and _accepts(expected_hint, float):
        extra = " (a number written as text: drop the quotes)"
    raise FieldTypeError(f"{what} field {where}={bad!r} is not {expected} (got {_kind(bad)}){extra}")


def describe(hint: Any) -> str:
    """The expected type in words: ``int | None`` -> ``"an integer or null"``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (dict, Mapping):
        return f"a mapping of {_plain(describe(args[0]))} to {_plain(describe(args[1]))}" if args else "a mapping"
    if origin in (list, tuple, Sequence):
        items = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        if origin is tuple and args and items is None:
            return "a list of [" + ", ".join(describe(a) for a in args) + "]"
        return f"a list of {_plural(items)}" if items is not None else "a list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _mismatch(value: Any, hint: Any, where: str) -> tuple[str, Any, Any] | None:
    """``(where, bad value, expected annotation)`` for the first part of ``value`` not fitting ``hint``, or None."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return None
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return None if ok else (where, value, hint)
    if origin in (Union, types.UnionType):
        inner = [_mismatch(value, a, where) for a in args]
        if any(p is None for p in inner):
            return None
        deeper = [p for p, a in zip(inner, args, strict=True) if p[0] != where and _container_fits(value, a)]
        return deeper[0] if deeper else (where, value, hint)
    if origin in (dict, Mapping):
        return _mapping_mismatch(value, args, where, hint)
    if origin in (list, tuple, Sequence):
        return _sequence_mismatch(value, origin, args, where, hint)
    return None if _scalar_fits(value, hint) else (where, value, hint)


def _mapping_mismatch(value: Any, args: tuple, where: str, hint: Any) -> tuple[str, Any, Any] | None:
    if not isinstance(value, Mapping):
        return where, value, hint
    for k, v in value.items():
        if args:
            problem = _mismatch(k, args[0], f"{where} key") or _mismatch(v, args[1], f"{where}[{k!r}]")
            if problem:
                return problem
    return None


def _sequence_mismatch(value: Any, origin: Any, args: tuple, where: str, hint: Any) -> tuple[str, Any, Any] | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return where, value, hint
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            return where, value, hint
        items = list(zip(value, args, strict=True))
    else:
        items = [(v, args[0] if args else Any) for v in value]
    for i, (v, a) in enumerate(items):
        problem = _mismatch(v, a, f"{where}[{i}]")
        if problem:
            return problem
    return None


def _container_fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is the container ``hint`` asks for (so an error inside it is the one to report)."""
    origin = get_origin(hint)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    return False


def _scalar_fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _is_choice(hint: Any) -> bool:
    """A ``Literal`` (or a union of ``Literal`` and ``None``)."""
    if get_origin(hint) in (Union, types.UnionType):
        return all(_is_choice(a) or a is type(None) for a in get_args(hint)) and any(map(_is_choice, get_args(hint)))
    return get_origin(hint) is Literal


def _accepts(hint: Any, scalar: type) -> bool:
    if get_origin(hint) in (Union, types.UnionType):
        return any(_accepts(a, scalar) for a in get_args(hint))
    return hint is scalar


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _plural(hint: Any) -> str:
    plurals = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return plurals.get(hint) or f"({describe(hint)})"


def _plain(text: str) -> str:
    """``"an integer"`` -> ``"integer"`` (for "a list of integers")."""
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article):]
    return text


def from_fields(cls: type, d: Mapping[str, Any], what: str, complete: bool = False) -> Any:
    """Build dataclass ``cls`` from ``d``, checking each value's type against the field's annotation.

    Unknown keys are an error that lists the valid ones; with ``complete`` (a saved file) so are
    missing ones, so a field is never silently given today's default. A mapping for a field typed
    as a dataclass (``TaskConfig.adapter``) is built the same way. Raises ``ValueError`` (the type
    errors are ``validation.FieldTypeError``, a ``ValueError`` too).
    """
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(d, Mapping):
        raise FieldTypeError(f"{what} must be a mapping of fields {known}, not {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - set(known), key=str)
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; valid fields: {sorted(known)}")
    missing = [k for k in known if k not in d] if complete else []
    if missing:
        raise ValueError(f"{what} lacks fields {missing}: a saved config lists every field {known}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in d.items():
        nested = _dataclass_arm(hints[name])
        if nested is not None and isinstance(value, Mapping):
            value = from_fields(nested, value, f"{what} field {name}", complete)
        elif nested is None or complete or not isinstance(value, str):  # a string: a preset, for __post_init__
            check_type(name, value, hints[name], what)
        values[name] = value
    return cls(**values)


def _dataclass_arm(hint: Any) -> type | None:
    """The dataclass in an annotation like ``AdapterConfig | None``, if there is one."""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((a for a in arms if dataclasses.is_dataclass(a)), None)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming ``value`` and the valid ``choices`` when it is not one of them."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not valid; choose one of {valid}")
