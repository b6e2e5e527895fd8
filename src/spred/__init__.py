"""spred: sparsity by redundancy.

L1 and group-L1 sparsity for any PyTorch model, trained with plain SGD, Adam or
Adagrad: each sparse weight is written as a product ``v = u * w`` and ordinary
(coupled) weight decay on ``u`` and ``w`` is exactly an L1 penalty on ``v``.
"""

__version__ = "0.1.0"

from spred.compress import PruningPlan, apply_plan, prune_channels
from spred.exceptions import NotSparsifiedError
from spred.nn import (
    KKTReport,
    SparsityReport,
    balanced_split,
    check_optimizer,
    collapse,
    factors,
    get_lam,
    is_sparsified,
    kkt_residual,
    param_groups,
    penalty,
    set_lam,
    sparsify,
    sparsity_report,
)

__all__ = [
    "KKTReport",
    "NotSparsifiedError",
    "PruningPlan",
    "SparsityReport",
    "__version__",
    "apply_plan",
    "balanced_split",
    "check_optimizer",
    "collapse",
    "factors",
    "get_lam",
    "is_sparsified",
    "kkt_residual",
    "param_groups",
    "penalty",
    "prune_channels",
    "set_lam",
    "sparsify",
    "sparsity_report",
]
