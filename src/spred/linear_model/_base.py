"""The one private fit path shared by spred's linear estimators and path functions.

Like skglm's ``_glm_fit``: build the datafit (:mod:`._datafits`: squared / logistic /
multinomial) and the penalty (:mod:`._penalties`: L1 / group), run a solver
(:mod:`._working_set` full batch, :mod:`._minibatch` SGD / Adam / Adagrad), and hand
back plain NumPy results. The functions read no estimator state except the
parameters passed in; :class:`SpredLinearMixin` holds what the two estimators share
(parameter constraints, the minibatch wiring).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from spred._validation import Integral, Interval, Real, StrOptions
from ._datafits import make_datafit
from ._minibatch import fit_minibatch
from ._penalties import make_penalty
from ._working_set import compute_alpha_max, lasso_dual_gap, solve_ws

logger = logging.getLogger(__name__)

__all__ = ["MINIBATCH_SOLVERS", "SpredLinearMixin", "compute_alpha_max", "encode_classes",
           "fit_full_batch", "is_stochastic", "make_datafit", "make_penalty", "path_core"]

MINIBATCH_SOLVERS = ("sgd", "adam", "adagrad")


def is_stochastic(est):
    """``available_if`` check of ``partial_fit``: only the minibatch solvers stream."""
    if est.solver not in MINIBATCH_SOLVERS:
        raise AttributeError(
            f"partial_fit is only available for the minibatch solvers {MINIBATCH_SOLVERS}; "
            f"solver={est.solver!r} is a full-batch solver."
        )
    return True


class SpredLinearMixin:
    """What SpredLasso and SpredLogisticRegression share: parameters and minibatch wiring."""

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "fit_intercept": ["boolean"],
        "groups": [None, Interval(Integral, 1, None, closed="left"), list, tuple, np.ndarray],
        "group_weights": [None, StrOptions({"sqrt_size"}), "array-like"],
        "solver": [StrOptions({"lbfgs", *MINIBATCH_SOLVERS})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [None, Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "threshold": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def _run_minibatch(self, X, y, *, loss, n_outputs, max_epochs, tol, streaming=False):
        """Run (``streaming=True``: ``partial_fit``, continue) the minibatch solver; set the
        solver attributes and return ``(coef (p, K), intercept (K,))``."""
        state, coef, intercept, epochs = fit_minibatch(
            type(self).__name__, X, y, loss=loss, n_outputs=n_outputs, alpha=self.alpha,
            fit_intercept=self.fit_intercept, groups=self.groups,
            group_weights=self.group_weights, solver=self.solver,
            learning_rate=self.learning_rate, batch_size=self.batch_size,
            max_epochs=max_epochs, tol=tol, threshold=self.threshold,
            random_state=check_random_state(self.random_state),
            state=getattr(self, "_minibatch_state", None), polish=not streaming, streaming=streaming)
        self._minibatch_state = state
        # partial_fit counts the epochs seen so far; fit the epochs of this call
        self.n_iter_ = int(getattr(self, "n_iter_", 0) + epochs) if streaming else int(epochs)
        self.stop_crit_ = float("nan")
        self.alpha_max_ = float("nan")
        return coef, intercept


def encode_classes(y):
    """``classes_`` and the integer-encoded targets; at least two classes."""
    classes, y_enc = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(
            "This solver needs samples of at least 2 classes in the data, but the "
            f"data contains only one class: {classes[0]!r}."
        )
    return classes, y_enc


def path_core(datafit, penalty, alphas, *, alpha_max, coef_init=None, intercept_init=None,
              tol=1e-4, max_iter=1000, verbose=0):
    """Solve for each ``alpha`` in ``alphas`` (in order), warm-starting each from the last.

    Returns a list of :class:`~._working_set.SolverResult`.
    """
    results = []
    coef, intercept = coef_init, intercept_init
    for a in alphas:
        penalty.alpha = float(a)
        res = solve_ws(datafit, penalty, coef_init=coef, intercept_init=intercept,
                       alpha_max=alpha_max, tol=tol, max_iter=max_iter, verbose=verbose)
        results.append(res)
        coef, intercept = res.coef, res.intercept
    return results


def fit_full_batch(name, X, y, *, loss, alpha, fit_intercept, groups, group_weights, tol,
                   max_iter, verbose, coef_init=None, intercept_init=None):
    """Fit one model with the working-set spred solver; warns if not converged.

    Returns a dict with ``coef`` ((n_features,) or (n_features, K)), ``intercept``
    (float or (K,)), ``n_iter``, ``crit``, ``dual_gap`` (squared loss) and
    ``alpha_max``.
    """
    datafit, X_offset, y_offset = make_datafit(loss, X, y, fit_intercept)
    penalty, _ = make_penalty(alpha, datafit.p, datafit.n_outputs, groups, group_weights)
    amax = compute_alpha_max(datafit, penalty)
    (res,) = path_core(datafit, penalty, [alpha], alpha_max=amax, coef_init=coef_init,
                       intercept_init=intercept_init, tol=tol, max_iter=max_iter,
                       verbose=verbose)
    _check_finite(name, res.coef)
    if not res.converged:
        warnings.warn(
            f"{name} did not converge after {res.n_iter} iterations "
            f"(KKT criterion {res.crit:.2e} > tol {tol:.1e}). Increase max_iter, "
            "scale the features (StandardScaler), or increase alpha.",
            ConvergenceWarning,
            stacklevel=4,  # fit_full_batch <- fit <- sklearn's _fit_context <- caller
        )
    out = {"coef": res.coef, "n_iter": res.n_iter, "crit": res.crit, "alpha_max": amax,
           "dual_gap": None}
    if loss == "squared":
        out["intercept"] = (y_offset - X_offset @ res.coef) if fit_intercept else 0.0
        out["dual_gap"] = lasso_dual_gap(datafit, penalty, res.coef, grad=res.grad)
    else:
        out["intercept"] = res.intercept if res.intercept is not None else np.zeros(datafit.n_outputs)
    return out


def _check_finite(name, coef):
    if not np.all(np.isfinite(coef)):
        raise FloatingPointError(
            f"{name} produced non-finite coefficients. Scale the features "
            "(e.g. StandardScaler) or increase alpha."
        )
