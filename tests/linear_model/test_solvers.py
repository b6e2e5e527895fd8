"""The pure solver functions: spred objective, L-BFGS, polish, zero decisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spred.linear_model._datafits import _LogisticSub, _QuadraticGramSub, _QuadraticMatrixSub
from spred.linear_model._lbfgs import lbfgs
from spred.linear_model._penalties import GroupSub, L1Sub
from spred.linear_model._datafits import QuadraticDatafit
from spred.linear_model._polish import _GramFactor, _solve_psd, polish_l1


def test_lbfgs_minimises_a_quadratic():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((20, 20))
    H = A @ A.T + np.eye(20)
    b = rng.standard_normal(20)

    def fun(x):
        return 0.5 * x @ H @ x - b @ x, H @ x - b

    x, f, g, it, status = lbfgs(fun, np.zeros(20), 500, gtol=1e-7)
    np.testing.assert_allclose(x, np.linalg.solve(H, b), atol=1e-7)
    assert status == "gtol" and it < 100


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-10, 10)))
def test_factor_init_preserves_v_and_is_off_the_trap_line(v):
    sub = L1Sub(alpha=0.3, m=v.size)
    x = sub.to_factors(v, None, c0=0.7)
    u, w = x[: v.size], x[v.size:]
    np.testing.assert_allclose(u * w, v, atol=1e-12)
    assert np.all(u > 0)  # never on u = -w (nor u = w) for nonzero v: not balanced
    nz = v != 0
    assert not np.any(np.isclose(np.abs(u[nz]), np.abs(w[nz]), rtol=1e-3, atol=0.0))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-10, 10)))
def test_balanced_ridge_equals_l1(v):
    u = np.sqrt(np.abs(v))
    w = np.sign(v) * u
    alpha = 0.7
    assert 0.5 * alpha * (u @ u + w @ w) == pytest.approx(alpha * np.abs(v).sum(), abs=1e-9)


def test_spred_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 6))
    y = rng.standard_normal(30)
    sub = _QuadraticMatrixSub(X, y)
    pen = L1Sub(alpha=0.2, m=6)
    fun, _ = pen.objective(sub)
    x = rng.standard_normal(12)
    f, g = fun(x)
    eps = 1e-6
    num = np.array([(fun(x + eps * e)[0] - fun(x - eps * e)[0]) / (2 * eps) for e in np.eye(12)])
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_group_spred_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 6))
    y = (rng.random(30) > 0.5).astype(float)
    sub = _LogisticSub(X, y, fit_intercept=True)
    pen = GroupSub(np.array([0.1, 0.2, 0.3]), np.array([1, 2, 3]))
    fun, _ = pen.objective(sub)
    x = rng.standard_normal(3 + 6 + 1)
    f, g = fun(x)
    eps = 1e-6
    num = np.array([(fun(x + eps * e)[0] - fun(x - eps * e)[0]) / (2 * eps) for e in np.eye(x.size)])
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_polish_is_exact_from_a_rough_iterate():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 8))
    y = X[:, 0] * 2 - X[:, 1] + 0.1 * rng.standard_normal(50)
    G, c = X.T @ X / 50, X.T @ y / 50
    sub = _QuadraticGramSub(G, c, 0.0, 50)
    alpha = 0.1
    pen = L1Sub(alpha, 8)
    rough = np.array([1.9, -0.9, 1e-9, -2e-9, 0.02, 0.0, 0.0, 0.0])
    v, _, ok, _ = polish_l1(pen, sub, rough, None, tol_abs=1e-12)
    assert ok
    g = G @ v - c
    nz = v != 0
    np.testing.assert_allclose(g[nz], -alpha * np.sign(v[nz]), atol=1e-12)
    assert np.all(np.abs(g[~nz]) <= alpha + 1e-12)


def test_gram_factor_solves_on_every_active_set_it_passes_through():
    # entries enter (appended to the factor) and leave (held at zero by multipliers) as in a
    # feature-sign search; every solve must equal a fresh solve on the active set
    rng = np.random.default_rng(7)
    X = rng.standard_normal((120, 80))
    G = X.T @ X / 120
    sub = _QuadraticGramSub(G, np.zeros(80), 0.0, 120)
    factor = _GramFactor(sub, 80)
    A = np.arange(10)
    for step in range(20):
        if step % 3 == 2 and A.size > 5:
            A = np.delete(A, rng.choice(A.size, 2, replace=False))  # leave
        else:
            out = np.setdiff1d(np.arange(80), A)
            A = np.concatenate([A, rng.choice(out, 3, replace=False)])  # enter, at the end
        rhs = rng.standard_normal(A.size)
        d = factor.solve(A, rhs)
        np.testing.assert_allclose(d, np.linalg.solve(G[np.ix_(A, A)], rhs), rtol=1e-9, atol=1e-10)


def test_gram_factor_declines_a_singular_block():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((10, 30))  # 30 features, rank 10
    sub = _QuadraticGramSub(X.T @ X / 10, np.zeros(30), 0.0, 10)
    assert _GramFactor(sub, 30).solve(np.arange(20), np.ones(20)) is None


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("wide", [False, True])
def test_gram_blocks_of_the_subproblems_agree_with_the_centred_data(wide, sparse):
    import scipy.sparse as sps

    rng = np.random.default_rng(9)
    n, p = (20, 60) if wide else (60, 20)
    X = (rng.standard_normal((n, p)) + 3.0) * (rng.random((n, p)) < 0.3)
    datafit = QuadraticDatafit(sps.csc_matrix(X) if sparse else X, rng.standard_normal(n), X.mean(axis=0))
    datafit.subproblem(rng.choice(p, 5, replace=False))  # a first working set: the Gram cache grows after it
    feats = rng.choice(p, 30 if wide else 12, replace=False)
    sub = datafit.subproblem(feats)
    assert isinstance(sub, _QuadraticMatrixSub if wide else _QuadraticGramSub)
    Xc = X - X.mean(axis=0)
    rows, cols = np.array([3, 0, 5]), np.array([1, 5, 7, 2])
    expected = Xc[:, feats[rows]].T @ Xc[:, feats[cols]] / n
    np.testing.assert_allclose(sub.gram(rows, cols), expected, atol=1e-12)
    np.testing.assert_allclose(sub.hess(rows, None, None), Xc[:, feats[rows]].T @ Xc[:, feats[rows]] / n, atol=1e-12)


def test_warm_polish_continues_an_exact_solution_on_a_smaller_set():
    # the solution on the first half of the features, then the polish on all of them
    # (warm): it must reach the exact Lasso solution in feature-sign steps, without L-BFGS
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(10)
    n, p = 60, 120
    X = rng.standard_normal((n, p))
    X[:, 1:] = 0.6 * X[:, :-1] + 0.8 * X[:, 1:]  # correlated neighbours
    y = X[:, :30] @ rng.standard_normal(30) + 0.1 * rng.standard_normal(n)
    X -= X.mean(axis=0)
    y -= y.mean()
    alpha = 0.01 * np.abs(X.T @ y).max() / n
    G, c = X.T @ X / n, X.T @ y / n
    half = np.arange(p // 2)
    v = np.zeros(p)
    v[half], _, ok, _ = polish_l1(L1Sub(alpha, half.size), _QuadraticGramSub(G[np.ix_(half, half)], c[half], 0.0, n),
                               Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(
                                   X[:, half], y).coef_, None, tol_abs=1e-10 * alpha)
    assert ok
    sub = QuadraticDatafit(X, y).subproblem(np.arange(p))
    w, _, ok, _ = polish_l1(L1Sub(alpha, p), sub, v, None, tol_abs=1e-9 * alpha, warm=True)
    assert ok
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(X, y).coef_
    np.testing.assert_allclose(w, ref, atol=1e-7)
    g = G @ w - c
    nz = w != 0
    np.testing.assert_allclose(g[nz], -alpha * np.sign(w[nz]), atol=1e-9 * alpha)
    assert np.all(np.abs(g[~nz]) <= alpha * (1 + 1e-9))


def test_decide_zeros_keeps_small_kkt_violators():
    from torch import nn

    from spred.linear_model._minibatch import decide_zeros

    v = np.array([[1e-6], [1e-6], [0.5]])
    g = np.array([[0.05], [0.2], [-0.1]])
    out = decide_zeros(nn.Linear(3, 1), v, g, alpha=0.1, threshold=1e-3)
    np.testing.assert_array_equal(out[:, 0], [0.0, 1e-6, 0.5])


def test_solve_psd_handles_singular_matrices():
    H = np.ones((3, 3))
    d = _solve_psd(H, np.array([3.0, 3.0, 3.0]))
    np.testing.assert_allclose(H @ d, [3.0, 3.0, 3.0])


def test_duplicated_features_give_a_valid_lasso_solution():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 3))
    X = np.column_stack([x, x[:, 0]])
    y = 2 * x[:, 0] + 0.1 * rng.standard_normal(40)
    from spred.linear_model import SpredLasso

    m = SpredLasso(alpha=0.1).fit(X, y)
    assert m.coef_[0] * m.coef_[3] >= 0
    assert m.coef_[0] + m.coef_[3] == pytest.approx(
        SpredLasso(alpha=0.1).fit(x, y).coef_[0], abs=1e-8)


def test_non_finite_coefficients_raise():
    from spred.linear_model._base import _check_finite

    with pytest.raises(FloatingPointError, match="SpredLasso produced non-finite coefficients"):
        _check_finite("SpredLasso", np.array([1.0, np.nan]))


def test_warm_start_from_the_solution_is_certified_by_the_polish_alone():
    # a warm start at the solution: the polish before L-BFGS certifies it (0 L-BFGS iterations, 0 Newton solves),
    # and the result is the cold fit's (same support and signs, KKT to tol)
    from sklearn.datasets import load_diabetes

    from spred.linear_model import SpredLasso, alpha_max

    X, y = load_diabetes(return_X_y=True)
    a = alpha_max(X, y) / 100
    cold = SpredLasso(alpha=a, tol=1e-8).fit(X, y)
    warm = SpredLasso(alpha=a, tol=1e-8, warm_start=True)
    warm.coef_ = cold.coef_.copy()
    warm.fit(X, y)
    assert warm.n_iter_ == 0
    assert np.array_equal(np.sign(warm.coef_), np.sign(cold.coef_))
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=1e-8, atol=1e-10)
    assert warm.stop_crit_ <= 1e-8


def test_polish_gives_an_entry_that_flipped_on_entering_a_second_chance():
    # from a rough spred iterate on diabetes the feature-sign search bans an entry that flips on
    # entering; once the active set has moved it re-enters and the polish is certified
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Lasso

    from spred.linear_model import alpha_max

    X, y = load_diabetes(return_X_y=True)
    Xc, yc = X - X.mean(0), y - y.mean()
    n = X.shape[0]
    a = alpha_max(X, y) / 100
    sub = _QuadraticGramSub(Xc.T @ Xc / n, Xc.T @ yc / n, 0.5 * yc @ yc / n, n)
    ref = Lasso(alpha=a, tol=1e-12, max_iter=100_000).fit(X, y).coef_
    rng = np.random.default_rng(0)
    certified = 0
    for _ in range(5):  # rough iterates: the solution plus noise on every entry
        v0 = ref + 0.3 * np.abs(ref).max() * rng.standard_normal(ref.size)
        v, _, ok, _ = polish_l1(L1Sub(a, ref.size), sub, v0, None, 1e-8 * a)
        certified += ok
        if ok:
            np.testing.assert_allclose(v, ref, rtol=1e-6, atol=1e-8)
            assert np.array_equal(v != 0, ref != 0)
    assert certified >= 4


@pytest.mark.parametrize("seed", range(8))
def test_feature_sign_search_one_entry_at_a_time_reaches_the_lasso_solution(seed):
    # from zero, entering one at a time (max_enter=1), each entry starts moving with its sign, so
    # every round lowers the objective: the search is certified without bans or L-BFGS
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(seed)
    n, p = 60, 25
    X = rng.standard_normal((n, p))
    for j in range(1, p):  # AR(1) columns, correlation 0.9 between neighbours
        X[:, j] = 0.9 * X[:, j - 1] + np.sqrt(1 - 0.81) * X[:, j]
    y = X @ (rng.standard_normal(p) * (rng.random(p) < 0.5)) + rng.standard_normal(n)
    alpha = np.abs(X.T @ y).max() / n / [3.0, 30.0, 300.0, 3000.0][seed % 4]
    G, c = X.T @ X / n, X.T @ y / n
    sub = _QuadraticGramSub(G, c, 0.5 * (y @ y) / n, n)
    v, _, ok, solves = polish_l1(L1Sub(alpha, p), sub, np.zeros(p), None, 1e-10 * alpha, warm=True,
                                 max_enter=1)
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(X, y).coef_
    assert ok and solves >= np.count_nonzero(ref)
    np.testing.assert_array_equal(v != 0, ref != 0)
    np.testing.assert_allclose(v, ref, atol=1e-7 * np.abs(ref).max())
