"""L-BFGS for the spred sub-problems (NumPy, float64): two-loop-free compact form, Armijo line search.

The working-set solver (:mod:`._working_set`) minimises the smooth spred objective
``F(u, w) = L(u * w) + (alpha/2)(||u||^2 + ||w||^2)`` with :func:`lbfgs`. The search
direction uses the compact representation of Byrd, Nocedal and Schnabel (1994), a dozen
NumPy calls per iteration whatever the memory; pairs with ``s'y <= 0`` (the spred
objective is non-convex) are skipped.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.linalg import lapack

logger = logging.getLogger(__name__)

__all__ = ["lbfgs"]


class _Memory:
    """The last ``memory`` pairs ``(s, y)`` and their products ``SY[i, j] = s_i' y_j`` (chronological)."""

    def __init__(self, memory, dim):
        self.S = np.empty((memory, dim))
        self.Y = np.empty((memory, dim))
        self.SY = np.empty((memory, memory))
        self.triu = np.triu(np.ones((memory, memory)))
        self.memory = memory
        self.k = 0

    def push(self, s, yv):
        """Store the pair ``(s, yv)`` if its curvature ``s'y`` is safely positive."""
        sy = s @ yv
        if not (sy > 1e-12 * (yv @ yv) and sy > 0):
            return
        S, Y, SY = self.S, self.Y, self.SY
        k = self.k
        if k == self.memory:
            S[:-1] = S[1:]
            Y[:-1] = Y[1:]
            SY[:-1, :-1] = SY[1:, 1:]
            k -= 1
        S[k] = s
        Y[k] = yv
        SY[k, : k + 1] = Y[: k + 1] @ s
        SY[:k, k] = S[:k] @ yv
        self.k = k + 1

    def direction(self, g, D):
        """``-H g`` with ``H`` the compact L-BFGS inverse Hessian (initial matrix ``gamma * D`` or ``gamma * I``)."""
        k = self.k
        Sk, Yk = self.S[:k], self.Y[:k]
        yl = Yk[-1]
        SY = self.SY
        if D is None:
            gamma = SY[k - 1, k - 1] / (yl @ yl)
            H0g = gamma * g
            YHY = gamma * (Yk @ Yk.T)
        else:
            YD = D(Yk)
            gamma = SY[k - 1, k - 1] / (yl @ YD[-1])
            H0g = gamma * D(g)
            YHY = gamma * (YD @ Yk.T)
        SYk = SY[:k, :k]
        R = SYk * self.triu[:k, :k]
        q1 = Sk @ g
        q2 = Yk @ H0g
        # R is upper triangular with the curvatures s_i'y_i > 0 on its diagonal (LAPACK trtrs:
        # microseconds, where a general solve costs tens per call)
        r = lapack.dtrtrs(R, q1, lower=0)[0]
        p1 = lapack.dtrtrs(R, SYk.diagonal() * r + YHY @ r - q2, lower=0, trans=1)[0]
        ry = r @ Yk
        Hg = H0g + p1 @ Sk - (gamma * ry if D is None else gamma * D(ry))
        return -Hg


def _first_direction(g, D):
    """Steepest descent, scaled by the preconditioner ``D`` when given (its largest entry at most 1)."""
    if D is None:
        return -g / max(np.linalg.norm(g), 1e-300)
    d = -D(g)
    dn = np.abs(d).max()
    if dn > 0:
        d *= min(1.0, 1.0 / dn)
    return d


def _line_search(fun, x, f, d, gd):
    """Armijo backtracking with quadratic interpolation from ``t = 1``: ``(xn, fn, gn)`` or None."""
    t = 1.0
    while True:
        xn = x + t * d
        fn, gn = fun(xn)
        if fn <= f + 1e-4 * t * gd:
            return xn, fn, gn
        denom = 2.0 * (fn - f - gd * t)
        t_new = -gd * t * t / denom if denom > 0 and np.isfinite(fn) else 0.1 * t
        t = min(max(t_new, 0.1 * t), 0.5 * t)
        if t < 1e-20:
            return None


def lbfgs(fun, x, max_iter, *, memory=10, callback=None, gtol=0.0, precond=None):
    """Minimise a smooth function with L-BFGS.

    ``fun(x)`` returns ``(f, grad)``. ``precond(x)``, if given, returns a function
    applying a symmetric positive definite approximation ``D`` of the inverse Hessian
    (to a vector, or to each row of a matrix); the initial matrix is then
    ``gamma * D`` with ``gamma = s'y / y'Dy`` (else ``gamma * I``). Armijo backtracking
    with quadratic interpolation; pairs with ``s'y <= 0`` are skipped.
    ``callback(it, x, f, g)`` is called after every iteration; returning True stops.
    Returns ``(x, f, g, n_iter, status)`` with ``status`` one of ``"max_iter"``,
    ``"nonfinite"``, ``"gtol"``, ``"linesearch"``, ``"callback"``.
    """
    f, g = fun(x)
    mem = _Memory(memory, x.size)
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
        d = _first_direction(g, D) if mem.k == 0 else mem.direction(g, D)
        gd = g @ d
        if not gd < 0:
            mem.k = 0
            d = -g / max(np.linalg.norm(g), 1e-300)
            gd = g @ d
        step = _line_search(fun, x, f, d, gd)
        if step is None:
            return x, f, g, it, "linesearch"
        xn, fn, gn = step
        mem.push(xn - x, gn - g)
        x, f, g = xn, fn, gn
        it += 1
        if callback is not None and callback(it, x, f, g):
            status = "callback"
            break
    return x, f, g, it, status
