"""Group lasso (penalty groups) against skglm's GroupLasso, and group normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from spred.linear_model import SpredLasso, SpredLogisticRegression, alpha_max, check_groups

from ._helpers import group_objective, make_regression

skglm = pytest.importorskip("skglm")


@pytest.mark.parametrize(
    ("seed", "n", "p", "groups", "weights", "fit_intercept"),
    [
        (0, 100, 60, 3, None, True),
        (1, 50, 120, 4, None, False),
        (2, 200, 40, [10, 5, 5, 20], "sqrt_size", True),
        (3, 80, 150, 5, None, True),
    ],
)
def test_matches_skglm_group_lasso(seed, n, p, groups, weights, fit_intercept):
    X, y, _ = make_regression(seed, n, p)
    _, grp_ptr = check_groups(groups, p)
    sizes = np.diff(grp_ptr)
    w = np.ones(sizes.size) if weights is None else np.sqrt(sizes)
    alpha = alpha_max(X, y, groups=groups, group_weights=weights, fit_intercept=fit_intercept) / 8
    ours = SpredLasso(alpha=alpha, groups=groups, group_weights=weights,
                      fit_intercept=fit_intercept).fit(X, y)
    ref = skglm.GroupLasso(groups=groups, alpha=alpha, weights=w, fit_intercept=fit_intercept,
                           tol=1e-12, max_iter=1000, max_epochs=100_000).fit(X, y)
    f_ours = group_objective(X, y, ours.coef_, ours.intercept_, alpha, grp_ptr, w)
    f_ref = group_objective(X, y, ref.coef_, ref.intercept_, alpha, grp_ptr, w)
    assert (f_ours - f_ref) / f_ref <= 1e-6
    np.testing.assert_array_equal(ours.coef_ != 0, ref.coef_ != 0)
    # whole groups are zero or not
    nz = np.add.reduceat(ours.coef_ != 0, grp_ptr[:-1])
    assert set(np.unique(nz)) <= {0, *sizes.tolist()}


def test_index_list_groups_equal_contiguous_groups_after_permutation():
    X, y, _ = make_regression(4, 60, 12)
    perm = np.random.default_rng(0).permutation(12)
    groups = [perm[3 * g:3 * g + 3].tolist() for g in range(4)]
    a = alpha_max(X, y, groups=groups) / 5
    m1 = SpredLasso(alpha=a, groups=groups).fit(X, y)
    m2 = SpredLasso(alpha=a, groups=3).fit(X[:, perm], y)
    np.testing.assert_allclose(m1.coef_[perm], m2.coef_, atol=1e-8)


def test_singleton_groups_are_the_lasso():
    X, y, _ = make_regression(5, 50, 30)
    a = alpha_max(X, y) / 10
    np.testing.assert_allclose(SpredLasso(alpha=a, groups=1).fit(X, y).coef_,
                               SpredLasso(alpha=a).fit(X, y).coef_, atol=1e-9)


def test_binary_logistic_group_lasso_zeroes_whole_groups():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((150, 20))
    y = (X[:, 0] + X[:, 1] - X[:, 2] + 0.5 * rng.standard_normal(150) > 0).astype(int)
    a = alpha_max(X, y, loss="logistic", groups=4) / 4
    clf = SpredLogisticRegression(alpha=a, groups=4).fit(X, y)
    nz = np.add.reduceat(clf.coef_[0] != 0, np.arange(0, 20, 4))
    assert set(np.unique(nz)) <= {0, 4}
    assert nz[0] == 4


def test_check_groups_forms():
    idx, ptr = check_groups(2, 6)
    np.testing.assert_array_equal(ptr, [0, 2, 4, 6])
    idx, ptr = check_groups([1, 2, 3], 6)
    np.testing.assert_array_equal(ptr, [0, 1, 3, 6])
    idx, ptr = check_groups([[5, 0], [1, 2, 3, 4]], 6)
    np.testing.assert_array_equal(idx, [5, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ptr, [0, 2, 6])


@pytest.mark.parametrize(
    ("groups", "match", "exc"),
    [
        (4, r"n_features \(6\) is not a multiple of the group size groups=4", ValueError),
        ([1, 2], "The group sizes sum to 3 but n_features is 6", ValueError),
        ([[0, 1], [1, 2, 3, 4, 5]], "partition of the features", ValueError),
        ([[0, 1], [2, 3, 4, 9]], r"outside \[0, 5\]", ValueError),
        ([[0, 1], []], "at least one feature index", ValueError),
        ([], "non-empty list", TypeError),
        (["a", "b"], "groups must be an int", TypeError),
    ],
)
def test_check_groups_errors(groups, match, exc):
    with pytest.raises(exc, match=match):
        check_groups(groups, 6)


def test_group_weights_helper_errors():
    from spred.linear_model._groups import check_group_weights

    ptr = np.array([0, 2, 4])
    np.testing.assert_allclose(check_group_weights("sqrt_size", ptr), np.sqrt([2, 2]))
    with pytest.raises(ValueError, match="group_weights must be None, 'sqrt_size' or an array"):
        check_group_weights("size", ptr)


def test_float_indices_in_groups_raise():
    with pytest.raises(TypeError, match="Feature indices in groups must be integers"):
        check_groups([[0.0, 1.0], [2.0]], 3)


def test_group_errors_in_estimators():
    X, y, _ = make_regression(7, 20, 6)
    with pytest.raises(ValueError, match="not a multiple of the group size"):
        SpredLasso(groups=4).fit(X, y)
    with pytest.raises(ValueError, match="group_weights has 2 entries but there are 3 groups"):
        SpredLasso(groups=2, group_weights=[1.0, 1.0]).fit(X, y)
    with pytest.raises(ValueError, match="group_weights must be finite and strictly positive"):
        SpredLasso(groups=2, group_weights=[1.0, 0.0, 1.0]).fit(X, y)
    yc = np.arange(20) % 3
    with pytest.raises(ValueError, match="groups is only supported for the squared and the binary"):
        SpredLogisticRegression(groups=2).fit(X, yc)
