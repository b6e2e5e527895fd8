"""Nonlinear feature selection with spred (scikit-learn API).

:class:`SpredSelector` trains a linear model, an MLP or their ensemble (or your own
network) whose input layer has one spred gate per feature: coupled weight decay on
the gates is the group lasso over each feature's outgoing weights, so dropped
features are exactly zero. It returns exactly ``k`` features
(``n_features_to_select``) or the features kept at a fixed strength (``alpha``),
predicts, and records the regularisation path (``path_``).

>>> from spred.feature_selection import SpredSelector
>>> SpredSelector("linear", n_features_to_select=5).get_params()["model"]
'linear'
"""

from spred.feature_selection._networks import SelectorNet, build_network
from spred.feature_selection._selector import PathPoint, SpredSelector

__all__ = ["PathPoint", "SelectorNet", "SpredSelector", "build_network"]
