"""Parameter validation for spred's scikit-learn estimators.

This is the only module of spred that imports scikit-learn's private
``sklearn.utils._param_validation``; every estimator and public function of
:mod:`spred.linear_model` (and later :mod:`spred.feature_selection`) imports the
constraint classes and helpers from here, so that a change in scikit-learn's
private API is fixed in one place. ``spred.nn`` does not use this module.

The messages are scikit-learn's own, e.g. ``"The 'alpha' parameter of SpredLasso
must be a float in the range [0, inf). Got -1 instead."``, raised as
``InvalidParameterError`` (a subclass of both ``ValueError`` and ``TypeError``).
"""

from __future__ import annotations

from numbers import Integral, Real

from sklearn.utils._param_validation import (  # noqa: F401  (re-exported)
    Hidden,
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)

__all__ = [
    "Hidden",
    "Integral",
    "Interval",
    "InvalidParameterError",
    "Options",
    "Real",
    "StrOptions",
    "check_params",
    "validate_params",
]


def check_params(estimator) -> None:
    """Validate the constructor parameters of ``estimator`` against its constraints.

    Parameters
    ----------
    estimator : BaseEstimator
        An estimator with a ``_parameter_constraints`` class attribute (a dict
        mapping parameter names to lists of scikit-learn constraints).

    Raises
    ------
    InvalidParameterError
        If a parameter violates its constraints. The message names the parameter,
        the estimator, what was expected and what was received.
    """
    validate_parameter_constraints(
        estimator._parameter_constraints,
        estimator.get_params(deep=False),
        caller_name=type(estimator).__name__,
    )
