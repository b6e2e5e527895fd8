"""Issue 19 (reliability) in the linear models: each test failed before its fix."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from spred.linear_model import SpredLasso, SpredLogisticRegression, alpha_max, spred_path


def _binary(seed=1, n=500, p=20):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    return X, (X[:, 0] + rng.standard_normal(n) > 0).astype(int)


def test_logistic_alpha_zero_solves_the_unpenalised_problem():
    """alpha=0 used to return all-zero coefficients here (with only a ConvergenceWarning)."""
    X, y = _binary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = SpredLogisticRegression(alpha=0).fit(X, y)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(m.coef_, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(m.intercept_, ref.intercept_, atol=1e-4)
    # the unpenalised optimum: the gradient of the mean log-loss vanishes
    p = 1.0 / (1.0 + np.exp(-(X @ m.coef_[0] + m.intercept_[0])))
    assert np.abs(X.T @ (p - y) / X.shape[0]).max() < 1e-6


def _regression(seed=0, n=200):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    return X, X @ np.array([1.0, -2.0, 0.0, 0.0, 0.5]) + 0.1 * rng.standard_normal(n)


def test_partial_fit_raises_on_divergence_at_the_first_call():
    """learning_rate=1e6 used to return coefficients of ~1e10 from the first partial_fit."""
    X, y = _regression()
    m = SpredLasso(solver="sgd", learning_rate=1e6)
    with pytest.raises(FloatingPointError, match=r"SpredLasso diverged: .*learning_rate=1e\+06\. Lower learning_rate or standardise"):
        m.partial_fit(X, y)
    assert not hasattr(m, "coef_")  # no exploded coefficients are published


def test_classifier_partial_fit_raises_on_divergence():
    X, y = _binary(n=200, p=5)
    clf = SpredLogisticRegression(solver="sgd", learning_rate=1e9)
    with pytest.raises(FloatingPointError, match="SpredLogisticRegression diverged"):
        clf.partial_fit(X * 1e3, y, classes=[0, 1])


def test_a_sane_learning_rate_does_not_trip_the_divergence_check():
    X, y = _regression()
    m = SpredLasso(alpha=0.01, solver="sgd", learning_rate=0.3, random_state=0)
    for chunk in np.array_split(np.arange(200), 20):  # 10-row chunks: noisy, but not divergent
        m.partial_fit(X[chunk], y[chunk])
    assert np.all(np.isfinite(m.coef_))


def test_partial_fit_refuses_different_classes_on_a_later_call():
    X, y = _binary(n=60, p=3)
    clf = SpredLogisticRegression(solver="sgd").partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"classes=\[0, 1, 2\] differs from the classes of the first call to partial_fit, \[0, 1\]"):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    clf.partial_fit(X, y, classes=[1, 0])  # the same set, in another order, is fine
    clf.partial_fit(X, y)


@pytest.mark.parametrize("func", [spred_path, alpha_max])
def test_logistic_path_refuses_a_continuous_target(func):
    """spred_path(loss="logistic") used to fit a 60-class model to a continuous y."""
    X, y = _regression(n=60)
    with pytest.raises(ValueError, match="loss='logistic' needs class labels, but y is of type 'continuous'"):
        func(X, y, loss="logistic")


def test_minibatch_state_starts_at_zero_and_pickles():
    """The factors start at u = 0.1, w = 0 (v = 0), whatever nn.Linear's random init; a
    pickled state resumes exactly."""
    from spred.linear_model._minibatch import MinibatchState

    state = MinibatchState(7, 3, loss="multinomial", alpha=0.1, optimizer="adam", learning_rate=0.01,
                           fit_intercept=True)
    assert not state.coef().any() and not state.intercept().any()
    X, y = _regression()
    m = SpredLasso(alpha=0.05, solver="adam", learning_rate=0.01, random_state=0).partial_fit(X, y)
    twin = pickle.loads(pickle.dumps(m))
    m.partial_fit(X, y)
    twin.partial_fit(X, y)
    np.testing.assert_array_equal(m.coef_, twin.coef_)
    assert m.coef_.any()
