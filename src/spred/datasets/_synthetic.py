"""Synthetic Lasso problems: orthogonal designs, whose Lasso solution is known in closed form.

For a design with ``X^T X / n = I`` the minimiser of scikit-learn's objective
``(1/(2n))||y - Xv||^2 + alpha*||v||_1`` is ``soft_threshold(X^T y / n, alpha)``;
``spred run lasso``, ``spred demo`` and the tests compare spred against it.

``random_state`` follows scikit-learn's convention: None, an int seed, or a
generator; here a :class:`numpy.random.Generator` (or anything
:func:`numpy.random.default_rng` accepts, such as a sequence of ints), or a legacy
:class:`numpy.random.RandomState`, from which one seed is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spred._validation import check_bool, check_float, check_int, param_error

__all__ = ["make_orthogonal_design", "make_sparse_target"]


def _generator(random_state: Any, who: str) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**32, dtype=np.uint64))
    if isinstance(random_state, bool):
        raise param_error(TypeError, "random_state", who, "None, an int >= 0, a sequence of ints or a numpy Generator", random_state)
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError) as exc:
        kind = ValueError if isinstance(exc, ValueError) else TypeError
        raise param_error(kind, "random_state", who, "None, an int >= 0, a sequence of ints or a numpy Generator", random_state) from exc


def make_orthogonal_design(n_samples: int = 200, n_features: int = 100, *, center: bool = False, random_state=None) -> np.ndarray:
    """A random design ``X`` with ``X^T X / n = I`` (exactly, up to rounding).

    ``sqrt(n) * Q`` for the Q factor (signs fixed by ``R``'s diagonal) of an
    ``(n_samples, n_features)`` standard Gaussian matrix.

    Parameters
    ----------
    n_samples, n_features : int
        ``n_samples >= n_features`` (``n_samples > n_features`` with ``center``).
    center : bool, default=False
        Centre the Gaussian matrix's columns first: the columns of ``X`` then have mean
        zero, so a model with an intercept has the same closed form (on ``y - mean(y)``).
    random_state : None, int, sequence of ints, numpy Generator or RandomState

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from spred.datasets import make_orthogonal_design
    >>> X = make_orthogonal_design(50, 5, random_state=0)
    >>> bool(np.allclose(X.T @ X / 50, np.eye(5)))
    True
    """
    who = "make_orthogonal_design"
    n_samples = check_int(n_samples, "n_samples", who, 1)
    n_features = check_int(n_features, "n_features", who, 1)
    center = check_bool(center, "center", who)
    if n_samples < n_features + (1 if center else 0):
        raise param_error(ValueError, "n_samples", who, f"an int >= n_features{' + 1 (centred)' if center else ''} = {n_features + (1 if center else 0)}", n_samples)
    gaussian = _generator(random_state, who).standard_normal((n_samples, n_features))
    if center:
        gaussian -= gaussian.mean(axis=0)
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r)) * math.sqrt(n_samples)


def make_sparse_target(
    X: np.ndarray,
    n_informative: int = 10,
    *,
    coef: Sequence[float] | np.ndarray | None = None,
    coef_range: tuple[float, float] = (0.2, 0.6),
    noise: float = 0.25,
    random_state=None,
) -> tuple[np.ndarray, np.ndarray]:
    """A sparse linear response ``y = X coef + noise * N(0, 1)`` and its coefficients.

    Unless ``coef`` is given, ``n_informative`` coordinates (chosen without
    replacement) get random signs and magnitudes uniform in ``coef_range``; the rest
    are zero. The draws are, in order: the support, the signs, the magnitudes, the noise.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    n_informative : int, default=10
        Ignored when ``coef`` is given.
    coef : array-like of shape (n_features,), optional
        Fixed true coefficients (then only the noise is random).
    coef_range : (float, float), default=(0.2, 0.6)
        ``0 < low <= high``.
    noise : float, default=0.25
        Standard deviation of the Gaussian noise.
    random_state : None, int, sequence of ints, numpy Generator or RandomState

    Returns
    -------
    y : ndarray of shape (n_samples,)
    coef : ndarray of shape (n_features,)

    Examples
    --------
    >>> import numpy as np
    >>> from spred.datasets import make_orthogonal_design, make_sparse_target
    >>> X = make_orthogonal_design(50, 8, random_state=0)
    >>> y, coef = make_sparse_target(X, 3, noise=0.0, random_state=1)
    >>> int((coef != 0).sum()), bool(np.allclose(y, X @ coef))
    (3, True)
    """
    who = "make_sparse_target"
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise param_error(ValueError, "X", who, "a 2-d array", f"an array of shape {X.shape}")
    n_samples, n_features = X.shape
    noise = check_float(noise, "noise", who, 0.0)
    rng = _generator(random_state, who)
    if coef is None:
        n_informative = check_int(n_informative, "n_informative", who, 0, n_features)
        if not isinstance(coef_range, Sequence) or len(coef_range) != 2:
            raise param_error(TypeError, "coef_range", who, "a pair (low, high) with 0 < low <= high", coef_range)
        low = check_float(coef_range[0], "coef_range", who, 0.0, low_open=True)
        high = check_float(coef_range[1], "coef_range", who, low)
        coef = np.zeros(n_features)
        support = rng.choice(n_features, n_informative, replace=False)
        coef[support] = rng.choice([-1.0, 1.0], n_informative) * rng.uniform(low, high, n_informative)
    else:
        coef = np.array(coef, dtype=float)
        if coef.shape != (n_features,):
            raise param_error(ValueError, "coef", who, f"an array of shape ({n_features},)", f"an array of shape {coef.shape}")
    y = X @ coef + noise * rng.standard_normal(n_samples)
    return y, coef
