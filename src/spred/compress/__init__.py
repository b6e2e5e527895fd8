"""Deploying sparse models (torch only; Torch-Pruning is optional, ``spred[prune]``).

* :func:`prune_channels` removes zero channels / neurons and zero attention heads for
  real, through Torch-Pruning's dependency graph, and returns a :class:`PruningPlan`
  (JSON) that :func:`apply_plan` replays on a fresh model so weights-only checkpoints
  load. Norms and attention layers that lost channels / heads become the exact
  :class:`ZeroChannelLayerNorm`, :class:`ZeroChannelGroupNorm` and
  :class:`HeadPrunedMultiheadAttention` (same parameters as the torch modules).
* :func:`to_sparse` stores the weights of sparse enough Linear / Conv2d layers in
  CSR form (:class:`SparseLinear`, :class:`SparseConv2d`).
* :func:`count_parameters`, :func:`count_flops`, :func:`measure_latency` and
  :func:`compare_latency` (several models timed in turns) measure the result.
"""

from spred.compress._layers import HeadPrunedMultiheadAttention, ZeroChannelGroupNorm, ZeroChannelLayerNorm
from spred.compress._measure import compare_latency, count_flops, count_parameters, measure_latency
from spred.compress._plan import LayerSlicer, PruningPlan, apply_plan, register_slicer
from spred.compress._prune import prune_channels
from spred.compress._sparse import SparseConv2d, SparseLinear, to_dense, to_sparse

__all__ = [
    "HeadPrunedMultiheadAttention",
    "LayerSlicer",
    "PruningPlan",
    "SparseConv2d",
    "SparseLinear",
    "ZeroChannelGroupNorm",
    "ZeroChannelLayerNorm",
    "apply_plan",
    "compare_latency",
    "count_flops",
    "count_parameters",
    "measure_latency",
    "prune_channels",
    "register_slicer",
    "to_dense",
    "to_sparse",
]
