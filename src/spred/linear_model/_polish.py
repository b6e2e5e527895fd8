"""The exact polish of a spred iterate: active-set Newton on its support (L1 and group L1).

Every few L-BFGS iterations the working-set solver rounds the spred iterate to its
support and sign pattern and solves the exact problem there: for L1 a
sign-constrained Newton step (one linear solve for the squared loss, a few Newton
steps for the logistic losses), stepping back to zero any coefficient whose sign
flips (at the first crossing, or, for the squared loss, the full step with every flipped
coefficient at zero when that is lower) and adding back zero coefficients that violate
KKT (feature-sign search); for
groups, Newton steps on the active groups. The polish succeeds when the KKT
conditions hold on the working set, and then zeros are exact.

The rounding is spred's zero rule (:mod:`spred.nn._rules`): ``zero_mask`` with a
``relative_threshold``, and ``kkt_zero`` for the gradient test, mirrored in NumPy (the polish
runs them every round) and held equal to the torch rules by ``tests/linear_model/test_rules_agree.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
from scipy.linalg import lapack


from ._penalties import L1Sub, flat_group_norms, l1_violation

logger = logging.getLogger(__name__)

# the warm polish (continuing an exact solution on a smaller set) may take this many rounds / solves
_WARM_ROUNDS, _WARM_SOLVES = 50, 250
# active sets at least this large keep an updated Cholesky factor (_GramFactor); smaller ones are
# factorised afresh, which costs fewer Python calls
_FACTOR_MIN = 100

__all__ = ["polish", "polish_group", "polish_l1", "relative_zeros"]


def relative_zeros(norms, rel):
    """Where the unit norms ``norms`` (NumPy, >= 0) count as zero under the zero rule with
    the threshold ``rel * max(norms)``: a NumPy mirror of ``zero_mask`` at
    ``relative_threshold`` (:mod:`spred.nn._rules`), kept in NumPy because the polish runs
    it on every Newton round; ``tests/linear_model/test_rules_agree.py`` holds the two equal."""
    top = norms.max() if norms.size else 0.0
    thr = rel * top if top > 0 else 0.0
    return (norms <= thr) | (norms == 0)


def _cholesky(H):
    """Lower Cholesky factor of ``H`` through LAPACK (``potrf``: a few microseconds where
    scipy's checked wrappers cost tens on the polish's small blocks), or None when ``H``
    is not numerically positive definite."""
    c, info = lapack.dpotrf(H, lower=1, clean=1)
    return c if info == 0 else None


def _cho_solve(c, rhs):
    """``H^{-1} rhs`` from the lower Cholesky factor ``c`` of ``H`` (LAPACK ``potrs``)."""
    return lapack.dpotrs(c, rhs, lower=1)[0]


def _solve_psd(H, rhs):
    """Solve ``H d = rhs`` for a symmetric positive semi-definite ``H``."""
    if H.shape[0] == 0:
        return np.zeros_like(rhs)
    mu = 1e-10 * max(np.trace(H) / H.shape[0], 1e-300)
    for damping in (0.0, mu):
        # damping only if singular: a flat direction then gets a long step (and
        # the coefficient that crosses zero first leaves the support)
        c = _cholesky(H if damping == 0.0 else H + damping * np.eye(H.shape[0]))
        if c is not None:
            d = _cho_solve(c, rhs)
            if np.isfinite(d).all():
                return d
    if not (np.isfinite(H).all() and np.isfinite(rhs).all()):
        return np.zeros_like(rhs)
    # singular (collinear features, more active features than samples): pseudo-inverse
    lam, U = scipy.linalg.eigh(H, check_finite=False)
    keep = lam > 1e-12 * max(lam.max(), 1e-300)
    return U[:, keep] @ ((U[:, keep].T @ rhs) / lam[keep])


class _GramFactor:
    """Cholesky factor of the Gram block ``G_FF`` of the squared loss on a set ``F`` of
    entries, kept across the active-set changes of one polish.

    Entries that enter the active set are appended to the factor (a triangular solve,
    ``O(k^2)`` per entry, instead of a new ``O(k^3)`` factorisation); entries that leave stay
    in it and are held at zero by a Lagrange correction (one more pair of triangular solves
    per left entry). The factor is rebuilt on the active set when too many have left.
    ``solve`` returns None when the block is not numerically positive definite (the caller
    then uses :func:`_solve_psd`).
    """

    def __init__(self, sub, m):
        self.sub = sub
        self.F = np.empty(0, dtype=np.int64)
        self.L = np.empty((0, 0))
        self.where = -np.ones(m, dtype=np.int64)  # position of each entry in F, -1 if absent

    def _reset(self):
        self.where[self.F] = -1
        self.F = np.empty(0, dtype=np.int64)
        self.L = np.empty((0, 0))

    def _append(self, new):
        k, a = self.F.size, new.size
        Gnn = self.sub.gram(new, new)
        if k:
            B, info = lapack.dtrtrs(self.L, self.sub.gram(self.F, new), lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("Cholesky factor singular")
            Gnn = Gnn - B.T @ B
        Lnn = _cholesky(Gnn)
        if Lnn is None or not (np.isfinite(Lnn).all()
                               and Lnn.diagonal().min() > 1e-7 * np.sqrt(Gnn.diagonal().max() + 1e-300)):
            raise np.linalg.LinAlgError("Gram block numerically singular")
        L = np.zeros((k + a, k + a), order="F")  # LAPACK order: no copy in each solve
        L[:k, :k] = self.L
        if k:
            L[k:, :k] = B.T
        L[k:, k:] = Lnn
        self.L = L
        self.where[new] = np.arange(k, k + a)
        self.F = np.concatenate([self.F, new])

    def solve(self, A, rhs):
        """``G_AA^{-1} rhs`` or None."""
        in_A = np.zeros(self.F.size, bool)
        pos = self.where[A]
        in_A[pos[pos >= 0]] = True
        n_left = self.F.size - int(in_A.sum())
        if n_left > max(8, A.size // 16):
            self._reset()
            in_A = np.zeros(0, bool)
            n_left = 0
        try:
            new = A[self.where[A] < 0]
            if new.size:
                self._append(new)
                in_A = np.concatenate([in_A, np.ones(new.size, bool)])
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
            self._reset()
            return None
        pos = self.where[A]
        left = np.flatnonzero(~in_A)
        E = np.zeros((self.F.size, 1 + left.size), order="F")
        E[pos, 0] = rhs
        E[left, 1 + np.arange(left.size)] = 1.0
        Z = _cho_solve(self.L, E)
        x = Z[:, 0]
        if left.size:
            # the Lagrange multipliers mu of x_left = 0: (G^-1)_{left,left} mu = -x_left
            try:
                mu = np.linalg.solve(Z[left, 1:], -x[left])
            except np.linalg.LinAlgError:
                self._reset()
                return None
            x = x + Z[:, 1:] @ mu
        x = x[pos]
        return x if np.all(np.isfinite(x)) else None


def _support_estimate(v, gv, alpha, threshold):
    """Entries of the spred iterate ``v`` that start the polish's active set.

    The set is a guess that the Newton steps and the KKT check then correct, so it
    errs towards dropping: an entry leaves when it is small (the zero rule with a
    threshold relative to ``max|v|``) *or* when its gradient is well inside the ball,
    ``|g_j| <= 0.9 alpha`` (the gradient half of ``kkt_zero``, with a 10% KKT slack:
    at a spred stationary point every nonzero entry has ``|g_j| = alpha`` exactly, so
    one with ``|g_j| < 0.9 alpha`` is still shrinking towards zero).
    """
    norms = np.abs(v)
    small = relative_zeros(norms, threshold)
    shrinking = np.abs(gv) <= 0.9 * alpha  # kkt_zero(norms, |g|, 0.9 alpha, inf), in NumPy (a mirror, tested)
    return np.flatnonzero(~(small | shrinking))


class _L1Polish:
    """State of one L1 polish: the iterate, its active set ``A`` with signs ``theta``."""

    def __init__(self, pen, sub, v, b, tol_abs, threshold):
        self.alpha, self.sub, self.nb, self.tol_abs = pen.alpha, sub, sub.nb, tol_abs
        self.v = v.copy()
        self.b = None if b is None else b.copy()
        _, gv, _ = sub.fg(self.v, self.b)
        self.A = _support_estimate(self.v, gv, self.alpha, threshold)
        keep = np.zeros(self.v.size, bool)
        keep[self.A] = True
        self.v[~keep] = 0.0
        self.theta = np.sign(self.v[self.A])
        self.tiny = max(1e-3 * tol_abs, 1e-14 * max(self.alpha, 1e-300))
        self.banned = np.zeros(self.v.size, bool)
        self.fresh = np.zeros(self.v.size, bool)  # added from the KKT check, still at zero
        self.solves = 0
        self.amnesties = 2
        self.max_enter = None  # entries that may enter at a time (None: max(10, |A| / 10))
        self.factor = _GramFactor(sub, self.v.size) if sub.quadratic else None

    def refresh(self):
        self.f, self.gv, self.gb = self.sub.fg(self.v, self.b)

    def _newton_direction(self, rhs):
        self.solves += 1
        if self.factor is not None and self.A.size >= _FACTOR_MIN:
            d = self.factor.solve(self.A, rhs)
            if d is not None:
                return -d
        H = self.sub.hess(self.A, self.v, self.b)
        if not self.sub.quadratic and H.size:
            # Levenberg damping: exactly flat directions (softmax rows) get a
            # long step, so that they cross zero and leave the support
            H.flat[:: H.shape[0] + 1] += 1e-8 * max(np.trace(H) / H.shape[0], 1e-12)
        return -_solve_psd(H, rhs)

    def _cross_zero(self, d, dA, vA, flipped):
        """Sign-inconsistent step, to the better of two points: towards the Newton point up to
        the first sign change (a descent step, as in feature-sign search), dropping the
        coefficients that cross first (within a factor 10); and, for the squared loss, the
        projected Newton point (the full step with every flipped coefficient at zero), which
        lets many coefficients leave with one solve where the first crossing drops one or two."""
        A, alpha = self.A, self.alpha
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cross = np.where(flipped, -vA / dA, np.inf)
        t_min = t_cross.min()
        drop = t_cross <= 10.0 * t_min + 1e-15
        step = t_min if t_min > 0 else 0.0
        v = self.v.copy()
        v[A] = np.where(drop, 0.0, vA + step * dA)
        b = self.b + step * d[A.size:] if self.nb else self.b
        f, gv, gb = self.sub.fg(v, b)
        if self.sub.quadratic and not self.nb:
            vp = self.v.copy()
            vp[A] = np.where(flipped, 0.0, vA + dA)
            fp, gp, _ = self.sub.fg(vp, None)
            if fp + alpha * np.abs(vp[A]).sum() < f + alpha * np.abs(v[A]).sum():
                v, f, gv, drop = vp, fp, gp, flipped
        out = A[drop]
        self.banned[out[self.fresh[out]]] = True
        self.v, self.b, self.f, self.gv, self.gb = v, b, f, gv, gb
        self.A, self.theta = A[~drop], self.theta[~drop]

    def _step_length(self, rhs, d, dA, vA):
        """1 for the squared loss; Armijo backtracking on the sign-fixed objective otherwise."""
        t = 1.0
        if self.sub.quadratic:
            return t
        A, alpha, theta = self.A, self.alpha, self.theta
        F0 = self.f + alpha * (theta @ vA)
        slope = rhs @ d
        while t > 1e-10:
            vt = self.v.copy()
            vt[A] = vA + t * dA
            bt = self.b + t * d[A.size:] if self.nb else None
            if self.sub.fg(vt, bt)[0] + alpha * (theta @ vt[A]) <= F0 + 1e-4 * t * slope:
                break
            t *= 0.5
        return t

    def newton(self, max_solves, n_flip_max):
        """Newton steps on ``A`` with fixed signs: ``"converged"``, ``"stalled"`` or ``"abort"``.

        For the squared loss a full step solves the sign-fixed problem; when the next one does
        not halve the residual, the residual is rounding error and the steps stop
        (``"converged"``; :meth:`certified` then judges it against ``tol_abs``).
        """
        last = np.inf  # the residual before the last full step (squared loss)
        while self.solves < max_solves:
            rhs = self.gv[self.A] + self.alpha * self.theta
            if self.nb:
                rhs = np.concatenate([rhs, self.gb])
            res = np.abs(rhs).max() if rhs.size else 0.0
            if res <= self.tiny or res >= 0.5 * last:
                return "converged"
            d = self._newton_direction(rhs)
            A = self.A
            dA, vA = d[: A.size], self.v[A]
            # alpha = 0 (no penalty): the problem is smooth and signs are free to change
            flipped = self.theta * (vA + dA) < 0 if self.alpha > 0 else np.zeros(A.size, bool)
            if self.solves == 1 and np.count_nonzero(flipped) > n_flip_max:
                return "abort"  # the sign pattern is not identified yet
            if flipped.any():
                self._cross_zero(d, dA, vA, flipped)
                last = np.inf
                continue
            self.fresh[A] = False
            if self.sub.quadratic:
                last = res
            t = self._step_length(rhs, d, dA, vA)
            self.v[A] = vA + t * dA
            if self.nb:
                self.b = self.b + t * d[A.size:]
            self.refresh()
            if t <= 1e-10:
                return "stalled"
        return "stalled"

    def grow(self):
        """Add the zero entries that violate ``|g_j| <= alpha`` (sign ``-sign(g_j)``); False if none."""
        viol = np.abs(self.gv) - self.alpha
        viol[self.A] = -np.inf
        add = np.flatnonzero((viol > self.tiny) & ~self.banned)
        if add.size == 0 and self.amnesties > 0:
            # only entries that flipped on entering still violate: the active set has moved
            # since, so they get one more chance (a bounded number of times)
            add = np.flatnonzero(viol > self.tiny)
            if add.size:
                self.amnesties -= 1
                self.banned[:] = False
        if add.size == 0:
            return False
        limit = max(10, self.A.size // 10) if self.max_enter is None else self.max_enter
        if add.size > limit:
            # the worst violators first: a large batch would flip many signs at once
            add = add[np.argpartition(-viol[add], limit - 1)[:limit]]
        self.fresh[add] = True
        self.A = np.concatenate([self.A, add])
        self.theta = np.concatenate([self.theta, -np.sign(self.gv[add])])
        return True

    def certified(self):
        """The KKT conditions hold on the whole working set to ``tol_abs``."""
        viol = l1_violation(self.v, self.gv, self.alpha)
        worst = viol.max() if viol.size else 0.0
        if self.nb:
            worst = max(worst, np.abs(self.gb).max())
        return bool(worst <= self.tol_abs)


def polish_l1(pen, sub, v, b, tol_abs, max_rounds=6, max_solves=None, threshold=1e-6, warm=False,
              max_enter=None):
    """Exact solve on the support of the rounded spred iterate (active-set Newton).

    The spred iterate ``v`` is rounded to its support ``A`` (see
    :func:`_support_estimate`; ``threshold`` is relative to ``max|v|``) and signs
    ``theta``; then ``f(v_A, b) + alpha theta' v_A`` is minimised by Newton steps (one
    linear solve for the squared loss). The coefficients whose sign would flip are set
    to zero and leave ``A``; after convergence, zero coefficients violating ``|grad_j|
    <= alpha`` enter ``A`` with sign ``-sign(grad_j)`` (an entry that then flips at once
    is not added again; at most ``max(10, |A| / 10)`` enter at a time, the worst violators
    first). The work is bounded; success is certified by the KKT conditions on the
    working set (``max violation <= tol_abs``), so zeros are exact.

    ``warm=True``: ``v`` is an exact solution on a smaller set (the previous working
    set), not a spred iterate, so its signs are trusted: the search continues from it
    (feature-sign search) with more rounds and solves, and never gives up on the first
    solve for flipping signs. ``max_enter``: at most this many entries enter at a time
    (and the warm search gets enough rounds for every entry to enter); with one at a time,
    each entry starts moving with the sign it entered with, so every round lowers the
    objective (feature-sign search). Returns ``(v, b, ok, n_solves)``, ``n_solves`` the
    number of linear (Newton) solves.
    """
    st = _L1Polish(pen, sub, v, b, tol_abs, threshold)
    st.max_enter = max_enter
    n_active = st.A.size
    if n_active > max(sub.n, 50):
        return st.v, st.b, False, 0  # more active entries than samples: not identified yet
    st.refresh()
    if warm:
        max_rounds, max_solves, n_flip_max = _WARM_ROUNDS, _WARM_SOLVES, np.inf
        if max_enter is not None:
            max_rounds = max(max_rounds, -(-st.v.size // max_enter) + 10)
    else:
        n_flip_max = max(10, n_active // 10) if n_active > 200 else n_active + 1
    if max_solves is None:
        # bounded work: many cheap solves on small supports, few on large ones
        base = 8 if sub.quadratic else 20
        max_solves = max(base, min(200, int(3e8 / (n_active**3 + 1))))
    for _ in range(max_rounds):
        status = st.newton(max_solves, n_flip_max)
        if status == "abort":
            return st.v, st.b, False, st.solves
        if status != "converged" or not st.grow():
            break
    return st.v, st.b, st.certified(), st.solves


def _group_newton_direction(pen, sub, v, b, active, nv, tol_abs):
    """``(A, objective, rhs, direction)`` on the active groups, or None when their KKT residual is tiny."""
    A = np.flatnonzero(active[pen.rep])
    grp = pen.rep[A]
    vA = v[A]
    f, gv, gb = sub.fg(v, b)
    rhs = gv[A] + pen.alpha_rep[A] * vA / nv[grp]
    if sub.nb:
        rhs = np.concatenate([rhs, gb])
    tiny = max(1e-3 * tol_abs, 1e-14 * max(pen.alpha_g.max(), 1e-300))
    if rhs.size == 0 or np.abs(rhs).max() <= tiny:
        return None
    H = sub.hess(A, v, b)
    # Hessian of a_g ||v_g||: a_g / ||v_g|| (I - vv'/||v_g||^2), block-diagonal
    for g in np.flatnonzero(active):
        loc = np.flatnonzero(grp == g)
        vg = vA[loc]
        ng_ = nv[g]
        H[np.ix_(loc, loc)] += pen.alpha_g[g] / ng_ * (np.eye(loc.size) - np.outer(vg, vg) / ng_**2)
    return A, f + pen.alpha_g @ nv, rhs, -_solve_psd(H, rhs)


def polish_group(pen, sub, v, b, tol_abs, max_newton=60):
    """Newton on the active groups (where the group norm is smooth). Returns ``(v, b, ok,
    n_newton)``, ``n_newton`` the number of Newton steps."""
    nb = sub.nb
    v = v.copy()
    b = None if b is None else b.copy()
    nv = pen.norms(v)
    if nv.size == 0:
        return v, b, True, 0
    active = ~relative_zeros(nv, 1e-9)
    v[~active[pen.rep]] = 0.0

    def total(vv, bb):
        return sub.fg(vv, bb)[0] + pen.alpha_g @ pen.norms(vv)

    it = 0
    for it in range(max_newton):
        nv = pen.norms(v)
        step = _group_newton_direction(pen, sub, v, b, active, nv, tol_abs)
        if step is None:
            break
        A, F0, rhs, d = step
        slope = rhs @ d
        t = 1.0
        while True:
            vt = v.copy()
            vt[A] = v[A] + t * d[: A.size]
            bt = b + t * d[A.size:] if nb else None
            if total(vt, bt) <= F0 + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        v, b = vt, bt
        dead = active & relative_zeros(pen.norms(v), 1e-10)
        if dead.any():
            active &= ~dead
            v[dead[pen.rep]] = 0.0
    else:
        return v, b, False, max_newton
    _, gv, _ = sub.fg(v, b)
    gnorm = flat_group_norms(gv, pen.ptr[:-1])
    viol = np.where(active, 0.0, gnorm - pen.alpha_g)
    return v, b, bool(viol.max() <= tol_abs), it


def polish(pen_sub, sub, v, b, tol_abs, warm=False, max_enter=None):
    """The polish for the sub-penalty ``pen_sub`` (:class:`L1Sub` or :class:`GroupSub`);
    ``warm``: ``v`` is an exact solution on a smaller set, ``max_enter`` (L1): entries that
    may enter at a time (see :func:`polish_l1`)."""
    if isinstance(pen_sub, L1Sub):
        return polish_l1(pen_sub, sub, v, b, tol_abs, warm=warm, max_enter=max_enter)
    return polish_group(pen_sub, sub, v, b, tol_abs)
