"""scikit-learn's estimator checks for spred's estimators.

Add new estimators to ``ESTIMATORS``; list each known failure in
``EXPECTED_FAILED_CHECKS`` with its reason.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from spred.linear_model import SpredLasso, SpredLogisticRegression

ESTIMATORS = [
    SpredLasso(),
    SpredLasso(groups=1),
    SpredLasso(solver="adam", max_iter=50, learning_rate=0.05, random_state=0),
    SpredLogisticRegression(),
    SpredLogisticRegression(solver="adam", max_iter=50, learning_rate=0.05, random_state=0),
]

# {estimator class name: {check name: reason (and linked issue)}}. Empty: every check
# passes for the estimators above. Extend when adding estimators.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)

