"""scikit-learn's estimator checks for SpredSelector (classifier and regressor).

Small budgets (few epochs per path point) keep the ~50 checks fast; the checks
test the API contract, not the quality of the selection.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from spred.feature_selection import SpredSelector

_FAST = dict(hidden_layer_sizes=(8,), max_iter=5, refit_iter=10, max_bisect=1, random_state=0)

# Every expected failure with its reason (there is no issue tracker link yet: issue 5 of the plan).
_ONE_OF_TWO = (
    "by default the selector keeps n_features // 2 features, i.e. 1 of the 2 features of the check's 3-class blobs; "
    "no classifier reaches the required training accuracy 0.83 on one of them (an RBF SVM gets 0.75 and 0.78), "
    "while with both features SpredSelector gets 0.94"
)
_XFAIL_CLASSIFIER: dict[str, str] = {
    "check_classifiers_train": _ONE_OF_TWO,
    "check_classifiers_train(readonly_memmap=True)": _ONE_OF_TWO,
    "check_classifiers_train(readonly_memmap=True,X_dtype=float32)": _ONE_OF_TWO,
}
_XFAIL_REGRESSOR: dict[str, str] = {}


def _expected_failures(estimator):
    return _XFAIL_REGRESSOR if estimator.task == "regression" else _XFAIL_CLASSIFIER


@parametrize_with_checks(
    [SpredSelector("ensemble", **_FAST), SpredSelector("mlp", task="regression", **{**_FAST, "refit_iter": 100})],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
