"""SpredLogisticRegression against scikit-learn's saga and liblinear at tight tolerance.

Mapping: ``LogisticRegression(C=1 / (n * alpha), l1_ratio=1)`` has the same objective.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from spred.linear_model import SpredLogisticRegression, alpha_max

from ._helpers import logistic_objective


def _classification(seed, n, p, n_classes):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = np.zeros((n_classes, p))
    W[:, :4] = 2 * rng.standard_normal((n_classes, 4))
    Z = X @ W.T + rng.gumbel(size=(n, n_classes))
    y = np.argmax(Z, axis=1) if n_classes > 2 else (Z[:, 0] > Z[:, 1]).astype(int)
    return X, y


def _reference(X, y, alpha, fit_intercept, solver):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return LogisticRegression(C=1.0 / (X.shape[0] * alpha), l1_ratio=1.0, solver=solver,
                                  fit_intercept=fit_intercept, tol=1e-12,
                                  max_iter=1_000_000).fit(X, y)


@pytest.mark.parametrize(
    ("seed", "n", "p", "n_classes", "fit_intercept", "solver", "div"),
    [
        (0, 100, 20, 2, True, "saga", 5),
        (1, 60, 150, 2, True, "saga", 3),
        (2, 150, 30, 2, False, "liblinear", 10),
        (3, 80, 200, 2, False, "liblinear", 4),
        (4, 120, 15, 3, True, "saga", 5),
        (5, 90, 40, 4, True, "saga", 3),
    ],
)
def test_matches_sklearn(seed, n, p, n_classes, fit_intercept, solver, div):
    X, y = _classification(seed, n, p, n_classes)
    alpha = alpha_max(X, y, loss="logistic", fit_intercept=fit_intercept) / div
    ours = SpredLogisticRegression(alpha=alpha, fit_intercept=fit_intercept).fit(X, y)
    ref = _reference(X, y, alpha, fit_intercept, solver)
    assert ours.coef_.shape == ref.coef_.shape
    assert ours.intercept_.shape == np.atleast_1d(ref.intercept_).shape
    f_ours = logistic_objective(X, y, ours.coef_, ours.intercept_, alpha)
    f_ref = logistic_objective(X, y, ref.coef_, ref.intercept_, alpha)
    assert (f_ours - f_ref) / f_ref <= 1e-6
    np.testing.assert_array_equal(ours.coef_ != 0, ref.coef_ != 0)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_string_labels_probabilities_and_predictions():
    X, y = _classification(6, 80, 10, 3)
    labels = np.array(["ant", "bee", "cat"])[y]
    clf = SpredLogisticRegression(alpha=0.01).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, ["ant", "bee", "cat"])
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[np.argmax(proba, axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))
    assert clf.decision_function(X).shape == (80, 3)
    assert np.allclose(clf.intercept_.sum(), 0.0)


def test_binary_shapes_and_decision_function():
    X, y = _classification(7, 60, 8, 2)
    clf = SpredLogisticRegression(alpha=0.02).fit(X, y)
    assert clf.coef_.shape == (1, 8) and clf.intercept_.shape == (1,)
    d = clf.decision_function(X)
    assert d.shape == (60,)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-d)))


def test_large_alpha_gives_zero_coefficients_and_prior_intercept():
    X, y = _classification(8, 100, 10, 2)
    amax = alpha_max(X, y, loss="logistic")
    clf = SpredLogisticRegression(alpha=amax).fit(X, y)
    assert not np.any(clf.coef_)
    m = y.mean()
    assert clf.intercept_[0] == pytest.approx(np.log(m / (1 - m)), abs=1e-8)


def test_one_class_raises():
    X = np.ones((10, 3))
    with pytest.raises(ValueError, match="needs samples of at least 2 classes"):
        SpredLogisticRegression().fit(X, np.zeros(10))


def test_continuous_targets_raise():
    X = np.ones((10, 3))
    with pytest.raises(ValueError, match="Unknown label type"):
        SpredLogisticRegression().fit(X, np.linspace(0, 1, 10))
