"""The working-set spred solver (full batch, NumPy/SciPy): :func:`solve_ws`.

Apart from small problems (below), the solver here uses *sparsity by redundancy*: a
sparse vector ``v`` is written ``v = u * w`` (or ``v_g = s_g * w_g`` for penalty groups) and the smooth
objective

    F(u, w) = L(u * w) + (alpha / 2) * (||u||^2 + ||w||^2)

is minimised; at a minimiser ``|u| = |w|`` and ``F = L(v) + alpha * ||v||_1``.

1. *Working set.* Start from the features with the largest KKT violation at the
   current point (at ``v = 0``: the largest ``|grad L|``; ``p0 = 30`` of them), plus
   the current support; later working sets hold at least twice the support.
2. *Spred sub-problem.* Minimise ``F`` over the working set with L-BFGS
   (:mod:`._lbfgs`, float64, Armijo backtracking). Factors are initialised
   function-preservingly but *not* balanced (``u = c``, ``w = v / c`` with
   ``c = 1.2 sqrt|v|``, or ``u = c0``, ``w = 0`` for zeros) so that no coordinate
   starts on the sign-trapping line ``u = -w`` (DESIGN section 1).
3. *Polish* (:mod:`._polish`). Every few L-BFGS iterations the spred iterate is
   rounded to its support and sign pattern and the exact problem is solved there; the
   polish succeeds when the KKT conditions hold on the working set, and then zeros
   are exact.
4. *Grow.* The KKT conditions are checked on all features; violators are added to
   the working set (its size at least doubles the support) and the loop repeats.
   The exact solution of the last working set is then continued by the polish itself
   (``warm``: feature-sign search from it, the worst violators entering first, with an
   updated Cholesky factor of the Gram block); L-BFGS on the factors runs again only if
   that fails. So the spred iterate identifies the first support, and when the support
   nears ``n`` (where the factored problem is ill-conditioned and L-BFGS needs hundreds
   of iterations) the exact continuation does the rest.

*Small problems* (squared loss, L1, at most ``SMALL_FEATURES = 128`` features and no more
than samples; e.g. scikit-learn's diabetes data, 442 x 10): one working set, all features,
and the exact search runs from the start point itself, three entries entering at a time;
its Newton solves on blocks of at most 128 x 128 cost fewer Python calls than L-BFGS
iterations on the factors (a fit of the diabetes data took 1.0-1.5 ms of CPU with L-BFGS
first, 0.6-0.7 ms so). Its result is certified by the same KKT check; if it fails, L-BFGS
on the factors runs as for any working set.

Stopping criterion: ``crit = max_j dist(-grad_j L(v), alpha * weight_j * d||v_j||)
/ alpha`` (plus the intercept gradient), i.e. the largest KKT violation as a fraction
of the penalty's slope ``alpha`` (``alpha_max`` when ``alpha = 0``); the solver stops
when ``crit <= tol``. Iterations (``n_iter``, bounded by ``max_iter``) count the L-BFGS
iterations plus the Newton solves of an exact search tried before L-BFGS.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ._lbfgs import lbfgs
from ._datafits import QuadraticDatafit
from ._penalties import L1Penalty, L1Sub
from ._polish import polish

logger = logging.getLogger(__name__)

__all__ = ["SolverResult", "compute_alpha_max", "lasso_dual_gap", "solve_ws"]

_WS_GROWTH = 2.0  # working set: at least this many times the support
# small problems (squared loss, L1, at most this many features, no more than samples) try the
# exact search from the start point first, this many entries entering at a time
SMALL_FEATURES, _SMALL_ENTER = 128, 3


@dataclass
class SolverResult:
    """Result of a spred solver.

    Attributes
    ----------
    coef : ndarray of shape (n_features,) or (n_features, n_outputs)
    intercept : float or ndarray of shape (n_outputs,)
        Intercept fitted by the solver (logistic losses); 0 for the squared loss,
        whose intercept is recovered by the caller from the centring offsets.
    n_iter : int
        Total number of L-BFGS iterations on the spred objective, plus the Newton solves
        of the exact searches tried before L-BFGS (warm starts, small problems).
    crit : float
        Final stopping criterion (scaled KKT residual).
    converged : bool
    n_outer : int
        Number of working-set (outer) iterations.
    grad : ndarray or None
        Gradient of the datafit on all entries at ``coef`` when the solver stopped
        after computing it (for the duality gap without another pass over ``X``).
    """

    coef: np.ndarray
    intercept: float | np.ndarray
    n_iter: int
    crit: float
    converged: bool
    n_outer: int = 0
    grad: np.ndarray | None = None


def _kkt(datafit, penalty, v, b):
    f, g, gb = datafit.fg(v, b)
    viol = penalty.violation(v, g)
    gb_max = np.abs(gb).max() if gb is not None and gb.size else 0.0
    return f, g, viol, gb_max


def _support_key(pen_sub, x, g, nb):
    """The polish's starting active set with its signs (bytes), read off the factors and the
    L-BFGS gradient: ``v = u w`` and ``dL/dv = (u g_w + w g_u - 2 alpha u w) / (u^2 + w^2)``."""
    m, alpha = pen_sub.m, pen_sub.alpha
    u, w = x[:m], x[m:2 * m]
    v = u * w
    den = u * u + w * w
    with np.errstate(divide="ignore", invalid="ignore"):
        gv = np.where(den > 0, (u * g[m:2 * m] + w * g[:m] - 2.0 * alpha * v) / den, 0.0)
    top = np.abs(v).max() if v.size else 0.0
    keep = (np.abs(v) > 1e-6 * top) & (np.abs(gv) > 0.9 * alpha)
    return (np.sign(v) * keep).astype(np.int8).tobytes()


def _try_warm_polish(pen_sub, v0):
    """Whether to try the polish before L-BFGS: L1, from a nonzero warm start."""
    return isinstance(pen_sub, L1Sub) and bool(np.any(v0 != 0))


def is_small(datafit, penalty):
    """Whether the exact search alone is tried first on the whole problem (:func:`solve_ws`):
    squared loss, L1, at most ``SMALL_FEATURES`` features and no more than samples."""
    return (isinstance(penalty, L1Penalty) and isinstance(datafit, QuadraticDatafit)
            and datafit.p <= min(SMALL_FEATURES, datafit.n))


def _solve_subproblem(sub, pen_sub, v0, b0, tol_abs, max_iter, c0, check_every, small=False):
    """Spred L-BFGS on a working set, with polishing.

    For L1 a polish is tried when the estimated support and signs have stayed the same for
    three iterations (and differ from the last failed try), and in any case at
    geometrically growing spacing (the first after ``check_every // 2`` iterations).
    ``small``: the exact search is tried first from ``v0`` (a small problem, see
    :func:`is_small`); otherwise it is tried first from a nonzero ``v0`` (a warm start).
    Returns ``(v, b, n_iter, ok, status)`` with ``n_iter`` the L-BFGS iterations plus the
    Newton solves of an exact search tried first.
    """
    spent = 0
    if small or _try_warm_polish(pen_sub, v0):
        # a warm start (a previous working set's solution): the exact search continues it,
        # adding the new violators; a small problem: the exact search from v0, a few entries
        # entering at a time, costs fewer Python calls than L-BFGS iterations. L-BFGS on the
        # factors runs only if it fails.
        v2, b2, ok, spent = polish(pen_sub, sub, v0, b0, tol_abs, warm=True,
                                   max_enter=_SMALL_ENTER if small else None)
        if ok:
            return v2, b2, spent, True, "polish"
    x0 = pen_sub.to_factors(v0, b0, c0)
    fun, precond = pen_sub.objective(sub)
    nb = sub.nb
    found = {}
    track = isinstance(pen_sub, L1Sub)
    state = {"next": max(1, check_every // 2), "key": None, "same": 0, "tried": None}

    def callback(it, x, f, g):
        key = _support_key(pen_sub, x, g, nb) if track else None
        if key is not None:
            state["same"] = state["same"] + 1 if key == state["key"] else 0
            state["key"] = key
        stable = key is not None and state["same"] >= 2 and key != state["tried"]
        if it < state["next"] and not stable:
            return False
        if it >= state["next"]:
            state["next"] = it + max(check_every, it // 2)
        state["tried"] = key
        v, b = pen_sub.to_v(x, nb)
        v2, b2, ok, _ = polish(pen_sub, sub, v, b, tol_abs)
        if ok:
            found["vb"] = (v2, b2)
            return True
        return False

    x, f, g, it, status = lbfgs(fun, x0, max_iter, callback=callback, precond=precond)
    if "vb" in found:
        v, b = found["vb"]
        return v, b, it + spent, True, status
    v, b = pen_sub.to_v(x, nb)
    v2, b2, ok, _ = polish(pen_sub, sub, v, b, tol_abs)
    if ok:
        return v2, b2, it + spent, True, status
    # keep whichever of the polished (exact zeros) and raw iterates is lower
    f_raw = sub.fg(v, b)[0] + pen_sub.value(v)
    f_pol = sub.fg(v2, b2)[0] + pen_sub.value(v2)
    if f_pol <= f_raw:
        return v2, b2, it + spent, False, status
    return v, b, it + spent, False, status


def _working_set(penalty, g, viol, supp, ws_size, p0, tol_abs):
    """The support plus the largest KKT violators: at least ``p0`` units, at most ``ws_size``."""
    score = penalty.score(g)
    score[supp] = np.inf
    n_cand = max(int(np.count_nonzero((viol > tol_abs) | supp)), min(p0, score.size))
    k = min(ws_size, n_cand)
    if score.size > k:
        return np.sort(np.argpartition(-score, k - 1)[:k])
    return np.arange(score.size)


def _factor_scale(v_ws, g_ws, sub, alpha):
    """Scale ``c0`` of the factors of the zero entries: ``sqrt(mean|v|)`` on the support, or
    the size of a first Newton step at zero ``sqrt(max (|g| - alpha) / curvature)``."""
    if np.any(v_ws != 0):
        a = np.abs(v_ws)
        return math.sqrt(float(a[a > 0].mean()))
    curv = np.maximum(sub.curvature(), 1e-300)
    c0 = math.sqrt(max(np.max(np.maximum(np.abs(g_ws) - alpha, 0) / curv), 1e-300))
    return 1.0 if not np.isfinite(c0) or c0 == 0 else c0


def solve_ws(datafit, penalty, *, coef_init=None, intercept_init=None, alpha_max,
             tol=1e-4, max_iter=1000, p0=30, check_every=10, verbose=0):
    """Working-set spred solver (L-BFGS on the factors, then an exact polish).

    Parameters
    ----------
    datafit : QuadraticDatafit, LogisticDatafit or MultinomialDatafit
    penalty : L1Penalty or GroupPenalty
    coef_init : ndarray or None
        Warm start (flattened entries); zeros by default.
    intercept_init : ndarray or None
        Warm start of the intercept (logistic losses).
    alpha_max : float
        The smallest alpha giving ``v = 0`` (scale of the stopping criterion when
        ``alpha = 0``).
    tol : float
        Stop when ``max KKT violation / alpha <= tol``.
    max_iter : int
        Maximum total number of iterations (L-BFGS iterations plus the counted Newton solves).
    p0 : int
        Size of the first working set.
    check_every : int
        Polishing attempts every so many L-BFGS iterations.
    verbose : int
        Log progress to this module's logger at INFO level when > 0.

    Returns
    -------
    SolverResult
    """
    m = datafit.p * datafit.n_outputs
    v = np.zeros(m) if coef_init is None else np.asarray(coef_init, float).ravel().copy()
    b = intercept_init if intercept_init is not None else datafit.init_intercept()
    b = None if b is None else np.asarray(b, float).ravel().copy()
    # KKT residuals are measured relative to alpha (the slope of the penalty); for
    # alpha = 0 (no penalty) relative to alpha_max
    scale = penalty.alpha if penalty.alpha > 0 else (alpha_max if alpha_max > 0 else 1.0)
    tol_abs = tol * scale
    n_iter, ws_size, crit, converged = 0, p0, np.inf, False
    small = is_small(datafit, penalty)
    outer = 0
    g_final = None
    for outer in range(1, 10 * max_iter + 2):
        f, g, viol, gb_max = _kkt(datafit, penalty, v, b)
        crit = max(viol.max() if viol.size else 0.0, gb_max) / scale
        supp = penalty.support_units(v)
        if verbose:
            logger.info("spred ws iter %d: objective %.10e, crit %.3e, support %d, L-BFGS its %d",
                        outer, f + penalty.value(v), crit, int(supp.sum()), n_iter)
        if crit <= tol:
            converged, g_final = True, g
            break
        if n_iter >= max_iter:
            g_final = g
            break
        ws_size = min(penalty.n_units, max(ws_size, int(_WS_GROWTH * int(supp.sum())), p0))
        if small:  # one working set: the whole problem
            units = np.arange(penalty.n_units)
        else:
            units = _working_set(penalty, g, viol, supp, ws_size, p0, tol_abs)
        entries = penalty.unit_entries(units)
        sub = datafit.subproblem(penalty.unit_features(units))
        pen_sub = penalty.subproblem(units)
        c0 = _factor_scale(v[entries], g[entries], sub, penalty.alpha)
        v_new, b_new, it, ok, _ = _solve_subproblem(
            sub, pen_sub, v[entries], b, tol_abs, max(max_iter - n_iter, 1), c0, check_every,
            small=small)
        n_iter += it
        v[entries] = v_new
        if b is not None:
            b = b_new
        ws_size = units.size if ok else min(penalty.n_units, 2 * units.size)
    coef = v.reshape(datafit.p, datafit.n_outputs) if datafit.n_outputs > 1 else v
    return SolverResult(coef=coef, intercept=b, n_iter=n_iter, crit=float(crit),
                        converged=converged, n_outer=outer, grad=g_final)


def compute_alpha_max(datafit, penalty):
    """Smallest ``alpha`` for which all coefficients are zero (intercept optimal)."""
    m = datafit.p * datafit.n_outputs
    _, g, _ = datafit.fg(np.zeros(m), datafit.init_intercept())
    return penalty.dual_norm(g)


def lasso_dual_gap(datafit, penalty, v, grad=None):
    """Duality gap of ``(1/(2n))||y - Xv||^2 + penalty(v)`` at ``v`` (L1 or group).

    The dual point is the residual rescaled into the dual feasible set
    ``dual_norm(X'nu / n) <= alpha``. ``grad``: the datafit's gradient at ``v``
    (``-X'r / n``) when the caller has it, which saves a pass over ``X``.
    """
    n = datafit.n
    r = datafit.y - datafit.predict_centred(v)
    if grad is not None:
        xtr = -n * grad
    else:
        xtr = np.asarray(datafit.X.T @ r).ravel()
        if datafit.offset is not None:
            xtr -= datafit.offset * r.sum()
    primal = 0.5 * (r @ r) / n + penalty.value(v)
    dn = penalty.dual_norm(xtr / n)
    alpha = penalty.alpha
    s = max(1.0, dn / alpha) if alpha > 0 else 1.0
    nu = r / s
    y = datafit.y
    dual = (y @ y - (y - nu) @ (y - nu)) / (2 * n)
    return float(primal - dual)


