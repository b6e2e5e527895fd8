"""Datafits of spred's linear models (NumPy/SciPy): the losses, computed in one place.

``QuadraticDatafit`` (``(1/(2n)) ||y - Xv - b||^2``, centring done implicitly),
``LogisticDatafit`` (mean binary log-loss) and ``MultinomialDatafit`` (mean softmax
log-loss) give the value and gradient on all features (``fg``, ``value``) and a
sub-problem restricted to a working set (``subproblem``: value, gradient, Hessian
block and a diagonal curvature for the preconditioner). The working-set solver, the
``alpha_max`` computation and the minibatch solver's objective and gradient all use
these classes (skglm's datafit / penalty / solver split).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

logger = logging.getLogger(__name__)

__all__ = ["LogisticDatafit", "MultinomialDatafit", "QuadraticDatafit", "make_datafit"]


def _logsumexp_rows(Z):
    """Row-wise log-sum-exp (NumPy; scipy's generic version is ~100x slower here)."""
    m = Z.max(axis=1)
    return m + np.log(np.exp(Z - m[:, None]).sum(axis=1))


def _sym_block(G, rows, cols):
    """``G[rows][:, cols]`` of a symmetric ``G``: the shorter index list picks whole rows first
    (a contiguous copy), the other then picks within them (transposed when swapped)."""
    if cols.size < rows.size:
        return G.take(cols, axis=0).take(rows, axis=1).T
    return G.take(rows, axis=0).take(cols, axis=1)


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

    def gram(self, rows, cols):
        """The Gram block ``G[rows, cols]`` (local indices)."""
        return _sym_block(self.G, rows, cols)

    def hess(self, A, v, b):
        return self.gram(A, A)

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
        self._gram = gram  # callable: (local rows, local cols) -> Gram block (cached by the datafit)

    def fg(self, v, b):
        r = self.Xw @ v - self.y
        return 0.5 * (r @ r) / self.n, (self.Xw.T @ r) / self.n, None

    def gram(self, rows, cols):
        """The Gram block ``Xw[:, rows]' Xw[:, cols] / n`` (local indices)."""
        if self._gram is not None:
            return self._gram(rows, cols)
        return (self.Xw[:, rows].T @ self.Xw[:, cols]) / self.n

    def hess(self, A, v, b):
        return self.gram(A, A)

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
        f, d, gb = _binary_fg(self._z(v, b), self.y, self.nb)
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


def _binary_fg(z, y, with_intercept):
    """Mean binary log-loss of the scores ``z`` against 0/1 ``y``, its gradient with respect to
    ``z`` (divided by n) and the intercept's gradient (None without one)."""
    f = np.mean(np.logaddexp(0.0, z) - y * z)
    d = (expit(z) - y) / z.shape[0]
    return f, d, (np.array([d.sum()]) if with_intercept else None)


def _multinomial_fg(Z, Y, with_intercept):
    """Mean multinomial log-loss of the scores ``Z`` (n, K) against one-hot ``Y``, the loss's
    gradient with respect to ``Z`` (divided by n) and the intercept's gradient (None without one)."""
    lse = _logsumexp_rows(Z)
    f = np.mean(lse - np.einsum("ij,ij->i", Z, Y))
    D = (np.exp(Z - lse[:, None]) - Y) / Z.shape[0]
    return f, D, (D.sum(axis=0) if with_intercept else None)


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
        f, D, gb = _multinomial_fg(self._Z(v, b), self.Y, self.nb)
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
        self._gram = np.empty((0, 0))  # a view of _gram_buf (grown geometrically)
        self._gram_buf = np.empty((0, 0))
        self._gram_cols = np.empty((0, self.n))  # rows: centred columns of _gram_idx, in that order (dense X)
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
        if not sp.issparse(self.X):
            pos = self._gram_pos[supp]
            if pos.min() >= 0:  # every column is in the Gram cache, centred, one contiguous row each
                return v[supp] @ self._gram_cols.take(pos, axis=0)
        z = self.X[:, supp] @ v[supp]
        if self.offset is not None:
            z = z - self.offset[supp] @ v[supp]
        return np.asarray(z).ravel()

    def _residual(self, v, b):
        r = self.y - self.predict_centred(v)
        return r if b is None else r - b[0]

    def fg(self, v, b=None):
        """Value, gradient on all features and ``None`` (no intercept variable) at ``v``.

        ``b`` (shape (1,)), when given, is an intercept added to the prediction (the
        minibatch solver's explicit intercept); the full-batch solver centres instead.
        """
        if b is None and not v.any():  # at zero the gradient is -X'y / n, computed once
            return 0.5 * (self.y @ self.y) / self.n, -self.Xty(), None
        r = self._residual(v, b)
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

    def _gram_block(self, feats, cols=None):
        """Gram block ``Xc_F' Xc_C / n`` of the features ``feats`` and ``cols`` (default: ``feats``),
        cached across working sets (with the centred columns it was built from, so that a new
        feature costs one product)."""
        if cols is None:
            new = feats[self._gram_pos[feats] < 0]
        else:
            need = np.concatenate([feats, cols])
            new = np.unique(need[self._gram_pos[need] < 0])
        if new.size:
            sparse = sp.issparse(self.X)
            k_old = self._gram_idx.size
            k = k_old + new.size
            if k > self._gram_buf.shape[0]:  # grow the buffers geometrically: amortised O(1) copies
                cap = max(k, 2 * self._gram_buf.shape[0], 64)
                buf = np.empty((cap, cap))
                buf[:k_old, :k_old] = self._gram_buf[:k_old, :k_old]
                self._gram_buf = buf
                if not sparse:
                    rows = np.empty((cap, self.n))
                    rows[:k_old] = self._gram_cols[:k_old]
                    self._gram_cols = rows
            G = self._gram_buf
            if sparse:
                # sparse columns: Xc_a' Xc_b / n = X_a' X_b / n - m_a m_b' (m: the column means)
                Xs_new = self.X[:, new]
                G[:k, k_old:k] = (self.X[:, np.concatenate([self._gram_idx, new])].T @ Xs_new).toarray() / self.n
                if self.offset is not None:
                    G[:k, k_old:k] -= np.outer(self.offset[np.concatenate([self._gram_idx, new])],
                                               self.offset[new])
                G[k_old:k, :k_old] = G[:k_old, k_old:k].T
            else:
                Xnew = self._centred_cols(new).T
                if k_old:
                    cross = self._gram_cols[:k_old] @ Xnew.T / self.n
                    G[:k_old, k_old:k] = cross
                    G[k_old:k, :k_old] = cross.T
                G[k_old:k, k_old:k] = Xnew @ Xnew.T / self.n
                self._gram_cols[k_old:k] = Xnew
            self._gram = G[:k, :k]
            self._gram_idx = np.concatenate([self._gram_idx, new])
            self._gram_pos[new] = np.arange(k_old, k)
        pos = self._gram_pos[feats]
        if cols is not None:
            return _sym_block(self._gram, pos, self._gram_pos[cols])
        if pos.size == self._gram_idx.size and np.array_equal(pos, np.arange(pos.size)):
            return self._gram.copy()
        return self._gram.take(pos, axis=0).take(pos, axis=1)

    def subproblem(self, feats):
        k = feats.size
        if k <= self.n:
            G = self._gram_block(feats)
            return _QuadraticGramSub(G, self.Xty()[feats], 0.5 * (self.y @ self.y) / self.n, self.n)
        return _QuadraticMatrixSub(self._centred_cols(feats), self.y,
                                   gram=lambda rows, cols: self._gram_block(
                                       feats[rows], None if cols is rows else feats[cols]))

    def value(self, v, b=None):
        r = self._residual(v, b)
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
        f, d, gb = _binary_fg(self._z(v, b), self.y, self.nb)
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
        f, D, gb = _multinomial_fg(self._Z(v, b), self.Y, self.nb)
        return f, np.asarray(self.X.T @ D).ravel(), gb

    def value(self, v, b):
        Z = self._Z(v, b)
        return np.mean(_logsumexp_rows(Z) - np.einsum("ij,ij->i", Z, self.Y))

    def subproblem(self, feats):
        return _MultinomialSub(_columns(self.X, feats), self.Y, self.fit_intercept)




def make_datafit(loss, X, y, fit_intercept, n_classes=None):
    """Datafit for ``loss`` on validated data.

    For ``loss="squared"`` the intercept is handled by centring (implicitly for
    sparse ``X``): returns ``(datafit, X_offset, y_offset)``. For the logistic losses
    ``y`` must already be encoded (0/1 vector, or an integer class vector for
    ``"multinomial"``, with ``n_classes`` classes: ``max(y) + 1`` by default) and the
    intercept is a solver variable.
    """
    if loss == "squared":
        y = np.asarray(y, dtype=np.float64)
        if fit_intercept:
            X_offset = np.asarray(X.mean(axis=0)).ravel()
            y_offset = float(y.mean())
            return QuadraticDatafit(X, y - y_offset, X_offset), X_offset, y_offset
        return QuadraticDatafit(X, y, None), None, 0.0
    if loss == "logistic":
        return LogisticDatafit(X, np.asarray(y, dtype=np.float64), fit_intercept), None, 0.0
    if loss == "multinomial":
        y = np.asarray(y, dtype=np.int64)
        K = int(y.max()) + 1 if n_classes is None else int(n_classes)
        Y = np.zeros((y.size, K))
        Y[np.arange(y.size), y] = 1.0
        return MultinomialDatafit(X, Y, fit_intercept), None, 0.0
    raise ValueError(f"Unknown loss {loss!r}.")  # pragma: no cover - validated upstream
