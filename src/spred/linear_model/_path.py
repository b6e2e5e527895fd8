"""Regularisation paths and ``alpha_max`` (function first; the estimators reuse them)."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import column_or_1d

from spred._validation import Integral, Interval, Real, StrOptions, validate_params
from ._base import compute_alpha_max, encode_classes, make_datafit, make_penalty, path_core

logger = logging.getLogger(__name__)

__all__ = ["alpha_max", "spred_path"]

_COMMON = {
    "X": ["array-like", "sparse matrix"],
    "y": ["array-like"],
    "loss": [StrOptions({"squared", "logistic"})],
    "fit_intercept": ["boolean"],
    "groups": [None, Interval(Integral, 1, None, closed="left"), list, tuple, np.ndarray],
    "group_weights": [None, StrOptions({"sqrt_size"}), "array-like"],
}


def _prepare(X, y, loss, fit_intercept):
    X = check_array(X, accept_sparse=["csr", "csc"], dtype=np.float64)
    y = column_or_1d(y, warn=True)
    check_consistent_length(X, y)
    if loss == "squared":
        y = check_array(y, ensure_2d=False, dtype=np.float64)
        datafit, _, _ = make_datafit("squared", X, y, fit_intercept)
        return datafit, None
    target = type_of_target(y, input_name="y")
    if target not in ("binary", "multiclass"):
        raise ValueError(
            f"loss='logistic' needs class labels, but y is of type {target!r} "
            "(sklearn.utils.multiclass.type_of_target). Use loss='squared' for a "
            "continuous target, or encode the classes as integers or strings."
        )
    classes, y_enc = encode_classes(y)
    if classes.size == 2:
        datafit, _, _ = make_datafit("logistic", X, y_enc, fit_intercept)
    else:
        datafit, _, _ = make_datafit("multinomial", X, y_enc, fit_intercept)
    return datafit, classes


@validate_params(_COMMON, prefer_skip_nested_validation=True)
def alpha_max(X, y, *, loss="squared", fit_intercept=True, groups=None, group_weights=None):
    """Smallest ``alpha`` for which every coefficient is zero.

    For the squared loss (``SpredLasso``'s objective
    ``(1/(2n)) ||y - Xw - b||^2 + alpha ||w||_1``) this is
    ``max_j |x_j' (y - mean(y))| / n`` with centred columns when ``fit_intercept``;
    for the mean logistic loss it is ``max_j |x_j' (p0 - y)| / n`` with ``p0`` the
    optimal constant prediction; for groups the maximum is of
    ``||X_g' r|| / (n * weight_g)``.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Training data.
    y : array-like of shape (n_samples,)
        Targets (``loss="squared"``) or class labels (``loss="logistic"``).
    loss : {"squared", "logistic"}, default="squared"
        Data-fitting term. ``"logistic"`` with more than two classes is multinomial.
    fit_intercept : bool, default=True
        Whether an (unpenalised) intercept is fitted.
    groups : int, list of int or list of list of int, default=None
        Penalty groups (see :class:`SpredLasso`); ``None`` for the elementwise L1.
    group_weights : None, "sqrt_size" or array-like of shape (n_groups,), default=None
        Per-group penalty weights.

    Returns
    -------
    alpha_max : float
        The smallest regularisation giving the all-zero solution.
    """
    datafit, _ = _prepare(X, y, loss, fit_intercept)
    penalty, _ = make_penalty(1.0, datafit.p, datafit.n_outputs, groups, group_weights)
    return compute_alpha_max(datafit, penalty)


@validate_params(
    {
        **_COMMON,
        "alphas": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "eps": [Interval(Real, 0, None, closed="neither")],
        "coef_init": [None, "array-like"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def spred_path(X, y, *, loss="squared", alphas=100, eps=1e-3, fit_intercept=False,
               groups=None, group_weights=None, coef_init=None, tol=1e-4, max_iter=1000,
               verbose=0):
    """Compute a spred regularisation path with warm starts (like ``lasso_path``).

    Each point minimises, for the squared loss,
    ``(1/(2n)) ||y - Xw||^2 + alpha * ||w||_1`` (exactly scikit-learn's Lasso), or
    ``mean log-loss + alpha * ||w||_1`` for ``loss="logistic"``; with ``groups``
    the penalty is ``alpha * sum_g weight_g ||w_g||_2``. The solver is the
    working-set L-BFGS on the spred factors ``w = u * v`` followed by an exact polish
    (see :class:`SpredLasso`); each alpha is warm-started from the previous one.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Training data.
    y : array-like of shape (n_samples,)
        Targets or class labels.
    loss : {"squared", "logistic"}, default="squared"
        Data-fitting term. ``"logistic"`` with more than two classes is multinomial.
    alphas : int or array-like, default=100
        Number of alphas on a geometric grid from ``alpha_max`` down to
        ``eps * alpha_max``, or the alphas themselves (sorted decreasingly).
    eps : float, default=1e-3
        Length of the grid, ``alpha_min / alpha_max``.
    fit_intercept : bool, default=False
        Whether to fit an unpenalised intercept (as ``lasso_path``, the default
        fits none: centre the data first). The intercepts are not returned; use the
        estimators to obtain them.
    groups : int, list of int or list of list of int, default=None
        Penalty groups (squared or binary logistic loss only).
    group_weights : None, "sqrt_size" or array-like, default=None
        Per-group weights (default 1).
    coef_init : array-like of shape (n_features,) or (n_classes, n_features), default=None
        Initial coefficients for the first alpha.
    tol : float, default=1e-4
        Stopping tolerance on the scaled KKT residual (see :class:`SpredLasso`).
    max_iter : int, default=1000
        Maximum number of iterations per alpha (L-BFGS iterations plus the Newton
        solves of the exact search, see ``SpredLasso.n_iter_``).
    verbose : int, default=0
        Log progress at INFO level to the ``"spred.linear_model"`` loggers (children of ``"spred"``).

    Returns
    -------
    alphas : ndarray of shape (n_alphas,)
        The alphas, decreasing.
    coefs : ndarray of shape (n_features, n_alphas) or (n_classes, n_features, n_alphas)
        Coefficients along the path (the second shape for multinomial models).
    n_iters : ndarray of shape (n_alphas,)
        Iterations used for each alpha (as ``SpredLasso.n_iter_``).
    """
    datafit, classes = _prepare(X, y, loss, fit_intercept)
    penalty, _ = make_penalty(1.0, datafit.p, datafit.n_outputs, groups, group_weights)
    amax = compute_alpha_max(datafit, penalty)
    if isinstance(alphas, Integral):
        top = amax if amax > 0 else 1.0
        alphas = np.geomspace(top, top * eps, num=int(alphas))
    else:
        alphas = np.sort(np.asarray(alphas, dtype=np.float64).ravel())[::-1]
        if alphas.size == 0 or np.any(alphas < 0) or not np.all(np.isfinite(alphas)):
            raise ValueError(
                "alphas must be a non-empty array of finite non-negative values. "
                f"Got {alphas!r}."
            )
    K = datafit.n_outputs
    init = None
    if coef_init is not None:
        init = np.asarray(coef_init, dtype=np.float64)
        expected = (datafit.p,) if K == 1 else (K, datafit.p)
        if init.shape != expected:
            raise ValueError(f"coef_init has shape {init.shape}; expected {expected}.")
        init = init.T.ravel() if K > 1 else init.ravel()
    results = path_core(datafit, penalty, alphas, alpha_max=amax, coef_init=init,
                        tol=tol, max_iter=max_iter, verbose=verbose)
    if K == 1:
        coefs = np.stack([r.coef for r in results], axis=-1)
    else:
        coefs = np.stack([r.coef.T for r in results], axis=-1)
    n_iters = np.array([r.n_iter for r in results])
    return alphas, coefs, n_iters
