"""Input validation for all of spred: one set of checkers and one message format.

Every public function, estimator, config and CLI command validates through here, so a
user sees the same kind of message everywhere::

    The 'lam' parameter of sparsify must be a float in the range [0, inf). Got -0.1 instead.

A wrong *type* raises ``TypeError``, a wrong *value* ``ValueError`` (torch's and
scikit-learn's split); the message names the parameter, the caller, what was expected
and what was received. The plain checkers import nothing beyond the standard library,
so ``spred.nn`` (torch only) can use them. The scikit-learn bridge (``check_params``
and the constraint classes ``Interval``, ``StrOptions``, ...) is loaded on first use
from scikit-learn's private ``_param_validation``, the only place spred touches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

__all__ = [
    "Integral",
    "Real",
    "check_bool",
    "check_choice",
    "check_choices",
    "check_float",
    "check_int",
    "check_params",
    "param_error",
]


def _got(value: Any, kind: type[Exception]) -> str:
    return f"{value!r} of type {type(value).__name__}" if kind is TypeError else repr(value)


def param_error(kind: type[Exception], name: str, who: str, expected: str, value: Any) -> Exception:
    """The one message format: ``The 'name' parameter of who must be expected. Got value instead.``"""
    return kind(f"The '{name}' parameter of {who} must be {expected}. Got {_got(value, kind)} instead.")


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    fmt = lambda x: "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    return f"{'(' if lo_open or lo == -math.inf else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open or hi == math.inf else ']'}"


def check_int(value: Any, name: str, who: str, low: int | None = None, high: int | None = None, *, optional: bool = False) -> int | None:
    """An int (not a bool) in ``[low, high]``; ``None`` passes when ``optional``."""
    if optional and value is None:
        return None
    if low is not None and high is not None:
        expected = f"an int in the range [{low}, {high}]"
    elif low is not None:
        expected = f"an int >= {low}"
    elif high is not None:
        expected = f"an int <= {high}"
    else:
        expected = "an int"
    if optional:
        expected += " or None"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise param_error(TypeError, name, who, expected, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise param_error(ValueError, name, who, expected, value)
    return int(value)


def check_float(
    value: Any,
    name: str,
    who: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """A finite real number (not a bool, not NaN) in the interval ``low..high``.

    ``low_open`` / ``high_open`` exclude the end points; an infinite end is always open,
    so the default accepts every finite float. ``None`` passes when ``optional``.
    """
    if optional and value is None:
        return None
    expected = f"a float in the range {_interval(low, high, low_open, high_open)}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise param_error(TypeError, name, who, expected, value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise param_error(ValueError, name, who, expected, value)
    return float(value)


def check_bool(value: Any, name: str, who: str) -> bool:
    """A real ``bool`` (``0``/``1`` and strings are refused: they hide typos)."""
    if not isinstance(value, bool):
        raise param_error(TypeError, name, who, "a bool", value)
    return value


def check_choice(value: Any, name: str, who: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in tuple(choices):
        raise param_error(ValueError, name, who, f"one of {tuple(choices)!r}", value)
    return value


def check_choices(values: Any, name: str, who: str, choices: Sequence[Any], *, distinct: bool = True) -> tuple:
    """A non-empty sequence (not a string) of values from ``choices``; distinct unless told."""
    expected = f"a non-empty tuple of {'distinct ' if distinct else ''}values from {tuple(choices)!r}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise param_error(TypeError, name, who, expected, values)
    if any(v not in tuple(choices) for v in values) or (distinct and len(set(values)) != len(values)):
        raise param_error(ValueError, name, who, expected, tuple(values))
    return tuple(values)


# ----------------------------------------------------------------- the scikit-learn bridge

_SKLEARN_NAMES = ("Hidden", "Interval", "InvalidParameterError", "Options", "StrOptions", "validate_parameter_constraints", "validate_params")


def __getattr__(name: str):  # PEP 562: scikit-learn is imported only when an estimator needs it
    if name in _SKLEARN_NAMES:
        from sklearn.utils import _param_validation

        return getattr(_param_validation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_params(estimator) -> None:
    """Validate an estimator's constructor parameters against its ``_parameter_constraints``.

    The messages are scikit-learn's (``"The 'alpha' parameter of SpredLasso must be a
    float in the range [0, inf). Got -1 instead."``), raised as ``InvalidParameterError``
    (a subclass of both ``ValueError`` and ``TypeError``).
    """
    from sklearn.utils._param_validation import validate_parameter_constraints

    validate_parameter_constraints(estimator._parameter_constraints, estimator.get_params(deep=False), caller_name=type(estimator).__name__)
