"""SpredLasso against scikit-learn's coordinate descent, and its own contracts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso

from spred.linear_model import SpredLasso, alpha_max

from ._helpers import lasso_objective, make_regression

# 20 random problems: wide and tall, with and without intercept, alpha in (alpha_max/50, alpha_max/2)
_SHAPES = [(40, 120), (60, 300), (80, 30), (200, 50), (30, 500)]
PROBLEMS = [
    (seed, *_SHAPES[seed % 5], bool(seed % 2), [2.0, 5.0, 10.0, 20.0, 50.0][(seed // 2) % 5])
    for seed in range(20)
]


@pytest.mark.parametrize(("seed", "n", "p", "fit_intercept", "div"), PROBLEMS)
def test_matches_sklearn_lasso(seed, n, p, fit_intercept, div):
    X, y, _ = make_regression(seed, n, p)
    alpha = alpha_max(X, y, fit_intercept=fit_intercept) / div
    ours = SpredLasso(alpha=alpha, fit_intercept=fit_intercept).fit(X, y)
    ref = Lasso(alpha=alpha, fit_intercept=fit_intercept, tol=1e-10, max_iter=100_000).fit(X, y)
    f_ours = lasso_objective(X, y, ours.coef_, ours.intercept_, alpha)
    f_ref = lasso_objective(X, y, ref.coef_, ref.intercept_, alpha)
    assert (f_ours - f_ref) / f_ref <= 1e-6
    np.testing.assert_array_equal(ours.coef_ != 0, ref.coef_ != 0)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)
    assert ours.stop_crit_ <= 1e-4
    assert ours.dual_gap_ <= 1e-8 * max(f_ref, 1.0)
    assert isinstance(ours.n_iter_, int) and ours.n_iter_ >= 1


def test_kkt_conditions_hold_exactly():
    X, y, _ = make_regression(1, 60, 300)
    alpha = alpha_max(X, y) / 10
    m = SpredLasso(alpha=alpha).fit(X, y)
    Xc, yc = X - X.mean(0), y - y.mean()
    grad = -Xc.T @ (yc - Xc @ m.coef_) / X.shape[0]
    nz = m.coef_ != 0
    np.testing.assert_allclose(grad[nz], -alpha * np.sign(m.coef_[nz]), rtol=0, atol=1e-10)
    assert np.all(np.abs(grad[~nz]) <= alpha * (1 + 1e-10))


def test_sparse_input_gives_the_same_solution():
    X, y, _ = make_regression(2, 80, 40)
    X[np.abs(X) < 0.8] = 0.0
    alpha = alpha_max(X, y) / 10
    dense = SpredLasso(alpha=alpha).fit(X, y)
    for fmt in (sp.csr_matrix, sp.csc_matrix):
        sparse = SpredLasso(alpha=alpha).fit(fmt(X), y)
        np.testing.assert_allclose(sparse.coef_, dense.coef_, atol=1e-10)
        assert sparse.intercept_ == pytest.approx(dense.intercept_, abs=1e-10)
        np.testing.assert_allclose(sparse.predict(fmt(X)), dense.predict(X), atol=1e-9)


def test_alpha_at_least_alpha_max_gives_zeros():
    X, y, _ = make_regression(3, 50, 20)
    amax = alpha_max(X, y)
    m = SpredLasso(alpha=amax).fit(X, y)
    assert not np.any(m.coef_)
    assert m.intercept_ == pytest.approx(y.mean())
    assert m.alpha_max_ == pytest.approx(amax)
    m2 = SpredLasso(alpha=0.99 * amax).fit(X, y)
    assert np.count_nonzero(m2.coef_) >= 1


def test_warm_start_reuses_solution():
    X, y, _ = make_regression(4, 60, 200)
    alpha = alpha_max(X, y) / 20
    m = SpredLasso(alpha=alpha, warm_start=True).fit(X, y)
    coef = m.coef_.copy()
    m.fit(X, y)
    np.testing.assert_allclose(m.coef_, coef, atol=1e-12)
    assert m.n_iter_ <= 10


def test_convergence_warning_reports_criterion_and_tol():
    X, y, _ = make_regression(5, 60, 300, k=30)
    alpha = alpha_max(X, y) / 100
    with pytest.warns(ConvergenceWarning, match=r"SpredLasso did not converge after 1 iterations \(KKT criterion .* > tol 1\.0e-12\)\. Increase max_iter"):
        SpredLasso(alpha=alpha, max_iter=1, tol=1e-12).fit(X, y)


def test_alpha_zero_warns():
    X, y, _ = make_regression(6, 50, 5)
    with pytest.warns(UserWarning, match="With alpha=0, SpredLasso is unregularised"):
        m = SpredLasso(alpha=0.0).fit(X, y)
    ref = np.linalg.lstsq(np.column_stack([X, np.ones(50)]), y, rcond=None)[0]
    np.testing.assert_allclose(m.coef_, ref[:-1], atol=1e-6)


def test_float32_input_and_numpy_outputs():
    X, y, _ = make_regression(7, 40, 10)
    m = SpredLasso(alpha=0.05).fit(X.astype(np.float32), y.astype(np.float32))
    assert isinstance(m.coef_, np.ndarray) and m.coef_.dtype == np.float64
    assert isinstance(m.intercept_, float)
    assert m.predict(X).shape == (40,)


def test_orthogonal_design_closed_form():
    rng = np.random.default_rng(8)
    n, p = 200, 50
    Q, _ = np.linalg.qr(rng.standard_normal((n, p)))
    X = Q * np.sqrt(n)
    w = np.zeros(p)
    w[:10] = rng.standard_normal(10) * 2
    y = X @ w + rng.standard_normal(n)
    alpha = 0.5
    m = SpredLasso(alpha=alpha, fit_intercept=False).fit(X, y)
    z = X.T @ y / n
    np.testing.assert_allclose(m.coef_, np.sign(z) * np.maximum(np.abs(z) - alpha, 0), atol=1e-12)


def test_verbose_logs_to_the_spred_logger(caplog):
    X, y, _ = make_regression(9, 40, 20)
    with caplog.at_level("INFO", logger="spred"):
        SpredLasso(alpha=0.1, verbose=1).fit(X, y)
    assert any("spred ws iter" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="spred"):
        SpredLasso(alpha=0.1).fit(X, y)
    assert not caplog.records


# small problems (at most SMALL_FEATURES features, no more than samples): the exact search alone,
# from zero; correlated columns and alphas down to alpha_max/1000
_SMALL = [(seed, n, p, div) for seed, (n, p) in enumerate([(40, 5), (442, 10), (150, 40), (300, 128)])
          for div in (3.0, 30.0, 1000.0)]


@pytest.mark.parametrize(("seed", "n", "p", "div"), _SMALL)
def test_small_problems_are_solved_exactly_without_lbfgs(seed, n, p, div, monkeypatch):
    import spred.linear_model._working_set as ws

    def no_lbfgs(*args, **kwargs):
        raise AssertionError("L-BFGS ran on a small problem")

    monkeypatch.setattr(ws, "lbfgs", no_lbfgs)
    X, y, _ = make_regression(seed, n, p, k=max(3, p // 4), rho=0.6)
    alpha = alpha_max(X, y) / div
    tol = 1e-8
    ours = SpredLasso(alpha=alpha, tol=tol).fit(X, y)
    ref = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(X, y)
    # the KKT conditions to tol (relative to alpha), recomputed here from the data
    Xc, yc = X - X.mean(0), y - y.mean()
    grad = -Xc.T @ (yc - Xc @ ours.coef_) / n
    nz = ours.coef_ != 0
    kkt = np.concatenate([np.abs(grad[nz] + alpha * np.sign(ours.coef_[nz])),
                          np.maximum(np.abs(grad[~nz]) - alpha, 0.0)])
    assert kkt.max() <= tol * alpha
    np.testing.assert_array_equal(nz, ref.coef_ != 0)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-6 * np.abs(ref.coef_).max())
    assert ours.n_iter_ >= 1  # the Newton solves of the exact search


def test_small_problem_falls_back_to_lbfgs_when_the_exact_search_fails(monkeypatch):
    import spred.linear_model._working_set as ws

    real = ws.polish
    calls = []

    def failing_first(pen_sub, sub, v, b, tol_abs, warm=False, max_enter=None):
        calls.append(max_enter)
        out = real(pen_sub, sub, v, b, tol_abs, warm=warm, max_enter=max_enter)
        return (out[0], out[1], False, out[3]) if len(calls) == 1 else out

    monkeypatch.setattr(ws, "polish", failing_first)
    X, y, _ = make_regression(3, 100, 20, rho=0.6)
    alpha = alpha_max(X, y) / 30
    ours = SpredLasso(alpha=alpha, tol=1e-8).fit(X, y)
    ref = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(X, y)
    assert calls[0] == ws._SMALL_ENTER and len(calls) >= 2  # the exact search, then L-BFGS's polish
    np.testing.assert_array_equal(ours.coef_ != 0, ref.coef_ != 0)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-7)
    assert ours.stop_crit_ <= 1e-8
