"""The synthetic Lasso problems of spred.datasets: orthogonal designs and sparse targets."""

from __future__ import annotations

import numpy as np
import pytest

from spred.datasets import make_orthogonal_design, make_sparse_target


@pytest.mark.parametrize("center", [False, True])
def test_orthogonal_design_is_orthogonal_and_reproducible(center):
    X = make_orthogonal_design(40, 6, center=center, random_state=3)
    np.testing.assert_allclose(X.T @ X / 40, np.eye(6), atol=1e-12)
    if center:
        np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(X, make_orthogonal_design(40, 6, center=center, random_state=np.random.default_rng(3)))
    assert not np.array_equal(X, make_orthogonal_design(40, 6, center=center, random_state=4))
    legacy = np.random.RandomState(0)
    assert make_orthogonal_design(10, 3, random_state=legacy).shape == (10, 3)


def test_sparse_target_has_the_support_and_the_lasso_closed_form_holds():
    from sklearn.linear_model import Lasso

    X = make_orthogonal_design(60, 12, random_state=0)
    y, coef = make_sparse_target(X, 4, coef_range=(0.5, 1.0), noise=0.1, random_state=[0, 1])
    assert (coef != 0).sum() == 4 and np.all((np.abs(coef[coef != 0]) >= 0.5) & (np.abs(coef[coef != 0]) <= 1.0))
    z = X.T @ y / 60
    alpha = 0.3
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    np.testing.assert_allclose(np.sign(z) * np.maximum(np.abs(z) - alpha, 0), ref, atol=1e-10)
    y2, coef2 = make_sparse_target(X, coef=coef, noise=0.0)
    np.testing.assert_allclose(y2, X @ coef)
    np.testing.assert_array_equal(coef2, coef)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: make_orthogonal_design(5, 10), ValueError, r"The 'n_samples' parameter of make_orthogonal_design must be an int >= n_features = 10. Got 5"),
        (lambda: make_orthogonal_design(10, 10, center=True), ValueError, r"n_features \+ 1 \(centred\) = 11. Got 10"),
        (lambda: make_orthogonal_design(10, 2.5), TypeError, r"The 'n_features' parameter of make_orthogonal_design must be an int >= 1"),
        (lambda: make_orthogonal_design(10, 2, random_state="x"), TypeError, r"The 'random_state' parameter of make_orthogonal_design must be None, an int"),
        (lambda: make_orthogonal_design(10, 2, random_state=-1), ValueError, r"The 'random_state' parameter .* Got -1"),
        (lambda: make_sparse_target(np.ones((5, 3)), 4), ValueError, r"The 'n_informative' parameter of make_sparse_target must be an int in the range \[0, 3\]"),
        (lambda: make_sparse_target(np.ones((5, 3)), 1, coef_range=(1.0, 0.5)), ValueError, r"The 'coef_range' parameter of make_sparse_target must be a float in the range \[1, inf\)"),
        (lambda: make_sparse_target(np.ones((5, 3)), coef=[1.0, 2.0]), ValueError, r"The 'coef' parameter of make_sparse_target must be an array of shape \(3,\)"),
        (lambda: make_sparse_target(np.ones((5, 3)), noise=-1.0), ValueError, r"The 'noise' parameter of make_sparse_target must be a float in the range \[0, inf\)"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
