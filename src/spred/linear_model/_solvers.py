"""Pure solver functions for spred's linear models (NumPy/SciPy; no estimator code).

Every solver here genuinely uses *sparsity by redundancy*: a sparse vector ``v`` is
written ``v = u * w`` (or ``v_g = s_g * w_g`` for penalty groups) and the smooth
objective

    F(u, w) = L(u * w) + (alpha / 2) * (||u||^2 + ||w||^2)

is minimised; at a minimiser ``|u| = |w|`` and ``F = L(v) + alpha * ||v||_1``.

Full-batch solver (:func:`solve_ws`)
------------------------------------
1. *Working set.* Start from the features with the largest KKT violation at the
   current point (at ``v = 0``: the largest ``|grad L|``; ``p0 = 30`` of them), plus
   the current support; later working sets hold at least twice the support.
2. *Spred sub-problem.* Minimise ``F`` over the working set with L-BFGS (our own
   two-loop implementation, float64, Armijo backtracking). Factors are initialised
   function-preservingly but *not* balanced (``u = c``, ``w = v / c`` with
   ``c = 1.2 sqrt|v|``, or ``u = c0``, ``w = 0`` for zeros) so that no coordinate
   starts on the sign-trapping line ``u = -w`` (DESIGN section 1).
3. *Polish.* Every few L-BFGS iterations the spred iterate is rounded to its
   support and sign pattern and the exact problem is solved there: for L1 a
   sign-constrained Newton step (one linear solve for the squared loss, a few
   Newton steps for the logistic losses), stepping back to zero any coefficient
   whose sign flips and adding back zero coefficients that violate KKT (feature-sign
   search); for groups, Newton steps on the active groups. The polish succeeds when
   the KKT conditions hold on the working set, and then zeros are exact.
4. *Grow.* The KKT conditions are checked on all features; violators are added to
   the working set (its size at least doubles the support) and the loop repeats.

Stopping criterion: ``crit = max_j dist(-grad_j L(v), alpha * weight_j * d||v_j||)
/ alpha`` (plus the intercept gradient), i.e. the largest KKT violation as a fraction
of the penalty's slope ``alpha`` (``alpha_max`` when ``alpha = 0``); the solver stops
when ``crit <= tol``.

Minibatch solver (:class:`MinibatchState`)
------------------------------------------
SGD / Adam / Adagrad (PyTorch) on the spred factors with *coupled* weight decay
``alpha`` (which is exactly the penalty above), loss ``mean(r^2) / 2`` (sklearn
scaling), followed by a threshold plus a KKT check (:func:`decide_zeros`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.special import expit

logger = logging.getLogger("spred")

__all__ = [
    "GroupPenalty",
    "L1Penalty",
    "LogisticDatafit",
    "MultinomialDatafit",
    "QuadraticDatafit",
    "SolverResult",
    "lasso_dual_gap",
    "MinibatchState",
    "decide_zeros",
    "solve_ws",
]

_WS_GROWTH = 2.0  # working set: at least this many times the support
_INIT_IMBALANCE = 1.2  # u = 1.2 sqrt|v|, w = v / u: function-preserving, not balanced


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
        Total number of L-BFGS iterations on the spred objective (full batch) or
        epochs (minibatch).
    crit : float
        Final stopping criterion (scaled KKT residual).
    converged : bool
    n_outer : int
        Number of working-set (outer) iterations.
    """

    coef: np.ndarray
    intercept: float | np.ndarray
    n_iter: int
    crit: float
    converged: bool
    n_outer: int = 0


# --------------------------------------------------------------------------------------
# L-BFGS (two-loop recursion, Armijo backtracking with quadratic interpolation)
# --------------------------------------------------------------------------------------
def _lbfgs(fun, x, max_iter, *, memory=10, callback=None, gtol=0.0, precond=None):
    """Minimise a smooth function with L-BFGS.

    ``fun(x)`` returns ``(f, grad)``. ``precond(x)``, if given, returns a function
    applying a symmetric positive definite approximation ``D`` of the inverse Hessian
    (to a vector, or to each row of a matrix); the initial matrix is then
    ``gamma * D`` with ``gamma = s'y / y'Dy`` (else ``gamma * I``). The search direction
    uses the compact representation of Byrd, Nocedal and Schnabel (1994), a dozen
    NumPy calls per iteration whatever the memory. Armijo backtracking with quadratic
    interpolation; pairs with ``s'y <= 0`` (the spred objective is non-convex) are
    skipped. ``callback(it, x, f, g)`` is called after every iteration; returning True
    stops. Returns ``(x, f, g, n_iter, status)``.
    """
    f, g = fun(x)
    dim = x.size
    S = np.empty((memory, dim))
    Y = np.empty((memory, dim))
    SY = np.empty((memory, memory))  # SY[i, j] = s_i' y_j, chronological order
    triu = np.triu(np.ones((memory, memory)))
    k = 0
    it = 0
    status = "max_iter"
    while it < max_iter:
        gnorm = np.abs(g).max()
        if not np.isfinite(f) or not np.isfinite(gnorm):
            status = "nonfinite"
            break
        if gnorm <= gtol:
            status = "gtol"
            break
        D = precond(x) if precond is not None else None
        if k == 0:
            if D is None:
                d = -g / max(np.linalg.norm(g), 1e-300)
            else:
                d = -D(g)
                dn = np.abs(d).max()
                if dn > 0:
                    d *= min(1.0, 1.0 / dn)
        else:
            Sk, Yk = S[:k], Y[:k]
            yl = Yk[-1]
            if D is None:
                gamma = SY[k - 1, k - 1] / (yl @ yl)
                H0 = gamma
                H0g = gamma * g
                YHY = gamma * (Yk @ Yk.T)
            else:
                YD = D(Yk)
                gamma = SY[k - 1, k - 1] / (yl @ YD[-1])
                H0g = gamma * D(g)
                YHY = gamma * (YD @ Yk.T)
            SYk = SY[:k, :k]
            R = SYk * triu[:k, :k]
            q1 = Sk @ g
            q2 = Yk @ H0g
            r = np.linalg.solve(R, q1)
            p1 = np.linalg.solve(R.T, SYk.diagonal() * r + YHY @ r - q2)
            ry = r @ Yk
            Hg = H0g + p1 @ Sk - (H0 * ry if D is None else gamma * D(ry))
            d = -Hg
        gd = g @ d
        if not gd < 0:
            k = 0
            d = -g / max(np.linalg.norm(g), 1e-300)
            gd = g @ d
        t = 1.0
        while True:
            xn = x + t * d
            fn, gn = fun(xn)
            if fn <= f + 1e-4 * t * gd:
                break
            denom = 2.0 * (fn - f - gd * t)
            t_new = -gd * t * t / denom if denom > 0 and np.isfinite(fn) else 0.1 * t
            t = min(max(t_new, 0.1 * t), 0.5 * t)
            if t < 1e-20:
                status = "linesearch"
                return x, f, g, it, status
        s = xn - x
        yv = gn - g
        sy = s @ yv
        if sy > 1e-12 * (yv @ yv) and sy > 0:
            if k == memory:
                S[:-1] = S[1:]
                Y[:-1] = Y[1:]
                SY[:-1, :-1] = SY[1:, 1:]
                k -= 1
            S[k] = s
            Y[k] = yv
            SY[k, : k + 1] = Y[: k + 1] @ s
            SY[:k, k] = S[:k] @ yv
            k += 1
        x, f, g = xn, fn, gn
        it += 1
        if callback is not None and callback(it, x, f, g):
            status = "callback"
            break
    return x, f, g, it, status


