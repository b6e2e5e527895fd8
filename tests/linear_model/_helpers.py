"""Problem generators and objectives shared by the linear-model tests."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def make_regression(seed, n, p, k=8, intercept=1.5, rho=0.3, noise=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    if rho:
        X[:, 1:] = rho * X[:, :-1] + np.sqrt(1 - rho**2) * X[:, 1:]
    w = np.zeros(p)
    idx = rng.choice(p, size=min(k, p), replace=False)
    w[idx] = rng.choice([-1.0, 1.0], idx.size) * (0.5 + rng.random(idx.size))
    y = X @ w + intercept + noise * rng.standard_normal(n)
    return X, y, w


def lasso_objective(X, y, coef, intercept, alpha):
    r = y - X @ coef - intercept
    return 0.5 * float(r @ r) / X.shape[0] + alpha * float(np.abs(coef).sum())


def group_objective(X, y, coef, intercept, alpha, grp_ptr, weights):
    r = y - X @ coef - intercept
    norms = [np.linalg.norm(coef[grp_ptr[g]:grp_ptr[g + 1]]) for g in range(len(grp_ptr) - 1)]
    return 0.5 * float(r @ r) / X.shape[0] + alpha * float(np.dot(weights, norms))


def logistic_objective(X, y, coef, intercept, alpha):
    """Mean log-loss + alpha ||W||_1; y integer-encoded; coef (K or 1, p)."""
    coef = np.atleast_2d(coef)
    Z = X @ coef.T + intercept
    if coef.shape[0] == 1:
        z = Z[:, 0]
        loss = np.mean(np.logaddexp(0.0, z) - y * z)
    else:
        loss = np.mean(logsumexp(Z, axis=1) - Z[np.arange(X.shape[0]), y])
    return float(loss) + alpha * float(np.abs(coef).sum())
