"""Bad input gives scikit-learn-style errors (one pytest.raises per message)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from spred.linear_model import SpredLasso, SpredLogisticRegression

ESTIMATORS = [SpredLasso, SpredLogisticRegression]


def _data(n=20, p=4):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, p))
    return X, (X[:, 0] > 0).astype(int)


@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_X(Est, bad):
    X, y = _data()
    X[3, 1] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        Est().fit(X, y)


def test_non_finite_y():
    X, y = _data()
    y = y.astype(float)
    y[0] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        SpredLasso().fit(X, y)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_inconsistent_lengths(Est):
    X, y = _data()
    with pytest.raises(ValueError, match="Found input variables with inconsistent numbers of samples"):
        Est().fit(X, y[:-1])


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_1d_X(Est):
    X, y = _data()
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array instead"):
        Est().fit(X[:, 0], y)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_empty_arrays(Est):
    with pytest.raises(ValueError, match="Found array with 0 sample"):
        Est().fit(np.empty((0, 3)), np.empty(0))
    with pytest.raises(ValueError, match="Found array with 0 feature"):
        Est().fit(np.empty((5, 0)), np.arange(5) % 2)


@pytest.mark.parametrize("Est", ESTIMATORS)
@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("alpha", -1, r"The 'alpha' parameter of {} must be a float in the range \[0(\.0)?, inf\)\. Got -1 instead\."),
        ("tol", -1e-3, r"The 'tol' parameter of {} must be a float in the range \[0(\.0)?, inf\)"),
        ("max_iter", 0, r"The 'max_iter' parameter of {} must be an int in the range \[1, inf\)"),
        ("solver", "cd", r"The 'solver' parameter of {} must be a str among"),
        ("learning_rate", 0.0, r"The 'learning_rate' parameter of {} must be a float in the range \(0(\.0)?, inf\)"),
        ("batch_size", 0, r"The 'batch_size' parameter of {} must be None or an int"),
        ("threshold", -1.0, r"The 'threshold' parameter of {} must be"),
        ("groups", "rows", r"The 'groups' parameter of {} must be"),
    ],
)
def test_invalid_parameters(Est, param, value, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match.format(Est.__name__)):
        Est(**{param: value}).fit(X, y)


@pytest.mark.parametrize("Est", ESTIMATORS)
def test_predict_before_fit_and_wrong_width(Est):
    X, y = _data()
    with pytest.raises(NotFittedError, match=f"This {Est.__name__} instance is not fitted yet"):
        Est().predict(X)
    est = Est().fit(X, y)
    with pytest.raises(ValueError, match=f"X has 3 features, but {Est.__name__} is expecting 4 features"):
        est.predict(X[:, :3])


def test_multioutput_y_rejected():
    X, y = _data()
    with pytest.raises(ValueError, match="y should be a 1d array"):
        SpredLasso().fit(X, np.column_stack([y, y]).astype(float))


def test_sparse_X_rejected_by_minibatch_solvers():
    import scipy.sparse as sp

    X, y = _data()
    with pytest.raises(TypeError, match="Sparse data was passed"):
        SpredLasso(solver="adam").fit(sp.csr_matrix(X), y)
