"""spred: sparsity by redundancy.

L1 and group-L1 sparsity for any PyTorch model, trained with plain SGD, Adam or
Adagrad: each sparse weight is written as a product ``v = u * w`` and ordinary
(coupled) weight decay on ``u`` and ``w`` is exactly an L1 penalty on ``v``.
"""

__version__ = "0.1.0"

from spred import nn
from spred.compress import PruningPlan, apply_plan, prune_channels
from spred.exceptions import NotSparsifiedError
from spred.nn import *  # noqa: F403  (the torch-only core: everything in spred.nn.__all__ is also spred.<name>)

__all__ = ["NotSparsifiedError", "PruningPlan", "__version__", "apply_plan", "prune_channels"]
__all__ += nn.__all__
