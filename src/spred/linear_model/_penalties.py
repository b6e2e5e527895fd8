"""Penalties of spred's linear models: L1 and group L1, and their spred factorisations.

``L1Penalty`` (``alpha ||v||_1``) and ``GroupPenalty`` (``alpha sum_g weight_g
||v_g||_2``) give the value, the dual norm (``alpha_max``), the per-unit KKT violation
and the working-set scores on all features. ``subproblem(units)`` returns the spred
factorisation on a working set (``L1Sub``: ``v = u * w``; ``GroupSub``: ``v_g = s_g *
w_g``): the smooth objective ``L(v) + (alpha/2)(||u||^2 + ||w||^2)`` with its gradient
and a Gauss-Newton preconditioner, which :func:`~._lbfgs.lbfgs` minimises.

The group norms here are NumPy on the solver's flat layout; they are the same numbers
as :func:`spred.nn._rules.group_norms` (tests/linear_model/test_rules_agree.py holds
the two against each other).
"""

from __future__ import annotations

import logging

import numpy as np

from ._groups import check_group_weights, check_groups

logger = logging.getLogger(__name__)

__all__ = ["GroupPenalty", "GroupSub", "L1Penalty", "L1Sub", "flat_group_norms", "l1_violation", "make_penalty"]

INIT_IMBALANCE = 1.2  # u = 1.2 sqrt|v|, w = v / u: function-preserving, not balanced


def flat_group_norms(x, starts):
    """L2 norm of each group of ``x``, the groups stored one after the other from ``starts``.

    The NumPy mirror of :func:`spred.nn._rules.group_norms` on the solvers' flat layout
    (held against it in tests/linear_model/test_rules_agree.py).
    """
    return np.sqrt(np.add.reduceat(x**2, starts))


def l1_violation(v, g, alpha):
    """Per-entry L1 KKT violation ``dist(-g, alpha * d|v|)``: ``|g + alpha sign v|`` on the support,
    ``max(|g| - alpha, 0)`` at zero (the NumPy mirror of :func:`spred.nn._rules.kkt_residuals`)."""
    return np.where(v != 0, np.abs(g + alpha * np.sign(v)), np.maximum(np.abs(g) - alpha, 0.0))


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
        viol = l1_violation(v, g, self.alpha)
        return viol if self.K == 1 else viol.reshape(self.p, self.K).max(axis=1)

    def support_units(self, v):
        nz = v != 0
        return nz if self.K == 1 else nz.reshape(self.p, self.K).any(axis=1)

    def score(self, g):
        a = np.abs(g) if self.K == 1 else np.abs(g).reshape(self.p, self.K).max(axis=1)
        return a / max(self.alpha, 1e-300)

    def subproblem(self, units):
        return L1Sub(self.alpha, units.size * self.K)


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
        return flat_group_norms(v[self.idx], self.ptr[:-1])

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
        res_norm = flat_group_norms(res, self.ptr[:-1])
        gnorm = flat_group_norms(gg, self.ptr[:-1])
        return np.where(nz, res_norm, np.maximum(gnorm - aw, 0.0))

    def support_units(self, v):
        return self._norms(v) > 0

    def score(self, g):
        gnorm = flat_group_norms(g[self.idx], self.ptr[:-1])
        return gnorm / np.maximum(self.alpha * self.weights, 1e-300)

    def subproblem(self, units):
        sizes = self.sizes[units]
        return GroupSub(self.alpha * self.weights[units], sizes)


class L1Sub:
    """Spred factors ``v = u * w`` with penalty ``(alpha/2)(||u||^2 + ||w||^2)``."""

    def __init__(self, alpha, m):
        self.alpha, self.m = alpha, m

    def to_factors(self, v, b, c0):
        a = np.abs(v)
        u = np.where(a > 0, INIT_IMBALANCE * np.sqrt(a), c0)
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


class GroupSub:
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
        return flat_group_norms(v, self.ptr[:-1]) if self.m else np.empty(0)

    def to_factors(self, v, b, c0):
        nv = self.norms(v)
        s = np.where(nv > 0, INIT_IMBALANCE * np.sqrt(nv), c0)
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
