"""Validation of config dataclasses: one style of check and of error message for every config.

Each check reads a field of a dataclass instance, and on a bad value raises an error that names
the class and field, shows the value, and says what to pass instead (with the field's default)::

    MetaTrainConfig.meta_steps must be a positive int, got 0; pass an int >= 1 (default 2000)

A value of the wrong type raises ``ConfigTypeError``, a subclass of both ``TypeError`` and
``ValueError`` (configs read from JSON get the error callers of either kind expect); a value of
the right type out of range raises ``ValueError``. Checks return the value, so a normalising
``__post_init__`` can use them inline.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class RunConfig:
    ...     steps: int = 100
    ...     lr: float = 1e-3
    ...     mode: str = "fast"
    ...     def __post_init__(self):
    ...         check_int(self, "steps", minimum=1)
    ...         check_number(self, "lr", gt=0)
    ...         check_choice(self, "mode", ("fast", "slow"))
    >>> RunConfig(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: RunConfig.steps must be a positive int, got 0; pass an int >= 1 (default 100)
    >>> RunConfig.__name__, from_dict(RunConfig, {"lr": 0.1}).lr
    ('RunConfig', 0.1)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Collection, NoReturn

__all__ = [
    "ConfigTypeError",
    "config_error",
    "check_int",
    "check_number",
    "check_bool",
    "check_choice",
    "check_nested",
    "from_dict",
]


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type (catchable as ``TypeError`` or as ``ValueError``)."""


_MISSING = object()


def _default(obj: Any, name: str) -> Any:
    for f in dataclasses.fields(obj):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _MISSING


def config_error(obj: Any, name: str, requirement: str, fix: str | None = None, *,
                 exc: type[Exception] = ValueError) -> NoReturn:
    """Raise ``exc`` saying that ``type(obj).name`` must meet ``requirement``, with its value.

    Args:
        obj: the config instance (a dataclass); its class name and the field's value are shown.
        name: the field.
        requirement: what the value must be, e.g. ``"a positive int"`` or ``"<= horizon_max (20)"``.
        fix: what to pass instead, e.g. ``"pass an int >= 1"``; the field's default is appended
            when it is a scalar.
            Default None: no fix beyond the requirement.
        exc: the exception class. Default ``ValueError``.
    """
    value = getattr(obj, name)
    msg = f"{type(obj).__name__}.{name} must be {requirement}, got {value!r}"
    if fix:
        default = _default(obj, name)
        scalar = default is None or isinstance(default, (bool, int, float, str))
        msg += f"; {fix}" + (f" (default {default!r})" if scalar else "")
    raise exc(msg)


def _bound_text(gt=None, ge=None, lt=None, le=None) -> str:
    if ge is not None and lt is not None:
        return f"in [{ge}, {lt})"
    if ge is not None and le is not None:
        return f"in [{ge}, {le}]"
    if gt is not None and le is not None:
        return f"in ({gt}, {le}]"
    if gt is not None and lt is not None:
        return f"in ({gt}, {lt})"
    parts = [f"{op} {v}" for op, v in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if v is not None]
    return " and ".join(parts)


def check_int(obj: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """The field ``name`` of ``obj`` must be an ``int`` (not a bool) in ``[minimum, maximum]``.

    Raises ``ConfigTypeError`` for a non-int and ``ValueError`` for an int out of range.
    """
    value = getattr(obj, name)
    bounds = _bound_text(ge=minimum, le=maximum)
    what = "a positive int" if (minimum, maximum) == (1, None) else "an int" + (f" {bounds}" if bounds else "")
    fix = "pass an int" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, int):
        config_error(obj, name, what, fix, exc=ConfigTypeError)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        config_error(obj, name, what, fix)
    return value


def check_number(obj: Any, name: str, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None) -> float:
    """The field ``name`` of ``obj`` must be a finite real number (int or float, not a bool)
    within the given bounds: ``gt``/``ge`` below (exclusive/inclusive), ``lt``/``le`` above.

    Raises ``ConfigTypeError`` for a non-number and ``ValueError`` for NaN, inf or out of range.
    """
    value = getattr(obj, name)
    bounds = _bound_text(gt, ge, lt, le)
    what = "a finite number" + (f" {bounds}" if bounds else "")
    fix = f"pass a number {bounds}" if bounds else "pass a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        config_error(obj, name, what, fix, exc=ConfigTypeError)
    if (not math.isfinite(value) or (gt is not None and not value > gt) or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt) or (le is not None and not value <= le)):
        config_error(obj, name, what, fix)
    return value


def check_bool(obj: Any, name: str) -> bool:
    """The field ``name`` of ``obj`` must be ``True`` or ``False`` (JSON ``true``/``false``)."""
    value = getattr(obj, name)
    if not isinstance(value, bool):
        config_error(obj, name, "true or false", "pass true or false", exc=ConfigTypeError)
    return value


def check_choice(obj: Any, name: str, choices: Collection[Any]) -> Any:
    """The field ``name`` of ``obj`` must be one of ``choices`` (listed sorted in the message)."""
    value = getattr(obj, name)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set
        ok = False
    if not ok:
        listed = sorted(choices, key=str)
        config_error(obj, name, f"one of {listed}", None)
    return value


def check_nested(obj: Any, name: str, what: str, build: Callable[[dict], Any], example: str) -> Any:
    """The field ``name`` of ``obj`` must be a dict of the fields of a nested config that
    ``build(dict)`` accepts; returns what ``build`` returns.

    Args:
        what: the nested config's name for messages, e.g. ``"LSTMOptimizerConfig"``.
        build: makes the nested config from the dict; its ``KeyError``/``TypeError``/``ValueError``
            becomes a ``ValueError`` naming the outer field.
        example: a valid value for the message, e.g. ``'{"hidden_size": 4}'``.
    """
    value = getattr(obj, name)
    if not isinstance(value, dict):
        config_error(obj, name, f"a dict of {what} fields", f"pass e.g. {example}", exc=ConfigTypeError)
    try:
        return build(value)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{type(obj).__name__}.{name} is not a valid {what}: {e}") from None


def from_dict(cls: type, d: Any, what: str | None = None) -> Any:
    """``cls(**d)`` for a dataclass ``cls``, refusing anything but a dict of its field names.

    Args:
        cls: the config dataclass.
        d: the fields (e.g. parsed JSON).
        what: how messages call the config. Default the class name.
    Raises:
        TypeError: ``d`` is not a dict.
        ValueError: ``d`` has keys that are not fields of ``cls`` (the message lists the known ones).
    """
    what = what or cls.__name__
    if not isinstance(d, dict):
        raise TypeError(f"a {what} must be a JSON object (dict) of its fields, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known fields: {sorted(names)}")
    return cls(**d)