def _logsumexp_rows(Z):
    """Row-wise log-sum-exp (NumPy; scipy's generic version is ~100x slower here)."""
    m = Z.max(axis=1)
    return m + np.log(np.exp(Z - m[:, None]).sum(axis=1))


def _solve_psd(H, rhs):
    """Solve ``H d = rhs`` for a symmetric positive semi-definite ``H``."""
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(rhs))):
        return np.zeros_like(rhs)
    mu = 1e-10 * max(np.trace(H) / max(H.shape[0], 1), 1e-300)
    for damping in (0.0, mu):
        try:
            # damping only if singular: a flat direction then gets a long step (and
            # the coefficient that crosses zero first leaves the support)
            Hd = H if damping == 0.0 else H + damping * np.eye(H.shape[0])
            c = scipy.linalg.cho_factor(Hd, check_finite=False)
            d = scipy.linalg.cho_solve(c, rhs, check_finite=False)
            if np.all(np.isfinite(d)):
                return d
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
            pass
    # singular (collinear features, more active features than samples): pseudo-inverse
    lam, U = scipy.linalg.eigh(H, check_finite=False)
    keep = lam > 1e-12 * max(lam.max(), 1e-300)
    return U[:, keep] @ ((U[:, keep].T @ rhs) / lam[keep])


# --------------------------------------------------------------------------------------
# Datafits restricted to a working set (sub-problems); variables: v (entries), b
# --------------------------------------------------------------------------------------
class _QuadraticGramSub:
    """(1/2) v'Gv - c'v + const: the squared loss on a working set through its Gram."""

    quadratic = True
    nb = 0

    def __init__(self, G, c, const, n):
        self.G, self.c, self.const, self.n = G, c, const, n

    def fg(self, v, b):
        Gv = self.G @ v
        return 0.5 * (v @ Gv) - self.c @ v + self.const, Gv - self.c, None

    def hess(self, A, v, b):
        return self.G[np.ix_(A, A)]

    def curvature(self):
        return np.diag(self.G).copy()

    def curvature_intercept(self):
        return 1.0


class _QuadraticMatrixSub:
    """(1/(2n)) ||y - Xw v||^2 on a working set (used when it is wider than tall)."""

    quadratic = True
    nb = 0

    def __init__(self, Xw, y, gram=None):
        self.Xw, self.y, self.n = Xw, y, Xw.shape[0]
        self.gram = gram  # callable: local indices -> Gram block (cached by the datafit)

    def fg(self, v, b):
        r = self.Xw @ v - self.y
        return 0.5 * (r @ r) / self.n, (self.Xw.T @ r) / self.n, None

    def hess(self, A, v, b):
        if self.gram is not None:
            return self.gram(A)
        XA = self.Xw[:, A]
        return (XA.T @ XA) / self.n

    def curvature(self):
        return np.einsum("ij,ij->j", self.Xw, self.Xw) / self.n

    def curvature_intercept(self):
        return 1.0


class _LogisticSub:
    """Mean binary log-loss on a working set; y in {0, 1}; optional intercept."""

    quadratic = False

    def __init__(self, Xw, y, fit_intercept):
        self.Xw, self.y, self.n = Xw, y, Xw.shape[0]
        self.nb = 1 if fit_intercept else 0

    def _z(self, v, b):
        z = self.Xw @ v
        if self.nb:
            z = z + b[0]
        return z

    def fg(self, v, b):
        z = self._z(v, b)
        f = np.mean(np.logaddexp(0.0, z) - self.y * z)
        d = (expit(z) - self.y) / self.n
        gb = np.array([d.sum()]) if self.nb else None
        return f, self.Xw.T @ d, gb

    def hess(self, A, v, b):
        s = expit(self._z(v, b))
        D = s * (1.0 - s) / self.n
        XA = self.Xw[:, A]
        if self.nb:
            XA = np.hstack([XA, np.ones((self.n, 1))])
        return (XA * D[:, None]).T @ XA

    def curvature(self):
        return 0.25 * np.einsum("ij,ij->j", self.Xw, self.Xw) / self.n

    def curvature_intercept(self):
        return 0.25


