"""Magnitude baselines of ``spred run compression``: one-shot, gradual (Zhu & Gupta) and SynFlow.

* :func:`magnitude_prune`: one-shot global magnitude pruning with
  ``torch.nn.utils.prune.global_unstructured`` (Han et al., 2015, one round);
* :class:`GradualMagnitudePruning`: gradual magnitude pruning with the cubic
  schedule of Zhu & Gupta (2017), as an optimizer step hook;
* :func:`synflow_masks`: SynFlow (Tanaka et al., 2020), iterative data-free pruning
  at initialisation.

Each ends on the budget of :func:`~spred.experiments._prune_budget.budget_masks`.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils import prune

from spred._validation import check_int
from spred.experiments._prune_budget import Chain, budget_masks, prunable_weights, top_k_masks
from spred.train import cubic_ramp

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one-shot magnitude pruning


def magnitude_prune(model: nn.Module, budget: int, chain: Chain | None = None) -> dict[str, torch.Tensor]:
    """One-shot global magnitude pruning to a budget, with ``torch.nn.utils.prune``.

    The number of weights to keep comes from :func:`budget_masks` on ``|w|``; the
    smallest ``n_weights - k`` weights over all layers are then removed with
    ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured, amount=...)``
    and made permanent with ``prune.remove`` (plain weights with exact zeros).

    Returns
    -------
    dict of str to bool Tensor
        The kept weights.
    """
    weights = prunable_weights(model)
    kept = budget_masks(model, {n: m.weight.detach().abs() for n, m in weights.items()}, budget, chain)
    k = sum(int(m.sum()) for m in kept.values())
    n_weights = sum(m.weight.numel() for m in weights.values())
    prune.global_unstructured([(m, "weight") for m in weights.values()], pruning_method=prune.L1Unstructured, amount=n_weights - k)
    for m in weights.values():
        prune.remove(m, "weight")
    return {n: m.weight.detach() != 0 for n, m in weights.items()}


# --------------------------------------------------------------------------- gradual magnitude pruning


class GradualMagnitudePruning:
    """Gradual magnitude pruning (Zhu & Gupta, 2017) as an optimizer step hook.

    Every ``every`` optimizer steps between ``start`` and ``end`` the weights are
    pruned globally by magnitude to the kept count
    ``k_t = n - (n - K) * (1 - (1 - p)^3)``, ``p = (t - start) / (end - start)``, where
    ``K`` is the budget count of :func:`budget_masks` (recomputed each time, so the
    last step lands exactly on the budget). Pruned weights stay pruned: the masks are
    ``torch.nn.utils.prune`` masks (``weight = weight_orig * weight_mask``), which
    only shrink. Call :meth:`remove` after training to make the zeros permanent.

    Parameters
    ----------
    model : nn.Module
        Plain model; its prunable weights get an identity prune mask.
    budget : int
        Nonzero parameters at the end of the schedule.
    start, end : int
        First and last pruning step (optimizer steps).
    every : int
        Steps between two pruning steps.
    chain : Chain, optional
        For the budget count.

    Examples
    --------
    >>> gmp = GradualMagnitudePruning(model, budget, start=0, end=1000, every=100)  # doctest: +SKIP
    >>> optimizer.register_step_post_hook(gmp)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, budget: int, *, start: int, end: int, every: int, chain: Chain | None = None):
        if end < start or every < 1:
            raise ValueError(f"GradualMagnitudePruning needs start <= end and every >= 1. Got start={start}, end={end}, every={every}.")
        self.model, self.budget, self.start, self.end, self.every, self.chain = model, budget, start, end, every, chain
        self.weights = prunable_weights(model)
        for m in self.weights.values():
            prune.identity(m, "weight")
        self.n = sum(m.weight.numel() for m in self.weights.values())
        self.t = 0
        self.n_prunes = 0

    def kept(self) -> int:
        return sum(int(m.weight_mask.sum()) for m in self.weights.values())

    @torch.no_grad()
    def prune_now(self, progress: float) -> None:
        scores = {n: (m.weight_orig * m.weight_mask).abs() for n, m in self.weights.items()}
        final = budget_masks(self.model, scores, self.budget, self.chain)
        k_final = sum(int(v.sum()) for v in final.values())
        k = int(round(self.n - (self.n - k_final) * cubic_ramp(progress)))
        masks = final if progress >= 1 else top_k_masks(scores, max(k, k_final))
        for name, m in self.weights.items():
            m.weight_mask.copy_(masks[name].to(m.weight_mask.dtype))
        self.n_prunes += 1

    def __call__(self, optimizer=None, args=None, kwargs=None) -> None:
        self.t += 1
        if self.start <= self.t <= self.end and ((self.t - self.start) % self.every == 0 or self.t == self.end):
            self.prune_now((self.t - self.start) / max(self.end - self.start, 1))

    def remove(self) -> dict[str, torch.Tensor]:
        """Make the zeros permanent (``prune.remove``); returns the kept-weight masks."""
        for m in self.weights.values():
            prune.remove(m, "weight")
        return {n: m.weight.detach() != 0 for n, m in self.weights.items()}


# --------------------------------------------------------------------------- SynFlow


def synflow_masks(model: nn.Module, example: torch.Tensor, budget: int, chain: Chain | None = None, *, rounds: int = 100) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al., 2020): iterative, data-free pruning at initialisation.

    On a float64 copy of the model with every parameter replaced by its absolute
    value (eval mode), the all-ones input gives ``R = sum(model(1))``; the score of a
    weight is ``|w * dR/dw|`` (its synaptic flow). In ``rounds`` rounds the kept
    count goes exponentially from all weights to the budget count ``K``
    (``n * (K / n)^(r / rounds)``), keeping the best-scored weights and recomputing
    the scores on the masked network each round; the last round keeps exactly the
    :func:`budget_masks` selection. No data and no labels are used.

    Parameters
    ----------
    model : nn.Module
        At initialisation; not changed.
    example : Tensor
        Only its shape is used (one all-ones sample of that shape).
    budget : int
        Nonzero parameters allowed.
    chain : Chain, optional
    rounds : int, default=100

    Returns
    -------
    dict of str to bool Tensor
    """
    rounds = check_int(rounds, "rounds", "synflow_masks", 1)
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = prunable_weights(net)
    absolute = {n: m.weight.detach().clone() for n, m in weights.items()}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in absolute.items()}
    n = sum(w.numel() for w in absolute.values())
    ones = torch.ones((1,) + tuple(example.shape[1:]), dtype=torch.float64, device=example.device)
    for r in range(1, rounds + 1):
        with torch.no_grad():
            for name, m in weights.items():
                m.weight.copy_(absolute[name] * masks[name])
        net.zero_grad(set_to_none=True)
        net(ones).sum().backward()
        scores = {name: (m.weight.grad * m.weight).detach().abs() for name, m in weights.items()}
        if r == rounds:
            masks = budget_masks(model, scores, budget, chain)
            break
        if r == 1 or r % 10 == 0:  # the budget count K moves little; refresh it now and then
            k_final = sum(int(v.sum()) for v in budget_masks(model, scores, budget, chain).values())
        masks = top_k_masks(scores, max(int(round(n * (k_final / n) ** (r / rounds))), k_final))
    return masks
