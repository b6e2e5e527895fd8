"""The one private fit path shared by spred's linear estimators and path functions.

Like skglm's ``_glm_fit``: build the datafit (squared / logistic / multinomial) and
the penalty (L1 / group), run a solver from :mod:`._solvers`, and hand back plain
NumPy results. The functions read no estimator state except the parameters passed in;
:class:`SpredLinearMixin` holds what the two estimators share (parameter constraints,
the minibatch wiring).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from sklearn.utils import check_random_state

from spred._validation import Integral, Interval, Real, StrOptions
from ._groups import check_group_weights, check_groups
from ._solvers import (
    GroupPenalty,
    L1Penalty,
    LogisticDatafit,
    MinibatchState,
    MultinomialDatafit,
    QuadraticDatafit,
    decide_zeros,
    lasso_dual_gap,
    solve_ws,
)

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


def _column_means(X):
    return np.asarray(X.mean(axis=0)).ravel()


def make_datafit(loss, X, y, fit_intercept):
    """Datafit for ``loss`` on validated data.

    For ``loss="squared"`` the intercept is handled by centring (implicitly for
    sparse ``X``): returns ``(datafit, X_offset, y_offset)``. For the logistic losses
    ``y`` must already be encoded (0/1 vector, or an integer class vector for
    ``"multinomial"``) and the intercept is a solver variable.
    """
    if loss == "squared":
        y = np.asarray(y, dtype=np.float64)
        if fit_intercept:
            X_offset = _column_means(X)
            y_offset = float(y.mean())
            return QuadraticDatafit(X, y - y_offset, X_offset), X_offset, y_offset
        return QuadraticDatafit(X, y, None), None, 0.0
    if loss == "logistic":
        return LogisticDatafit(X, np.asarray(y, dtype=np.float64), fit_intercept), None, 0.0
    if loss == "multinomial":
        y = np.asarray(y, dtype=np.int64)
        K = int(y.max()) + 1
        Y = np.zeros((y.size, K))
        Y[np.arange(y.size), y] = 1.0
        return MultinomialDatafit(X, Y, fit_intercept), None, 0.0
    raise ValueError(f"Unknown loss {loss!r}.")  # pragma: no cover - validated upstream


def make_penalty(alpha, n_features, n_outputs, groups, group_weights):
    """L1 penalty, or group penalty when ``groups`` is given.

    Returns ``(penalty, group_spec)`` with ``group_spec = (grp_ptr, grp_indices,
    weights)`` or ``None``.
    """
    if groups is None:
        return L1Penalty(alpha, n_features, n_outputs), None
    if n_outputs != 1:
        raise ValueError(
            "groups is only supported for the squared and the binary logistic loss; "
            f"got {n_outputs} classes. Use groups=None (elementwise L1) for "
            "multinomial models."
        )
    grp_indices, grp_ptr = check_groups(groups, n_features)
    weights = check_group_weights(group_weights, grp_ptr)
    return GroupPenalty(alpha, grp_ptr, grp_indices, weights), (grp_ptr, grp_indices, weights)


def compute_alpha_max(datafit, penalty):
    """Smallest ``alpha`` for which all coefficients are zero (intercept optimal)."""
    m = datafit.p * datafit.n_outputs
    _, g, _ = datafit.fg(np.zeros(m), datafit.init_intercept())
    return penalty.dual_norm(g)


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

    Returns a list of :class:`~._solvers.SolverResult`.
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
            f"{name} did not converge after {res.n_iter} L-BFGS iterations "
            f"(KKT criterion {res.crit:.2e} > tol {tol:.1e}). Increase max_iter, "
            "scale the features (StandardScaler), or increase alpha.",
            ConvergenceWarning,
            stacklevel=4,  # fit_full_batch <- fit <- sklearn's _fit_context <- caller
        )
    out = {"coef": res.coef, "n_iter": res.n_iter, "crit": res.crit, "alpha_max": amax,
           "dual_gap": None}
    if loss == "squared":
        out["intercept"] = (y_offset - X_offset @ res.coef) if fit_intercept else 0.0
        out["dual_gap"] = lasso_dual_gap(datafit, penalty, res.coef)
    else:
        out["intercept"] = res.intercept if res.intercept is not None else np.zeros(datafit.n_outputs)
    return out


def _check_finite(name, coef):
    if not np.all(np.isfinite(coef)):
        raise FloatingPointError(
            f"{name} produced non-finite coefficients. Scale the features "
            "(e.g. StandardScaler) or increase alpha."
        )


def minibatch_grad(loss, X, y, coef, intercept):
    """Gradient of the mean loss w.r.t. the coefficients on ``(X, y)``, NumPy."""
    Z = X @ coef.reshape(X.shape[1], -1) + intercept
    n = X.shape[0]
    if loss == "squared":
        D = Z - np.asarray(y, float)[:, None]
    elif loss == "logistic":
        D = 1.0 / (1.0 + np.exp(-Z)) - np.asarray(y, float)[:, None]
    else:
        Z = Z - Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(axis=1, keepdims=True)
        D = P
        D[np.arange(n), np.asarray(y, dtype=np.int64)] -= 1.0
    G = np.asarray(X.T @ D) / n
    return G


def _objective(loss, X, y, coef, intercept, penalty_value):
    Z = X @ coef + intercept
    if loss == "squared":
        r = Z[:, 0] - y
        return 0.5 * float(r @ r) / X.shape[0] + penalty_value
    if loss == "logistic":
        z = Z[:, 0]
        return float(np.mean(np.logaddexp(0.0, z) - y * z)) + penalty_value
    Zm = Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z - Zm).sum(axis=1)) + Zm[:, 0]
    return float(np.mean(lse - Z[np.arange(X.shape[0]), np.asarray(y, dtype=np.int64)])) + penalty_value


def fit_minibatch(name, X, y, *, loss, n_outputs, alpha, fit_intercept, groups, group_weights,
                  solver, learning_rate, batch_size, max_epochs, tol, threshold, random_state,
                  state=None, n_iter_no_change=5, polish=False, polish_max_iter=200, streaming=False):
    """Run (or continue) the minibatch spred solver.

    Runs up to ``max_epochs`` epochs of minibatch steps; stops early when the
    objective on ``(X, y)`` has not improved by more than ``tol`` (relative) for
    ``n_iter_no_change`` epochs (pass ``tol=None`` to run all epochs). Returns
    ``(state, coef, intercept, n_epochs)`` where ``coef`` has exact zeros decided by
    :func:`~._solvers.decide_zeros` (threshold plus KKT with the gradient on ``(X, y)``,
    or, with ``streaming=True`` (``partial_fit``), the running minibatch average). With
    ``polish=True`` (the full data is in memory, as in ``fit``) the minibatch solution
    then warm-starts the working-set solver on ``(X, y)`` for at most
    ``polish_max_iter`` L-BFGS iterations, which makes the zeros exact and the KKT
    conditions hold to ``tol`` (in the units of the full-batch solver).
    """
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if loss != "multinomial":
        y = y.astype(np.float64)
    p = X.shape[1]
    if state is None:
        _, group_spec = make_penalty(alpha, p, n_outputs, groups, group_weights)
        if loss == "squared":
            b0 = np.array([np.mean(y)]) if fit_intercept else None
        elif loss == "logistic":
            m = np.clip(np.mean(y), 1e-6, 1 - 1e-6)
            b0 = np.array([np.log(m / (1 - m))]) if fit_intercept else None
        else:
            b0 = None
        seed = random_state.randint(np.iinfo(np.int32).max)
        state = MinibatchState(p, n_outputs, loss=loss, alpha=alpha, optimizer=solver,
                               learning_rate=learning_rate, fit_intercept=fit_intercept,
                               groups=group_spec, intercept_init=b0, seed=seed)
        state.group_spec = group_spec
    bs = batch_size if batch_size is not None else min(256, X.shape[0])
    Xt, yt = state.to_tensors(X, y)
    best, stall, epochs = np.inf, 0, 0
    for _ in range(max_epochs):
        state.run(Xt, yt, n_epochs=1, batch_size=bs)
        epochs += 1
        if tol is None:
            continue
        v = state.coef()
        with np.errstate(over="ignore", invalid="ignore"):
            pen = alpha * float(np.abs(v).sum())
            obj = _objective(loss, X, y, v, state.intercept(), pen)
        if obj < best - tol * max(abs(best), 1e-12) or not np.isfinite(best):
            best, stall = obj, 0
        else:
            stall += 1
            if stall >= n_iter_no_change:
                break
    v = state.coef()  # (p, K)
    b = state.intercept()
    _check_finite(name, v)
    G = state.grad_estimate() if streaming else None  # streaming: the running average over chunks
    if G is None or X.shape[0] >= state.GRAD_HORIZON:
        G = minibatch_grad(loss, X, y, v, b)  # all the data given, at the final iterate
    thr = threshold if threshold != "auto" else 1e-3 * (np.abs(v).max() if v.size else 0.0)
    if state.group_spec is None:
        v = decide_zeros(v, G, alpha, thr)
    else:
        grp_ptr, grp_idx, weights = state.group_spec
        nv = np.sqrt(np.add.reduceat(v[grp_idx, 0] ** 2, grp_ptr[:-1]))
        ng = np.sqrt(np.add.reduceat(G[grp_idx, 0] ** 2, grp_ptr[:-1]))
        zero = (nv <= thr) & (ng <= alpha * weights)
        mask = np.repeat(zero, np.diff(grp_ptr))
        v = v.copy()
        v[grp_idx[mask], 0] = 0.0
    if polish:
        datafit, X_offset, y_offset = make_datafit(loss, X, y, fit_intercept)
        penalty, _ = make_penalty(alpha, p, n_outputs, groups, group_weights)
        amax = compute_alpha_max(datafit, penalty)
        b_init = None if loss == "squared" or not fit_intercept else b
        res = solve_ws(datafit, penalty, coef_init=v.ravel(), intercept_init=b_init,
                       alpha_max=amax, tol=tol if tol else 1e-4, max_iter=polish_max_iter)
        v = res.coef.reshape(p, n_outputs)
        if loss == "squared":
            b = np.array([y_offset - X_offset @ v[:, 0]]) if fit_intercept else b
        elif fit_intercept:
            b = np.asarray(res.intercept, dtype=np.float64).ravel()
    return state, v, b, epochs