class _MultinomialSub:
    """Mean multinomial log-loss; v holds a (k, K) matrix row-major; intercept (K,)."""

    quadratic = False

    def __init__(self, Xw, Y, fit_intercept):
        self.Xw, self.Y = Xw, Y
        self.n, self.K = Y.shape
        self.k = Xw.shape[1]
        self.nb = self.K if fit_intercept else 0

    def _Z(self, v, b):
        Z = self.Xw @ v.reshape(self.k, self.K)
        if self.nb:
            Z = Z + b
        return Z

    def fg(self, v, b):
        Z = self._Z(v, b)
        lse = _logsumexp_rows(Z)
        f = np.mean(lse - np.einsum("ij,ij->i", Z, self.Y))
        D = (np.exp(Z - lse[:, None]) - self.Y) / self.n
        gb = D.sum(axis=0) if self.nb else None
        return f, (self.Xw.T @ D).ravel(), gb

    def hess(self, A, v, b):
        Z = self._Z(v, b)
        P = np.exp(Z - _logsumexp_rows(Z)[:, None])
        cols, cls = A // self.K, A % self.K
        Za = self.Xw[:, cols]
        if self.nb:
            Za = np.hstack([Za, np.ones((self.n, self.K))])
            cls = np.concatenate([cls, np.arange(self.K)])
        W = Za * P[:, cls]
        H = ((W.T @ Za) * (cls[:, None] == cls[None, :]) - W.T @ W) / self.n
        if self.nb:
            # the softmax is invariant to adding a constant to all intercepts: make
            # that direction non-singular (its gradient component is zero)
            nbk = self.K
            blk = H[-nbk:, -nbk:]
            blk += (np.trace(blk) / nbk + 1e-12) / nbk
        return H

    def curvature(self):
        return np.repeat(0.5 * np.einsum("ij,ij->j", self.Xw, self.Xw) / self.n, self.K)

    def curvature_intercept(self):
        return 0.5


# --------------------------------------------------------------------------------------
# Full datafits
# --------------------------------------------------------------------------------------
def _columns(X, cols):
    """Dense copy of the columns ``cols`` of a dense or sparse (CSC) matrix."""
    if sp.issparse(X):
        return X[:, cols].toarray()
    return X[:, cols]


class QuadraticDatafit:
    """Squared loss ``(1/(2n)) ||y - (X - 1 x_offset') v||^2``, centring done implicitly.

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        Targets, already centred when an intercept is fitted.
    X_offset : ndarray of shape (n_features,) or None
        Column means subtracted implicitly (``None``: no centring).
    """

    n_outputs = 1
    nb = 0

    def __init__(self, X, y, X_offset=None):
        self.X = X.tocsc() if sp.issparse(X) else X
        self.y = y
        self.n, self.p = X.shape
        self.offset = X_offset
        self._gram_idx = np.empty(0, dtype=np.int64)
        self._gram = np.empty((0, 0))
        self._gram_pos = -np.ones(self.p, dtype=np.int64)
        self._Xty = None

    def init_intercept(self):
        return None

    def _centred_cols(self, cols):
        Xw = _columns(self.X, cols)
        if self.offset is not None:
            Xw = Xw - self.offset[cols]
        return Xw

    def predict_centred(self, v, b=None):
        supp = np.flatnonzero(v)
        if supp.size == 0:
            return np.zeros(self.n)
        z = self.X[:, supp] @ v[supp]
        if self.offset is not None:
            z = z - self.offset[supp] @ v[supp]
        return np.asarray(z).ravel()

    def fg(self, v, b=None):
        """Value and gradient at ``v`` on all features; also returns the residual."""
        r = self.y - self.predict_centred(v)
        g = -np.asarray(self.X.T @ r).ravel()
        if self.offset is not None:
            g += self.offset * r.sum()
        g /= self.n
        return 0.5 * (r @ r) / self.n, g, None

    def Xty(self):
        if self._Xty is None:
            g = np.asarray(self.X.T @ self.y).ravel()
            if self.offset is not None:
                g -= self.offset * self.y.sum()
            self._Xty = g / self.n
        return self._Xty

    def _gram_block(self, feats):
        """Gram matrix ``Xc_F' Xc_F / n`` of ``feats``, cached across working sets."""
        new = feats[self._gram_pos[feats] < 0]
        if new.size:
            Xnew = self._centred_cols(new)
            old = self._gram_idx
            k_old = old.size
            G = np.empty((k_old + new.size, k_old + new.size))
            G[:k_old, :k_old] = self._gram
            if k_old:
                cross = self._centred_cols(old).T @ Xnew / self.n
                G[:k_old, k_old:] = cross
                G[k_old:, :k_old] = cross.T
            G[k_old:, k_old:] = Xnew.T @ Xnew / self.n
            self._gram = G
            self._gram_idx = np.concatenate([old, new])
            self._gram_pos[new] = np.arange(k_old, k_old + new.size)
        pos = self._gram_pos[feats]
        return self._gram[np.ix_(pos, pos)]

    def subproblem(self, feats):
        k = feats.size
        if k <= self.n:
            G = self._gram_block(feats)
            return _QuadraticGramSub(G, self.Xty()[feats], 0.5 * (self.y @ self.y) / self.n, self.n)
        return _QuadraticMatrixSub(self._centred_cols(feats), self.y,
                                   gram=lambda A: self._gram_block(feats[A]))

    def value(self, v, b=None):
        r = self.y - self.predict_centred(v)
        return 0.5 * (r @ r) / self.n


class LogisticDatafit:
    """Mean binary log-loss ``mean(log(1 + exp(z)) - y z)``, ``z = X v + b``, y in {0,1}."""

    n_outputs = 1

    def __init__(self, X, y, fit_intercept=True):
        self.X = X.tocsc() if sp.issparse(X) else X
        self.y = np.asarray(y, dtype=np.float64)
        self.n, self.p = X.shape
        self.fit_intercept = fit_intercept
        self.nb = 1 if fit_intercept else 0

    def init_intercept(self):
        if not self.fit_intercept:
            return None
        m = np.clip(self.y.mean(), 1e-12, 1 - 1e-12)
        return np.array([math.log(m / (1 - m))])

    def _z(self, v, b):
        supp = np.flatnonzero(v)
        z = np.zeros(self.n) if supp.size == 0 else np.asarray(self.X[:, supp] @ v[supp]).ravel()
        if self.nb:
            z = z + b[0]
        return z

    def fg(self, v, b):
        z = self._z(v, b)
        f = np.mean(np.logaddexp(0.0, z) - self.y * z)
        d = (expit(z) - self.y) / self.n
        gb = np.array([d.sum()]) if self.nb else None
        return f, np.asarray(self.X.T @ d).ravel(), gb

    def value(self, v, b):
        z = self._z(v, b)
        return np.mean(np.logaddexp(0.0, z) - self.y * z)

    def subproblem(self, feats):
        return _LogisticSub(_columns(self.X, feats), self.y, self.fit_intercept)


