"""Minibatch spred solvers (SGD / Adam / Adagrad on the factors) and partial_fit."""

from __future__ import annotations

import numpy as np
import pytest

from spred.linear_model import SpredLasso, SpredLogisticRegression, alpha_max


def _stream_problem(seed=0, n=2000, p=30, k=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[:k] = [2.0, -1.5, 1.0, -0.8][:k]
    return X, X @ w + 0.3 * rng.standard_normal(n) + 0.5, w


@pytest.mark.parametrize("solver", ["sgd", "adam", "adagrad"])
def test_fit_recovers_support_and_objective(solver):
    X, y, w = _stream_problem()
    alpha = 0.1
    lr = {"sgd": 0.05, "adam": 0.01, "adagrad": 0.1}[solver]
    m = SpredLasso(alpha=alpha, solver=solver, learning_rate=lr, batch_size=128, max_iter=15,
                   random_state=0).fit(X, y)
    ref = SpredLasso(alpha=alpha).fit(X, y)
    np.testing.assert_array_equal(m.coef_ != 0, w != 0)
    np.testing.assert_allclose(m.coef_, ref.coef_, atol=0.05)
    assert m.n_iter_ <= 15


def test_partial_fit_streams_chunks():
    X, y, w = _stream_problem(1)
    m = SpredLasso(alpha=0.1, solver="adam", learning_rate=0.01, batch_size=50, random_state=0)
    for _ in range(10):
        for chunk in np.array_split(np.arange(2000), 8):
            m.partial_fit(X[chunk], y[chunk])
    assert m.n_iter_ == 80
    np.testing.assert_array_equal(m.coef_ != 0, w != 0)
    assert m.intercept_ == pytest.approx(0.5, abs=0.05)


def test_running_gradient_estimate_matches_the_full_gradient_at_a_fixed_point():
    """With a learning rate too small to move the factors, the running average of the
    minibatch gradients is the full-data gradient dL/dv up to sampling noise."""
    from spred.linear_model._minibatch import _minibatch_datafit, full_gradient

    X, y, _ = _stream_problem(2, n=4000)
    m = SpredLasso(alpha=0.1, solver="sgd", learning_rate=1e-12, batch_size=100, random_state=0)
    for _ in range(3):  # the estimate averages the last half of the stream: 6000 samples here
        for chunk in np.array_split(np.arange(4000), 40):
            m.partial_fit(X[chunk], y[chunk])
    state = m._minibatch_state
    G = full_gradient(_minibatch_datafit("squared", X, y, True, 1), state.coef(), state.intercept())
    est = state.grad_estimate()
    # each entry of G is a mean of 4000 terms of spread ~2; the estimate averages all of them
    np.testing.assert_allclose(est, G, atol=0.05)
    assert np.max(np.abs(G)) > 0.5  # not a trivial comparison


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_sgd_lands_on_the_exact_lasso_support_on_correlated_data(seed):
    """Chunks of 500 rows, AR(1)-correlated features: zeros decided with the running
    gradient reproduce the exact Lasso support (the last chunk alone is too noisy).

    At alpha = 0.2 every Lasso zero has |grad_j| <= 0.82 alpha: a zero decays like
    exp(-lr (alpha - |grad_j|) t), so coordinates much closer to the KKT boundary need
    more epochs than these five (seed 0 at alpha = 0.1 keeps one at |grad_j| = 0.85 alpha)."""
    rng = np.random.default_rng(seed)
    n, p = 10000, 60
    X = np.empty((n, p))
    X[:, 0] = rng.standard_normal(n)
    for j in range(1, p):
        X[:, j] = 0.5 * X[:, j - 1] + np.sqrt(1 - 0.25) * rng.standard_normal(n)
    w = np.zeros(p)
    w[rng.choice(p, 6, replace=False)] = rng.choice([-1.0, 1.0], 6) * (0.5 + rng.random(6))
    y = X @ w + rng.standard_normal(n)
    alpha = 0.2
    exact = SpredLasso(alpha=alpha, tol=1e-10).fit(X, y).coef_
    m = SpredLasso(alpha=alpha, solver="sgd", learning_rate=0.3, batch_size=256, random_state=seed)
    for _ in range(5):
        for chunk in np.array_split(np.arange(n), 20):
            m.partial_fit(X[chunk], y[chunk])
    np.testing.assert_array_equal(m.coef_ != 0, exact != 0)
    np.testing.assert_allclose(m.coef_, exact, atol=0.1)  # constant-rate SGD jitters by a few 0.01


def test_partial_fit_only_for_minibatch_solvers():
    m = SpredLasso()
    assert not hasattr(m, "partial_fit")
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as exc:
        m.partial_fit(np.ones((2, 2)), np.ones(2))
    assert "partial_fit is only available for the minibatch solvers" in str(exc.value.__cause__)


def test_partial_fit_rejects_a_different_number_of_features():
    X, y, _ = _stream_problem(2, n=100)
    m = SpredLasso(alpha=0.1, solver="sgd").partial_fit(X, y)
    with pytest.raises(ValueError, match="X has 29 features, but SpredLasso is expecting 30"):
        m.partial_fit(X[:, :-1], y)


def test_classifier_partial_fit_needs_classes():
    X = np.random.default_rng(3).standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    clf = SpredLogisticRegression(solver="adam", learning_rate=0.05)
    with pytest.raises(ValueError, match="classes must be passed on the first call to partial_fit"):
        clf.partial_fit(X, y)
    clf.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"y contains labels \[2\] that are not in classes"):
        clf.partial_fit(X, np.full(40, 2))


def test_minibatch_logistic_support():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3000, 20))
    y = (2 * X[:, 0] - 2 * X[:, 1] + 0.3 * rng.standard_normal(3000) > 0).astype(int)
    a = alpha_max(X, y, loss="logistic") / 5
    clf = SpredLogisticRegression(alpha=a, solver="adam", learning_rate=0.02, batch_size=100,
                                  max_iter=40, random_state=0).fit(X, y)
    ref = SpredLogisticRegression(alpha=a).fit(X, y)
    np.testing.assert_array_equal(clf.coef_ != 0, ref.coef_ != 0)


def test_divergence_raises_floating_point_error():
    X, y, _ = _stream_problem(5, n=200)
    with pytest.raises(FloatingPointError, match="Lower learning_rate or standardise"):
        SpredLasso(alpha=0.01, solver="sgd", learning_rate=1e3, max_iter=5).fit(X * 100, y)


def test_group_minibatch_zeroes_whole_groups():
    X, y, w = _stream_problem(6, n=1500, p=12)
    m = SpredLasso(alpha=0.2, groups=3, group_weights="sqrt_size", solver="adam",
                   learning_rate=0.01, batch_size=64, max_iter=30, random_state=0).fit(X, y)
    ref = SpredLasso(alpha=0.2, groups=3, group_weights="sqrt_size").fit(X, y)
    np.testing.assert_array_equal(m.coef_ != 0, ref.coef_ != 0)
