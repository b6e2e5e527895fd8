"""Pruning baselines and the shared budget logic of ``spred run compression`` (one import for all).

The code lives in three modules; this one re-exports their public names, so that
``from spred.experiments import _baselines_prune as bp`` reaches all of them:

* :mod:`~spred.experiments._prune_budget`: budgets, chains, dead units, masks;
* :mod:`~spred.experiments._baselines_magnitude`: one-shot and gradual magnitude
  pruning, SynFlow;
* :mod:`~spred.experiments._baselines_str`: STR and the L1 penalty in the loss.

Every method of the compression experiment ends with the same three steps, so that
all of them are measured the same way:

1. **A budget of nonzero parameters.** A compression ratio ``R`` allows
   ``floor(total / R)`` nonzero parameters, where ``total`` counts every weight and
   bias of the original model (buffers never count). :func:`budget_masks` keeps the
   ``k`` best-scored weights (score: ``|w|`` for most methods, the SynFlow score for
   SynFlow) for the largest ``k`` whose model, once its dead units are removed, has at
   most that many nonzero parameters, biases included.
2. **Dead units.** In a chain of layers (:func:`find_chain`: every layer feeds only
   the next one, as in LeNet-300-100 and LeNet-5-Caffe) a unit with no incoming
   weight emits a constant, which is folded exactly into the next layer's bias, and a
   unit whose output no weight reads is useless; :func:`remove_dead_units` writes
   exact zeros for both (weights, biases and outgoing weights) without changing the
   model's function. Models that are not chains (residual networks, BatchNorm) keep
   all their biases in the count.
3. **Masked fine-tuning** with :func:`spred.train.fit` (``mask=``), from a fresh
   optimizer, so pruned weights stay exactly zero: :func:`keep_masks` gives the masks.

The baselines (the peers of the spred paper plus two classical ones):

* :func:`magnitude_prune`: one-shot global magnitude pruning with
  ``torch.nn.utils.prune.global_unstructured`` (Han et al., 2015, one round);
* :class:`GradualMagnitudePruning`: gradual magnitude pruning with the cubic
  schedule of Zhu & Gupta (2017), as an optimizer step hook;
* :func:`synflow_masks`: SynFlow (Tanaka et al., 2020), iterative data-free pruning
  at initialisation;
* :func:`str_sparsify` / :class:`STRController`: soft threshold reparametrisation
  (Kusupati et al., 2020), ``w_sparse = sign(w) * relu(|w| - sigmoid(s))`` with a
  learnable ``s`` per layer;
* :func:`l1_loss`: an L1 penalty added to the loss (plain subgradient descent).
"""

from __future__ import annotations

from spred.experiments._baselines_magnitude import GradualMagnitudePruning, magnitude_prune, synflow_masks
from spred.experiments._baselines_str import STRController, SoftThreshold, l1_loss, str_collapse, str_sparsify
from spred.experiments._prune_budget import (
    PRUNABLE,
    Chain,
    apply_masks,
    budget_masks,
    count_nonzero_after_cleanup,
    find_chain,
    keep_masks,
    max_nonzero,
    prunable_weights,
    remove_dead_units,
    top_k_masks,
)

__all__ = [
    "PRUNABLE",
    "Chain",
    "GradualMagnitudePruning",
    "STRController",
    "SoftThreshold",
    "apply_masks",
    "budget_masks",
    "count_nonzero_after_cleanup",
    "find_chain",
    "keep_masks",
    "l1_loss",
    "magnitude_prune",
    "max_nonzero",
    "prunable_weights",
    "remove_dead_units",
    "str_collapse",
    "str_sparsify",
    "synflow_masks",
    "top_k_masks",
]