class MultinomialDatafit:
    """Mean multinomial log-loss; ``v`` is a flattened (n_features, K) matrix.

    ``Y`` is the one-hot (n_samples, K) target matrix.
    """

    def __init__(self, X, Y, fit_intercept=True):
        self.X = X.tocsc() if sp.issparse(X) else X
        self.Y = np.asarray(Y, dtype=np.float64)
        self.n, self.p = X.shape
        self.K = self.Y.shape[1]
        self.n_outputs = self.K
        self.fit_intercept = fit_intercept
        self.nb = self.K if fit_intercept else 0

    def init_intercept(self):
        if not self.fit_intercept:
            return None
        freq = np.clip(self.Y.mean(axis=0), 1e-12, None)
        b = np.log(freq)
        return b - b.mean()

    def _Z(self, v, b):
        V = v.reshape(self.p, self.K)
        rows = np.flatnonzero(np.any(V != 0, axis=1))
        if rows.size == 0:
            Z = np.zeros((self.n, self.K))
        else:
            Z = np.asarray(self.X[:, rows] @ V[rows])
        if self.nb:
            Z = Z + b
        return Z

    def fg(self, v, b):
        Z = self._Z(v, b)
        lse = _logsumexp_rows(Z)
        f = np.mean(lse - np.einsum("ij,ij->i", Z, self.Y))
        D = (np.exp(Z - lse[:, None]) - self.Y) / self.n
        gb = D.sum(axis=0) if self.nb else None
        return f, np.asarray(self.X.T @ D).ravel(), gb

    def value(self, v, b):
        Z = self._Z(v, b)
        return np.mean(_logsumexp_rows(Z) - np.einsum("ij,ij->i", Z, self.Y))

    def subproblem(self, feats):
        return _MultinomialSub(_columns(self.X, feats), self.Y, self.fit_intercept)


# --------------------------------------------------------------------------------------
# Penalties: value, KKT violation, working-set scores, and the spred sub-problem
# --------------------------------------------------------------------------------------
class L1Penalty:
    """``alpha * ||v||_1`` (elementwise) on ``v`` with ``K`` entries per feature.

    Units of the working set are features; feature ``j`` owns entries
    ``j*K, ..., j*K + K - 1`` of the flattened coefficients.
    """

    def __init__(self, alpha, n_features, K=1):
        self.alpha = float(alpha)
        self.p, self.K = n_features, K
        self.n_units = n_features

    def value(self, v):
        return self.alpha * np.abs(v).sum()

    def dual_norm(self, g):
        """``max |g|``: the smallest alpha for which ``v = 0`` is optimal."""
        return float(np.abs(g).max()) if g.size else 0.0

    def unit_entries(self, units):
        if self.K == 1:
            return units
        return (units[:, None] * self.K + np.arange(self.K)).ravel()

    def unit_features(self, units):
        return units

    def violation(self, v, g):
        """Per-unit KKT violation ``dist(-g, alpha * d|v|)`` (max over the K entries)."""
        viol = np.where(v != 0, np.abs(g + self.alpha * np.sign(v)), np.maximum(np.abs(g) - self.alpha, 0.0))
        return viol if self.K == 1 else viol.reshape(self.p, self.K).max(axis=1)

    def support_units(self, v):
        nz = v != 0
        return nz if self.K == 1 else nz.reshape(self.p, self.K).any(axis=1)

    def score(self, g):
        a = np.abs(g) if self.K == 1 else np.abs(g).reshape(self.p, self.K).max(axis=1)
        return a / max(self.alpha, 1e-300)

    def subproblem(self, units):
        return _L1Sub(self.alpha, units.size * self.K)


class GroupPenalty:
    """``alpha * sum_g weight_g * ||v_g||_2`` (group lasso), spred as ``v_g = s_g * w_g``."""

    def __init__(self, alpha, grp_ptr, grp_indices, weights=None):
        self.alpha = float(alpha)
        self.ptr = np.asarray(grp_ptr, dtype=np.int64)
        self.idx = np.asarray(grp_indices, dtype=np.int64)
        self.n_units = self.ptr.size - 1
        self.weights = np.ones(self.n_units) if weights is None else np.asarray(weights, float)
        self.sizes = np.diff(self.ptr)
        # entries of v sorted group after group; v is indexed by feature
        self._group_of = np.empty(self.idx.size, dtype=np.int64)
        self._group_of[self.idx] = np.repeat(np.arange(self.n_units), self.sizes)

    def value(self, v):
        return self.alpha * (self.weights @ self._norms(v))

    def dual_norm(self, g):
        """``max_g ||g_g|| / weight_g``: the smallest alpha for which ``v = 0``."""
        return float(np.max(self._norms(g) / self.weights)) if g.size else 0.0

    def _norms(self, v):
        return np.sqrt(np.add.reduceat(v[self.idx] ** 2, self.ptr[:-1]))

    def unit_entries(self, units):
        return np.concatenate([self.idx[self.ptr[g]:self.ptr[g + 1]] for g in units]) if units.size else np.empty(0, np.int64)

    unit_features = unit_entries

    def violation(self, v, g):
        nv = self._norms(v)
        aw = self.alpha * self.weights
        gg = g[self.idx]
        nz = nv > 0
        scale = np.where(nz, aw / np.where(nz, nv, 1.0), 0.0)
        res = gg + np.repeat(scale, self.sizes) * v[self.idx]
        res_norm = np.sqrt(np.add.reduceat(res**2, self.ptr[:-1]))
        gnorm = np.sqrt(np.add.reduceat(gg**2, self.ptr[:-1]))
        return np.where(nz, res_norm, np.maximum(gnorm - aw, 0.0))

    def support_units(self, v):
        return self._norms(v) > 0

    def score(self, g):
        gnorm = np.sqrt(np.add.reduceat(g[self.idx] ** 2, self.ptr[:-1]))
        return gnorm / np.maximum(self.alpha * self.weights, 1e-300)

    def subproblem(self, units):
        sizes = self.sizes[units]
        return _GroupSub(self.alpha * self.weights[units], sizes)


