"""Sparse linear models with a scikit-learn API, solved by sparsity by redundancy.

``SpredLasso`` minimises exactly scikit-learn's Lasso objective
``(1/(2n)) ||y - Xw - b||^2 + alpha ||w||_1`` (or the group lasso with ``groups``);
``SpredLogisticRegression`` the mean log-loss plus ``alpha ||W||_1``. Both write the
coefficients as a product of two factors (``w = u * v``) whose ridge penalty is the
L1 penalty at its minimum, solve the smooth problem with L-BFGS on a working set and
finish with an exact polish on the support. NumPy in, NumPy out.
"""

from ._groups import check_groups
from ._lasso import SpredLasso
from ._logistic import SpredLogisticRegression
from ._path import alpha_max, spred_path

__all__ = [
    "SpredLasso",
    "SpredLogisticRegression",
    "alpha_max",
    "check_groups",
    "spred_path",
]
