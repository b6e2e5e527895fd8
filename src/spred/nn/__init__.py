"""spred for any PyTorch model (torch only: no scikit-learn, no matplotlib).

``sparsify`` registers the product parametrisation (per tensor, or one gate per channel
group across layers with ``groups="channels"``: ``channel_groups`` lists them), ``param_groups`` turns weight
decay into the L1 / group-L1 penalty, ``collapse`` writes exact zeros and restores
plain modules, ``sparsity_report`` and ``kkt_residual`` say how sparse the model is
and whether its zeros are optimal. Every name here is also available as ``spred.<name>``.

What counts as zero, and whether a zero is optimal, is decided in one place,
``spred.nn._rules`` (``zero_mask``, ``zero_units``, ``kkt_residuals``, ...): ``collapse``,
``sparsity_report`` and ``kkt_residual`` all call it, and so does every other part of spred.
"""

from spred.nn._channels import ChannelGroup, channel_groups, skipped_channel_groups
from spred.nn._collapse import collapse
from spred.nn._parametrizations import SpredProduct, balanced_split, preserving_split
from spred.nn._report import KKTReport, SparsityReport, TensorSparsity, kkt_residual, sparsity_report
from spred.nn._optim import check_optimizer, get_lam, param_groups, penalty, set_lam
from spred.nn._sparsify import factors, is_sparsified, sparsified_tensors, sparsify

__all__ = [
    "ChannelGroup",
    "KKTReport",
    "SparsityReport",
    "SpredProduct",
    "TensorSparsity",
    "balanced_split",
    "channel_groups",
    "check_optimizer",
    "collapse",
    "factors",
    "get_lam",
    "is_sparsified",
    "kkt_residual",
    "param_groups",
    "penalty",
    "preserving_split",
    "set_lam",
    "skipped_channel_groups",
    "sparsified_tensors",
    "sparsify",
    "sparsity_report",
]
