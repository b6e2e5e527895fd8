"""spred_path and alpha_max."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import lasso_path

from spred.linear_model import SpredLasso, alpha_max, spred_path

from ._helpers import lasso_objective, make_regression


def test_path_shapes_and_grid():
    X, y, _ = make_regression(0, 50, 80)
    alphas, coefs, n_iters = spred_path(X, y, alphas=12, eps=1e-2, fit_intercept=True)
    assert alphas.shape == (12,) and coefs.shape == (80, 12) and n_iters.shape == (12,)
    assert alphas[0] == pytest.approx(alpha_max(X, y))
    assert alphas[-1] == pytest.approx(1e-2 * alphas[0])
    assert np.all(np.diff(alphas) < 0)
    assert not np.any(coefs[:, 0])
    assert np.count_nonzero(coefs[:, -1]) > np.count_nonzero(coefs[:, 1])
    assert n_iters[0] == 0  # alpha_max: zero is optimal, no iteration needed


def test_path_matches_lasso_path_on_centred_data():
    X, y, _ = make_regression(1, 60, 40)
    X, y = X - X.mean(0), y - y.mean()
    alphas = alpha_max(X, y, fit_intercept=False) * np.array([0.5, 0.2, 0.05])
    a1, c1, _ = spred_path(X, y, alphas=alphas)
    a2, c2, *_ = lasso_path(X, y, alphas=alphas, tol=1e-12, max_iter=100_000)
    np.testing.assert_allclose(a1, a2)
    for k, a in enumerate(a1):
        f1 = lasso_objective(X, y, c1[:, k], 0.0, a)
        f2 = lasso_objective(X, y, c2[:, k], 0.0, a)
        assert (f1 - f2) / f2 <= 1e-9
        np.testing.assert_array_equal(c1[:, k] != 0, c2[:, k] != 0)


def test_unsorted_alphas_are_sorted_and_estimator_reuses_path():
    X, y, _ = make_regression(2, 40, 30)
    amax = alpha_max(X, y, fit_intercept=False)
    alphas, coefs, _ = SpredLasso.path(X, y, alphas=[0.1 * amax, 0.5 * amax])
    np.testing.assert_allclose(alphas, [0.5 * amax, 0.1 * amax])
    m = SpredLasso(alpha=0.1 * amax, fit_intercept=False).fit(X, y)
    np.testing.assert_allclose(coefs[:, 1], m.coef_, atol=1e-9)


def test_warm_start_makes_a_fine_path_cheap():
    X, y, _ = make_regression(3, 60, 300)
    _, _, n_iters = spred_path(X, y, alphas=30, eps=0.05, fit_intercept=True)
    cold = [SpredLasso(alpha=a).fit(X, y).n_iter_
            for a in np.geomspace(alpha_max(X, y), 0.05 * alpha_max(X, y), 30)[-5:]]
    assert n_iters[-5:].sum() <= sum(cold)


def test_logistic_and_multinomial_paths():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((80, 10))
    y = (X[:, 0] > 0).astype(int)
    _, coefs, _ = spred_path(X, y, loss="logistic", alphas=5, fit_intercept=True)
    assert coefs.shape == (10, 5)
    y3 = np.digitize(X[:, 1], [-0.5, 0.5])
    _, coefs3, _ = spred_path(X, y3, loss="logistic", alphas=4, fit_intercept=True)
    assert coefs3.shape == (3, 10, 4)


def test_group_path_and_alpha_max():
    X, y, _ = make_regression(5, 50, 20)
    amax = alpha_max(X, y, groups=5)
    _, coefs, _ = spred_path(X, y, groups=5, alphas=[amax, 0.999 * amax, 0.3 * amax],
                             fit_intercept=True)
    assert not np.any(coefs[:, 0])
    assert np.any(coefs[:, 2])


def test_path_errors():
    X, y, _ = make_regression(6, 20, 5)
    with pytest.raises(ValueError, match="The 'alphas' parameter of spred_path must be"):
        spred_path(X, y, alphas=0)
    with pytest.raises(ValueError, match="alphas must be a non-empty array of finite non-negative"):
        spred_path(X, y, alphas=[-1.0])
    with pytest.raises(ValueError, match=r"coef_init has shape \(3,\); expected \(5,\)"):
        spred_path(X, y, alphas=3, coef_init=np.zeros(3))
    with pytest.raises(ValueError, match="The 'loss' parameter of alpha_max must be"):
        alpha_max(X, y, loss="hinge")
    with pytest.raises(ValueError, match="Found input variables with inconsistent numbers"):
        alpha_max(X, y[:-1])