class _L1Sub:
    """Spred factors ``v = u * w`` with penalty ``(alpha/2)(||u||^2 + ||w||^2)``."""

    def __init__(self, alpha, m):
        self.alpha, self.m = alpha, m

    def to_factors(self, v, b, c0):
        a = np.abs(v)
        u = np.where(a > 0, _INIT_IMBALANCE * np.sqrt(a), c0)
        w = v / u
        return np.concatenate([u, w] + ([b] if b is not None else []))

    def to_v(self, x, nb):
        m = self.m
        return x[:m] * x[m:2 * m], (x[2 * m:].copy() if nb else None)

    def objective(self, sub):
        m, alpha, nb = self.m, self.alpha, sub.nb

        def fun(x):
            u, w = x[:m], x[m:2 * m]
            b = x[2 * m:] if nb else None
            v = u * w
            f, gv, gb = sub.fg(v, b)
            grad = np.empty_like(x)
            grad[:m] = gv * w + alpha * u
            grad[m:2 * m] = gv * u + alpha * w
            if nb:
                grad[2 * m:] = gb
            return f + 0.5 * alpha * (u @ u + w @ w), grad

        curv = sub.curvature()
        cb = sub.curvature_intercept()

        def precond(x):
            # inverse of the 2x2 Gauss-Newton blocks of (u_j, w_j):
            # c_j [w^2, uw; uw, u^2] + alpha I   (J = dv/d(u, w) = (w, u), rank one)
            u, w = x[:m], x[m:2 * m]
            a = curv * w * w + alpha
            d = curv * u * u + alpha
            off = curv * u * w
            det = a * d - off * off + 1e-300
            iuu, iww, iuw = d / det, a / det, -off / det
            ib = 1.0 / cb

            def apply(V):
                out = np.empty_like(V)
                Vu, Vw = V[..., :m], V[..., m:2 * m]
                out[..., :m] = iuu * Vu + iuw * Vw
                out[..., m:2 * m] = iuw * Vu + iww * Vw
                if nb:
                    out[..., 2 * m:] = ib * V[..., 2 * m:]
                return out

            return apply

        return fun, precond

    def value(self, v):
        return self.alpha * np.abs(v).sum()

    def polish(self, sub, v, b, tol_abs, max_rounds=6, max_solves=None, threshold=1e-6):
        """Exact solve on the support of the rounded spred iterate (active-set Newton).

        The spred iterate ``v`` is rounded to its support ``A`` (``|v| > threshold *
        max|v|``) and signs ``theta``; then ``f(v_A, b) + alpha theta' v_A`` is
        minimised by Newton steps (one linear solve for the squared loss). The
        coefficients whose sign would flip are set to zero and leave ``A``; after
        convergence, zero coefficients violating ``|grad_j| <= alpha`` enter ``A``
        with sign ``-sign(grad_j)`` (an entry that then flips at once is not added
        again). The work is bounded; success is certified by the KKT conditions on
        the working set (``max violation <= tol_abs``), so zeros are exact.
        Returns ``(v, b, ok)``.
        """
        alpha, nb = self.alpha, sub.nb
        v = v.copy()
        b = None if b is None else b.copy()
        vmax = np.abs(v).max() if v.size else 0.0
        f, gv, gb = sub.fg(v, b)
        # support estimate: not negligible, and |grad| close to alpha (at a spred
        # stationary point |grad_j| = alpha exactly wherever v_j != 0)
        A = np.flatnonzero((np.abs(v) > threshold * vmax) & (np.abs(gv) >= 0.9 * alpha))
        if vmax == 0:
            A = np.empty(0, np.int64)
        keep = np.zeros(v.size, bool)
        keep[A] = True
        v[~keep] = 0.0
        if A.size > max(sub.n, 50):
            return v, b, False  # more active entries than samples: not identified yet
        theta = np.sign(v[A])
        tiny = max(1e-3 * tol_abs, 1e-14 * max(alpha, 1e-300))
        banned = np.zeros(v.size, bool)
        fresh = np.zeros(v.size, bool)  # added from the KKT check, still at zero
        f, gv, gb = sub.fg(v, b)
        solves = 0
        if max_solves is None:
            # bounded work: many cheap solves on small supports, few on large ones
            base = 8 if sub.quadratic else 20
            max_solves = max(base, min(200, int(3e8 / (A.size**3 + 1))))
        n_flip_max = max(10, A.size // 10) if A.size > 200 else A.size + 1
        for _ in range(max_rounds):
            converged = False
            while solves < max_solves:
                rhs = gv[A] + alpha * theta
                if nb:
                    rhs = np.concatenate([rhs, gb])
                if rhs.size == 0 or np.abs(rhs).max() <= tiny:
                    converged = True
                    break
                H = sub.hess(A, v, b)
                if not sub.quadratic and H.size:
                    # Levenberg damping: exactly flat directions (softmax rows) get a
                    # long step, so that they cross zero and leave the support
                    H.flat[:: H.shape[0] + 1] += 1e-8 * max(np.trace(H) / H.shape[0], 1e-12)
                d = -_solve_psd(H, rhs)
                solves += 1
                dA = d[: A.size]
                vA = v[A]
                flipped = theta * (vA + dA) < 0
                if solves == 1 and np.count_nonzero(flipped) > n_flip_max:
                    return v, b, False  # the sign pattern is not identified yet
                if flipped.any():
                    # Sign-inconsistent: step towards the Newton point up to the first
                    # sign change (a descent step, as in feature-sign search) and drop
                    # the coefficients that cross first (within a factor 10).
                    with np.errstate(divide="ignore", invalid="ignore"):
                        t_cross = np.where(flipped, -vA / dA, np.inf)
                    t_min = t_cross.min()
                    out_mask = t_cross <= 10.0 * t_min + 1e-15
                    step = t_min if t_min > 0 else 0.0
                    v[A] = vA + step * dA
                    if nb:
                        b = b + step * d[A.size:]
                    out = A[out_mask]
                    banned[out[fresh[out]]] = True
                    v[out] = 0.0
                    A, theta = A[~out_mask], theta[~out_mask]
                    f, gv, gb = sub.fg(v, b)
                    continue
                fresh[A] = False
                t = 1.0
                if not sub.quadratic:
                    F0 = f + alpha * (theta @ vA)
                    slope = rhs @ d
                    while t > 1e-10:
                        vt = v.copy()
                        vt[A] = vA + t * dA
                        bt = b + t * d[A.size:] if nb else None
                        if sub.fg(vt, bt)[0] + alpha * (theta @ vt[A]) <= F0 + 1e-4 * t * slope:
                            break
                        t *= 0.5
                v[A] = vA + t * dA
                if nb:
                    b = b + t * d[A.size:]
                f, gv, gb = sub.fg(v, b)
                if t <= 1e-10:
                    break
            if not converged:
                break
            viol = np.abs(gv) - alpha
            viol[A] = -np.inf
            viol[banned] = -np.inf
            add = np.flatnonzero(viol > tiny)
            if add.size == 0:
                break
            fresh[add] = True
            A = np.concatenate([A, add])
            theta = np.concatenate([theta, -np.sign(gv[add])])
        # certificate: KKT on the whole working set
        viol = np.where(v != 0, np.abs(gv + alpha * np.sign(v)), np.abs(gv) - alpha)
        worst = viol.max() if viol.size else 0.0
        if nb:
            worst = max(worst, np.abs(gb).max())
        return v, b, bool(worst <= tol_abs)


class _GroupSub:
    """Spred factors ``v_g = s_g * w_g`` with penalty ``(a_g/2)(s_g^2 + ||w_g||^2)``."""

    def __init__(self, alpha_g, sizes):
        self.alpha_g = np.asarray(alpha_g, float)
        self.sizes = np.asarray(sizes)
        self.ng = self.sizes.size
        self.m = int(self.sizes.sum())
        self.ptr = np.concatenate([[0], np.cumsum(self.sizes)])
        self.rep = np.repeat(np.arange(self.ng), self.sizes)
        self.alpha_rep = self.alpha_g[self.rep]

    def norms(self, v):
        return np.sqrt(np.add.reduceat(v**2, self.ptr[:-1])) if self.m else np.empty(0)

    def to_factors(self, v, b, c0):
        nv = self.norms(v)
        s = np.where(nv > 0, _INIT_IMBALANCE * np.sqrt(nv), c0)
        w = v / s[self.rep]
        return np.concatenate([s, w] + ([b] if b is not None else []))

    def to_v(self, x, nb):
        ng, m = self.ng, self.m
        return x[:ng][self.rep] * x[ng:ng + m], (x[ng + m:].copy() if nb else None)

    def objective(self, sub):
        ng, m, nb = self.ng, self.m, sub.nb
        ag, arep, rep, starts = self.alpha_g, self.alpha_rep, self.rep, self.ptr[:-1]

        def fun(x):
            s, w = x[:ng], x[ng:ng + m]
            b = x[ng + m:] if nb else None
            srep = s[rep]
            v = srep * w
            f, gv, gb = sub.fg(v, b)
            grad = np.empty_like(x)
            grad[:ng] = np.add.reduceat(gv * w, starts) + ag * s
            grad[ng:ng + m] = gv * srep + arep * w
            if nb:
                grad[ng + m:] = gb
            return f + 0.5 * (ag @ (s * s) + (arep * w) @ w), grad

        curv = sub.curvature()
        cb = sub.curvature_intercept()

        def precond(x):
            s, w = x[:ng], x[ng:ng + m]
            D = np.empty_like(x)
            D[:ng] = 1.0 / (np.add.reduceat(curv * w * w, starts) + ag + 1e-300)
            D[ng:ng + m] = 1.0 / (curv * s[rep] ** 2 + arep + 1e-300)
            if nb:
                D[ng + m:] = 1.0 / cb
            return lambda V: D * V

        return fun, precond

    def value(self, v):
        return self.alpha_g @ self.norms(v)

    def polish(self, sub, v, b, tol_abs, max_newton=60):
        """Newton on the active groups (where the group norm is smooth)."""
        nb = sub.nb
        v = v.copy()
        b = None if b is None else b.copy()
        nv = self.norms(v)
        if nv.size == 0:
            return v, b, True
        active = nv > 1e-9 * nv.max() if nv.max() > 0 else np.zeros(self.ng, bool)
        v[~active[self.rep]] = 0.0
        tiny = max(1e-3 * tol_abs, 1e-14 * max(self.alpha_g.max(), 1e-300))

        def total(vv, bb):
            return sub.fg(vv, bb)[0] + self.alpha_g @ self.norms(vv)

        for _ in range(max_newton):
            f, gv, gb = sub.fg(v, b)
            nv = self.norms(v)
            A = np.flatnonzero(active[self.rep])
            grp = self.rep[A]
            vA = v[A]
            nA = nv[grp]
            rhs = gv[A] + self.alpha_rep[A] * vA / nA
            if nb:
                rhs = np.concatenate([rhs, gb])
            if rhs.size == 0 or np.abs(rhs).max() <= tiny:
                break
            H = sub.hess(A, v, b)
            # Hessian of a_g ||v_g||: a_g / ||v_g|| (I - vv'/||v_g||^2), block-diagonal
            for g in np.flatnonzero(active):
                loc = np.flatnonzero(grp == g)
                vg = vA[loc]
                ng_ = nv[g]
                H[np.ix_(loc, loc)] += self.alpha_g[g] / ng_ * (np.eye(loc.size) - np.outer(vg, vg) / ng_**2)
            d = -_solve_psd(H, rhs)
            F0 = f + self.alpha_g @ nv
            slope = rhs @ d
            t = 1.0
            while True:
                vt = v.copy()
                vt[A] = vA + t * d[: A.size]
                bt = b + t * d[A.size:] if nb else None
                if total(vt, bt) <= F0 + 1e-4 * t * slope or t < 1e-10:
                    break
                t *= 0.5
            v, b = vt, bt
            nv_new = self.norms(v)
            dead = active & (nv_new <= 1e-10 * max(nv_new.max(), 1e-300))
            if dead.any():
                active &= ~dead
                v[dead[self.rep]] = 0.0
        else:
            return v, b, False
        f, gv, gb = sub.fg(v, b)
        gnorm = np.sqrt(np.add.reduceat(gv**2, self.ptr[:-1]))
        viol = np.where(active, 0.0, gnorm - self.alpha_g)
        return v, b, bool(viol.max() <= tol_abs)


# --------------------------------------------------------------------------------------
# The working-set driver
# --------------------------------------------------------------------------------------
def _kkt(datafit, penalty, v, b):
    f, g, gb = datafit.fg(v, b)
    viol = penalty.violation(v, g)
    gb_max = np.abs(gb).max() if gb is not None and gb.size else 0.0
    return f, g, viol, gb_max


def _solve_subproblem(sub, pen_sub, v0, b0, tol_abs, max_iter, c0, check_every):
    """Spred L-BFGS on a working set, with periodic polishing.

    The first polishing attempt comes after ``check_every // 2`` iterations, the next
    ones at geometrically growing spacing. Returns ``(v, b, n_iter, ok, status)``.
    """
    x0 = pen_sub.to_factors(v0, b0, c0)
    fun, precond = pen_sub.objective(sub)
    nb = sub.nb
    found = {}
    state = {"next": max(1, check_every // 2)}

    def callback(it, x, f, g):
        if it < state["next"]:
            return False
        state["next"] = it + max(check_every, it // 2)
        v, b = pen_sub.to_v(x, nb)
        v2, b2, ok = pen_sub.polish(sub, v, b, tol_abs)
        if ok:
            found["vb"] = (v2, b2)
            return True
        return False

    x, f, g, it, status = _lbfgs(fun, x0, max_iter, callback=callback, precond=precond)
    if "vb" in found:
        v, b = found["vb"]
        return v, b, it, True, status
    v, b = pen_sub.to_v(x, nb)
    v2, b2, ok = pen_sub.polish(sub, v, b, tol_abs)
    if ok:
        return v2, b2, it, True, status
    # keep whichever of the polished (exact zeros) and raw iterates is lower
    f_raw = sub.fg(v, b)[0] + pen_sub.value(v)
    f_pol = sub.fg(v2, b2)[0] + pen_sub.value(v2)
    if f_pol <= f_raw:
        return v2, b2, it, False, status
    return v, b, it, False, status


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
        Maximum total number of L-BFGS iterations.
    p0 : int
        Size of the first working set.
    check_every : int
        Polishing attempts every so many L-BFGS iterations.
    verbose : int
        Log progress to ``logging.getLogger("spred")`` at INFO level when > 0.

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
    outer = 0
    for outer in range(1, 10 * max_iter + 2):
        f, g, viol, gb_max = _kkt(datafit, penalty, v, b)
        crit = max(viol.max() if viol.size else 0.0, gb_max) / scale
        if verbose:
            logger.info("spred ws iter %d: objective %.10e, crit %.3e, support %d, L-BFGS its %d",
                        outer, f + penalty.value(v), crit, int(penalty.support_units(v).sum()), n_iter)
        if crit <= tol:
            converged = True
            break
        if n_iter >= max_iter:
            break
        supp = penalty.support_units(v)
        n_supp = int(supp.sum())
        ws_size = min(penalty.n_units, max(ws_size, int(_WS_GROWTH * n_supp), p0))
        # working set: the support plus the largest KKT violators (at least p0 units)
        score = penalty.score(g)
        score[supp] = np.inf
        n_cand = max(int(np.count_nonzero((viol > tol_abs) | supp)), min(p0, score.size))
        k = min(ws_size, n_cand)
        if score.size > k:
            units = np.sort(np.argpartition(-score, k - 1)[:k])
        else:
            units = np.arange(score.size)
        feats = penalty.unit_features(units)
        entries = penalty.unit_entries(units)
        sub = datafit.subproblem(feats)
        pen_sub = penalty.subproblem(units)
        v_ws = v[entries]
        if np.any(v_ws != 0):
            a = np.abs(v_ws)
            c0 = math.sqrt(float(a[a > 0].mean()))
        else:
            curv = np.maximum(sub.curvature(), 1e-300)
            g_ws = g[entries]
            c0 = math.sqrt(max(np.max(np.maximum(np.abs(g_ws) - penalty.alpha, 0) / curv), 1e-300))
            if not np.isfinite(c0) or c0 == 0:
                c0 = 1.0
        v_new, b_new, it, ok, status = _solve_subproblem(
            sub, pen_sub, v_ws, b, tol_abs, max(max_iter - n_iter, 1), c0, check_every)
        n_iter += it
        v[entries] = v_new
        if b is not None:
            b = b_new
        ws_size = units.size
        if not ok:
            ws_size = min(penalty.n_units, 2 * ws_size)
    coef = v.reshape(datafit.p, datafit.n_outputs) if datafit.n_outputs > 1 else v
    return SolverResult(coef=coef, intercept=b, n_iter=n_iter, crit=float(crit),
                        converged=converged, n_outer=outer)


def lasso_dual_gap(datafit, penalty, v):
    """Duality gap of ``(1/(2n))||y - Xv||^2 + penalty(v)`` at ``v`` (L1 or group).

    The dual point is the residual rescaled into the dual feasible set
    ``dual_norm(X'nu / n) <= alpha``.
    """
    n = datafit.n
    r = datafit.y - datafit.predict_centred(v)
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


# --------------------------------------------------------------------------------------
# Minibatch solvers (PyTorch): SGD / Adam / Adagrad on the spred factors
# --------------------------------------------------------------------------------------
class MinibatchState:
    """Spred factors, intercept and optimizer state of the minibatch solvers.

    The parameters are ``u, w`` of shape (n_features, K) with ``v = u * w`` (L1) or
    ``s`` of shape (n_groups,) and ``w`` with ``v_g = s_g * w_g`` (groups), and an
    unpenalised intercept ``b`` of shape (K,). The penalty is *coupled* weight decay
    ``alpha`` on the factors (``torch.optim.*(weight_decay=alpha)``), which adds
    exactly ``alpha * u`` and ``alpha * w`` to the gradients, i.e. the L1 penalty
    ``alpha * ||v||_1`` at balance; with group weights the same term
    ``(alpha/2) sum_g weight_g (s_g^2 + ||w_g||^2)`` is added to the loss.
    Factors start function-preservingly and *unbalanced* at ``u = c``, ``w = 0``.
    """

    def __init__(self, n_features, K, *, loss, alpha, optimizer, learning_rate,
                 fit_intercept, groups=None, init_scale=0.1, intercept_init=None, seed=0):
        import torch

        self.p, self.K, self.loss, self.alpha = n_features, K, loss, float(alpha)
        self.fit_intercept = fit_intercept
        dt = torch.float64
        self.rng = np.random.RandomState(int(seed))
        if groups is None:
            self.group = None
            self.u = torch.full((n_features, K), float(init_scale), dtype=dt, requires_grad=True)
        else:
            grp_ptr, grp_idx, weights = groups
            sizes = np.diff(grp_ptr)
            rep = np.empty(n_features, dtype=np.int64)
            rep[grp_idx] = np.repeat(np.arange(sizes.size), sizes)
            self.group = (torch.as_tensor(rep), torch.as_tensor(np.asarray(weights, float)))
            self.u = torch.full((sizes.size,), float(init_scale), dtype=dt, requires_grad=True)
        self.w = torch.zeros((n_features, K), dtype=dt, requires_grad=True)
        b0 = np.zeros(K) if intercept_init is None else np.asarray(intercept_init, float).reshape(K)
        self.b = torch.tensor(b0, dtype=dt, requires_grad=bool(fit_intercept))
        uniform = self.group is None or bool(np.allclose(self.group[1].numpy(), 1.0))
        self.explicit_penalty = not uniform
        wd = 0.0 if self.explicit_penalty else self.alpha
        groups_ = [{"params": [self.u, self.w], "weight_decay": wd}]
        if fit_intercept:
            groups_.append({"params": [self.b], "weight_decay": 0.0})
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[optimizer]
        self.opt = cls(groups_, lr=learning_rate)
        self.n_seen = 0
        # Running estimate of the data-fit gradient dL/dv: an exponential moving average
        # of the minibatch gradients over about GRAD_HORIZON samples (bias-corrected).
        self._g_sum = torch.zeros((n_features, K), dtype=dt)
        self._g_weight = 0.0
        self._g_samples = 0

    def _v(self):
        if self.group is None:
            return self.u * self.w
        return self.u[self.group[0]][:, None] * self.w

    GRAD_HORIZON = 16384  # samples averaged by the running gradient estimate

    def _track_grad(self, batch):
        """Fold this step's dL/dv (held in ``self._v_last.grad``) into the running estimate."""
        g, self._v_last = self._v_last.grad, None  # no graph kept between steps (picklable state)
        if g is None:
            return
        # the horizon is the most recent half of the stream, at most GRAD_HORIZON samples, so that
        # the first gradients (at the starting point) leave the average on short streams too
        self._g_samples += batch
        horizon = min(self.GRAD_HORIZON, max(self._g_samples / 2, batch))
        rho = max(0.0, 1.0 - batch / horizon)
        self._g_sum.mul_(rho).add_(g, alpha=1.0 - rho)
        self._g_weight = rho * self._g_weight + (1.0 - rho)

    def grad_estimate(self):
        """The running average of the minibatch gradients dL/dv (NumPy), or None before any step.

        Averages about the most recent half of the stream, at most ``GRAD_HORIZON``
        samples, so it is much less noisy than the gradient on one chunk; the zero
        decisions of ``partial_fit`` use it.
        """
        if self._g_weight <= 0:
            return None
        return (self._g_sum / self._g_weight).numpy().copy()

    def _loss(self, X, y):
        import torch

        v = self._v()
        if v.requires_grad:
            v.retain_grad()
        self._v_last = v
        z = X @ v + self.b
        if self.loss == "squared":
            loss = 0.5 * ((z[:, 0] - y) ** 2).mean()
        elif self.loss == "logistic":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y)
        else:
            loss = torch.nn.functional.cross_entropy(z, y)
        if self.explicit_penalty:
            rep, wg = self.group
            loss = loss + 0.5 * self.alpha * ((wg * self.u**2).sum() + (wg[rep][:, None] * self.w**2).sum())
        return loss

    def to_tensors(self, X, y):
        """Copies of ``(X, y)`` as float64 / int64 tensors."""
        import torch

        Xt = torch.from_numpy(np.array(X, dtype=np.float64, order="C", copy=True))
        dtype = np.int64 if self.loss == "multinomial" else np.float64
        return Xt, torch.from_numpy(np.array(y, dtype=dtype, copy=True))

    def run(self, Xt, yt, *, n_epochs, batch_size):
        """Run ``n_epochs`` passes of minibatch steps over the tensors ``(Xt, yt)``."""
        import torch

        n = Xt.shape[0]
        bs = min(batch_size, n)
        for _ in range(n_epochs):
            perm = torch.from_numpy(self.rng.permutation(n))
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                self.opt.zero_grad(set_to_none=True)
                loss = self._loss(Xt[idx], yt[idx])
                loss.backward()
                self._track_grad(len(idx))
                self.opt.step()
            if not bool(torch.isfinite(self._v()).all()):
                raise FloatingPointError(
                    "The minibatch spred solver diverged (non-finite coefficients). "
                    "Lower learning_rate or standardise the features (StandardScaler).")
        self.n_seen += n * n_epochs

    def coef(self):
        import torch

        with torch.no_grad():
            return self._v().numpy().copy()

    def intercept(self):
        return self.b.detach().numpy().copy()


def decide_zeros(v, grad, alpha, threshold, alpha_weights=None):
    """Exact zeros for an approximate (minibatch) solution: threshold plus KKT.

    A coefficient becomes exactly zero when it is small (``|v_j| <= threshold``)
    *and* the L1 optimality condition for a zero holds on the data given
    (``|grad_j| <= alpha``); a small coefficient whose gradient still exceeds
    ``alpha`` is kept (it is at the KKT boundary or still growing). For groups,
    ``v``/``grad`` are compared group-wise through ``alpha_weights``.
    """
    v = np.array(v, dtype=np.float64, copy=True)
    small = np.abs(v) <= threshold
    ok = np.abs(grad) <= alpha * (alpha_weights if alpha_weights is not None else 1.0)
    v[small & ok] = 0.0
    return v
