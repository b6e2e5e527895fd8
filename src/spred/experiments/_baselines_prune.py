"""Pruning baselines and the shared budget logic of ``spred run compression``.

Every method of the compression experiment ends with the same three steps, which
live here so that all of them are measured the same way:

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

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize, prune

from spred.train import cubic_ramp

logger = logging.getLogger("spred")

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

#: Layers whose ``weight`` the methods prune (the default of :func:`spred.sparsify`).
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Leaf modules that map a constant channel to a constant channel and keep channels apart.
_CHAIN_LEAVES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)  # fmt: skip


# --------------------------------------------------------------------------- weights and budgets


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """``{fully qualified weight name: module}`` for every Linear / Conv1d / Conv2d with a weight."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules() if isinstance(m, PRUNABLE) and getattr(m, "weight", None) is not None}


def max_nonzero(total: int, ratio: float) -> int:
    """Nonzero parameters allowed at compression ``ratio``: ``floor(total / ratio)``.

    Raises
    ------
    ValueError
        If ``ratio`` is not a finite number >= 1.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"The compression 'ratio' must be a finite number >= 1. Got {ratio!r} instead.")
    return int(math.floor(total / ratio + 1e-9))


@dataclass(frozen=True)
class Chain:
    """Prunable layers that feed each other in sequence, and how to fold a dead unit.

    ``names[i]`` is the weight name of layer ``i``; ``expansion[i]`` the number of
    inputs of layer ``i + 1`` that one output unit of layer ``i`` feeds (1 between two
    convolutions or two Linear layers, ``H * W`` where a convolution is flattened into
    a Linear).
    """

    names: tuple[str, ...]
    expansion: tuple[int, ...]

    def modules(self, model: nn.Module) -> list[nn.Module]:
        """The layers of the chain in ``model`` (any model with the same layer names)."""
        weights = prunable_weights(model)
        return [weights[n] for n in self.names]


def find_chain(model: nn.Module, example: torch.Tensor) -> Chain | None:
    """The prunable layers of ``model`` as a :class:`Chain`, or None if the model is not one.

    A model is a chain when one forward pass calls each leaf module once, every leaf
    reads exactly what the previous one wrote, the leaves are prunable layers or
    channel-wise maps (activations, pooling, flatten, dropout) and no convolution
    after the first layer pads with zeros (a padded border would make the constant of
    a dead channel position-dependent, so it could not be folded into a bias).
    Residual networks and networks with normalisation layers are not chains.

    Parameters
    ----------
    model : nn.Module
    example : Tensor
        One batch of inputs.
    """
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0] if i else None, o))) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not calls or len({id(m) for m, _, _ in calls}) != len(calls):
        return None
    previous = example
    for m, x, y in calls:
        if not isinstance(m, PRUNABLE + _CHAIN_LEAVES) or not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return None
        if x.untyped_storage().data_ptr() != previous.untyped_storage().data_ptr() or x.numel() != previous.numel():
            return None
        previous = y
    if not isinstance(out, torch.Tensor) or out.untyped_storage().data_ptr() != previous.untyped_storage().data_ptr():
        return None
    weights = {id(m): n for n, m in prunable_weights(model).items()}
    layers = [(m, x, y) for m, x, y in calls if id(m) in weights]
    if len(layers) != len(weights) or not layers:
        return None
    expansion = []
    for (a, _, ya), (b, xb, _) in zip(layers[:-1], layers[1:]):
        if isinstance(b, nn.modules.conv._ConvNd):
            if any(p != 0 for p in (b.padding if isinstance(b.padding, tuple) else (1,))) or b.groups != 1 or ya.dim() < 3:
                return None
            expansion.append(1)
        else:
            n_out = ya.shape[1]
            if xb.shape[-1] % n_out:
                return None
            expansion.append(xb.shape[-1] // n_out)
    return Chain(tuple(weights[id(m)] for m, _, _ in layers), tuple(expansion))


def _columns(mask: torch.Tensor, expansion: int) -> torch.Tensor:
    """Per input unit of the previous layer, whether any kept weight of this layer reads it."""
    cols = mask.transpose(0, 1).reshape(mask.shape[1], -1).any(1)  # per input feature / channel
    return cols.view(-1, expansion).any(1) if expansion > 1 else cols


def _expand(unit: torch.Tensor, expansion: int) -> torch.Tensor:
    return unit.repeat_interleave(expansion) if expansion > 1 else unit


def _alive_units(chain: Chain, masks: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the units that keep an incoming weight from a live unit *and* feed a live unit.

    The last layer's units are the model's outputs and always live.
    """
    n = len(chain.names)
    alive = [torch.ones(masks[name].shape[0], dtype=torch.bool, device=masks[name].device) for name in chain.names]
    while True:
        eff = []
        for i, name in enumerate(chain.names):
            m = masks[name]
            if i > 0:
                cols = _expand(alive[i - 1], chain.expansion[i - 1])
                m = m & cols.view((1, -1) + (1,) * (m.dim() - 2))
            eff.append(m)
        new = []
        for i in range(n):
            if i == n - 1:
                new.append(torch.ones_like(alive[i]))
                continue
            has_in = eff[i].flatten(1).any(1)
            has_out = _columns(eff[i + 1], chain.expansion[i])
            new.append(has_in & has_out & alive[i])
        if all(bool((a == b).all()) for a, b in zip(alive, new)):
            return alive
        alive = new


def _other_count(model: nn.Module, exclude: set[int]) -> int:
    """Entries of the parameters not in ``exclude``: all of them count (a zero bias becomes nonzero in fine-tuning)."""
    return sum(p.numel() for p in model.parameters() if id(p) not in exclude)


def count_nonzero_after_cleanup(model: nn.Module, masks: Mapping[str, torch.Tensor], chain: Chain | None) -> int:
    """Nonzero parameters of ``model`` pruned to ``masks`` once its dead units are removed.

    For a chain (:func:`find_chain`): the kept weights between live units, plus the
    biases of live units (every bias of the last layer), plus every other parameter.
    Without a chain: the kept weights plus every other parameter. Biases and other
    parameters count whether or not they are zero now, since fine-tuning trains
    them (a BatchNorm shift starts at 0); this is an upper bound on what
    :func:`remove_dead_units` and masked fine-tuning leave.
    """
    weights = prunable_weights(model)
    skip = {id(p) for m in weights.values() for p in (_param_of(m, "weight"),)}
    if chain is None:
        return sum(int(m.sum()) for m in masks.values()) + _other_count(model, skip)
    alive = _alive_units(chain, masks)
    total = 0
    for i, (name, module) in enumerate(zip(chain.names, chain.modules(model))):
        m = masks[name] & alive[i].view((-1,) + (1,) * (masks[name].dim() - 1))
        if i > 0:
            cols = _expand(alive[i - 1], chain.expansion[i - 1])
            m = m & cols.view((1, -1) + (1,) * (m.dim() - 2))
        total += int(m.sum())
        bias = getattr(module, "bias", None)
        if bias is not None:
            skip.add(id(bias))
            total += int(alive[i].sum())
    return total + _other_count(model, skip)


def _param_of(module: nn.Module, name: str) -> torch.Tensor:
    """The trainable tensor behind ``module.<name>`` (``original`` of a parametrisation, ``<name>_orig`` of torch prune)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, f"{name}_orig", None) if hasattr(module, f"{name}_orig") else getattr(module, name)


def _global_ranks(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank of every entry among all scores (0 = highest); ties broken by position."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double() for n in names])
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = rank[start : start + size].view_as(scores[n])
        start += size
    return out


def top_k_masks(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Keep the ``k`` highest scores over all tensors together (zero scores never kept)."""
    ranks = _global_ranks(scores)
    return {n: (r < k) & (scores[n] > 0) for n, r in ranks.items()}


def budget_masks(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    budget: int,
    chain: Chain | None = None,
    *,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the best-scored weights, as many as a budget of nonzero parameters allows.

    Finds, by bisection, the largest ``k`` such that keeping the ``k`` highest
    ``scores`` (over all prunable weights together, zero scores never kept) leaves at
    most ``budget`` nonzero parameters after :func:`remove_dead_units`
    (:func:`count_nonzero_after_cleanup`; the count grows with ``k``).

    Parameters
    ----------
    model : nn.Module
    scores : mapping of str to Tensor
        One score tensor per prunable weight name, of the weight's shape.
    budget : int
        Nonzero parameters allowed (weights and biases), e.g. :func:`max_nonzero`.
    chain : Chain, optional
        From :func:`find_chain`; without it every other parameter counts.
    limit : int, optional
        Keep at most this many weights.

    Returns
    -------
    dict of str to bool Tensor
        True = kept.

    Raises
    ------
    ValueError
        If even ``k = 0`` exceeds the budget (the parameters that are not pruned
        already use it up).
    """
    ranks = _global_ranks(scores)
    positive = sum(int((s > 0).sum()) for s in scores.values())
    hi = positive if limit is None else min(limit, positive)

    def masks_for(k: int) -> dict[str, torch.Tensor]:
        return {n: (r < k) & (scores[n] > 0) for n, r in ranks.items()}

    if count_nonzero_after_cleanup(model, masks_for(0), chain) > budget:
        raise ValueError(
            f"A budget of {budget} nonzero parameters is smaller than the parameters that are never pruned "
            f"({count_nonzero_after_cleanup(model, masks_for(0), chain)}, biases and norms); lower the compression ratio."
        )
    lo = 0  # count(lo) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_nonzero_after_cleanup(model, masks_for(mid), chain) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return masks_for(lo)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Write exact zeros into every prunable weight where ``masks`` is False."""
    weights = prunable_weights(model)
    for name, keep in masks.items():
        _param_of(weights[name], "weight").masked_fill_(~keep.to(torch.bool), 0.0)


def _consumer_inputs(model: nn.Module, chain: Chain, example: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach())) for m in chain.modules(model)[1:]]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def remove_dead_units(model: nn.Module, chain: Chain | None, example: torch.Tensor) -> dict[str, int]:
    """Write exact zeros for the dead units of a chain, keeping the model's function.

    A unit that receives no weight from a live unit emits a constant: its
    contribution ``W_next[:, unit] * constant`` is added to the next layer's bias
    (exact for Linear consumers and convolutions without padding, which
    :func:`find_chain` guarantees), then its incoming weights, bias and outgoing
    weights are zeroed. A unit whose output no weight reads is zeroed the same way
    (its contribution is 0). Done layer by layer from the input, so constants that
    flow on are folded with their final values.

    Parameters
    ----------
    model : nn.Module
        A plain model (no spred or STR parametrisation); changed in place.
    chain : Chain or None
        From :func:`find_chain`; None does nothing.
    example : Tensor
        Inputs for one forward pass (to read the constants).

    Returns
    -------
    dict of str to int
        Dead units zeroed per layer.
    """
    if chain is None:
        return {}
    modules = chain.modules(model)
    masks = {n: m.weight.detach() != 0 for n, m in zip(chain.names, modules)}
    alive = _alive_units(chain, masks)
    removed = {}
    for i in range(len(chain.names) - 1):
        dead = ~alive[i]
        removed[chain.names[i]] = int(dead.sum())
        if not bool(dead.any()):
            continue
        x = _consumer_inputs(model, chain, example[:1])[i][0]  # input of layer i + 1, one sample
        nxt, cur, e = modules[i + 1], modules[i], chain.expansion[i]
        cols = _expand(dead, e)
        w = nxt.weight
        if isinstance(nxt, nn.Linear):
            contribution = w[:, cols] @ x[cols]
        else:  # unpadded convolution: a constant channel c adds sum(W[:, c]) * c everywhere
            const = x[dead].flatten(1)[:, 0]
            contribution = (w[:, dead].flatten(2).sum(2) * const).sum(1)
        if nxt.bias is None:
            if bool((contribution != 0).any()):
                nxt.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        if nxt.bias is not None:
            nxt.bias.add_(contribution)
        w[:, cols] = 0.0
        cur.weight[dead] = 0.0
        if cur.bias is not None:
            cur.bias[dead] = 0.0
    return removed


def keep_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks for :func:`spred.train.fit` that freeze every exact zero of the weights and of removed units' biases.

    ``True`` = trainable (``fit`` writes 0 where a mask is False). Weights: their
    nonzero entries. A bias entry is frozen when it is 0 and the whole row of its
    weight is zero (a unit removed by :func:`remove_dead_units`), so that a removed
    unit stays removed; a unit with no weights but a nonzero bias keeps training it.
    """
    masks = {}
    for name, m in prunable_weights(model).items():
        w = m.weight.detach()
        masks[name] = w != 0
        bias = getattr(m, "bias", None)
        if bias is not None:
            prefix = name[: -len("weight")]
            masks[f"{prefix}bias"] = w.flatten(1).ne(0).any(1) | (bias.detach() != 0)
    return masks


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
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"The 'rounds' parameter of synflow_masks must be an int >= 1. Got {rounds!r} instead.")
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


# --------------------------------------------------------------------------- STR


class SoftThreshold(nn.Module):
    """STR's parametrisation: ``w_sparse = sign(w) * relu(|w| - sigmoid(s))``, one learnable ``s`` per layer.

    Kusupati et al. (2020), "Soft Threshold Weight Reparameterization for Learnable
    Sparsity". Weight decay on ``w`` and ``s`` raises the threshold ``sigmoid(s)``
    during training; entries below it are exact zeros.
    """

    def __init__(self, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * F.relu(w.abs() - torch.sigmoid(self.s))


def str_sparsify(model: nn.Module, s_init: float) -> list[nn.Parameter]:
    """Put :class:`SoftThreshold` on every prunable weight (in place); returns the ``s`` parameters."""
    out = []
    for module in prunable_weights(model).values():
        st = SoftThreshold(s_init).to(device=module.weight.device, dtype=module.weight.dtype)
        parametrize.register_parametrization(module, "weight", st)
        out.append(st.s)
    return out


def str_collapse(model: nn.Module) -> nn.Module:
    """Replace STR's parametrisation by its value: plain weights with exact zeros (in place)."""
    for module in prunable_weights(model).values():
        if parametrize.is_parametrized(module, "weight"):
            with torch.enable_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


class STRController:
    """Adapt the weight decay of STR's thresholds so that its sparsity follows a cubic ramp to a target.

    STR has no sparsity target: its sparsity follows from the weight decay on the
    threshold parameters ``s``, which pulls ``s`` towards 0 and so raises the
    thresholds ``sigmoid(s)`` against the loss gradient. To compare methods at equal
    compression, every ``update_every`` optimizer steps this hook reads the fraction
    of exact zeros of the STR weights and moves that weight decay multiplicatively,
    ``log(lam) += clip(gain * (wanted(t) - sparsity) / target, -max_step, max_step)``,
    where ``wanted(t)`` ramps from 0 to ``target`` with ``1 - (1 - p)^3`` over
    ``ramp_steps``. The parameter groups marked ``"str"`` (the thresholds) follow
    this rule throughout. Decay pulls ``s`` towards 0, so a threshold never exceeds
    ``sigmoid(0) = 0.5``: at extreme targets (LeNet-5 at 280x) the thresholds saturate
    near 99% zeros while the surviving weights grow past them. From then on (mean
    threshold >= ``saturation``) the decay of the groups marked ``"str_weights"`` (the
    weights: STR decays weights and thresholds alike) rises too, by
    ``log(lam_w) += clip(gain * log((1 - sparsity) / (1 - wanted(t))), ...)``: on the log
    of the density, since near 99.6% zeros one point more is a factor 3 fewer weights.
    It falls back towards its initial value whenever the sparsity is ahead of the ramp.
    A weight below its threshold is not lost: it comes back if the threshold drops.
    """

    def __init__(self, model: nn.Module, target: float, *, ramp_steps: int, update_every: int = 10, gain: float = 0.5,
                 max_step: float = 0.2, lam_bounds: tuple[float, float] = (1e-8, 10.0), saturation: float = 0.45):  # fmt: skip
        self.model, self.target, self.ramp_steps, self.update_every = model, target, max(ramp_steps, 1), update_every
        self.gain, self.max_step, self.lam_bounds, self.saturation = gain, max_step, lam_bounds, saturation
        self.modules = list(prunable_weights(model).values())
        self.t = 0
        self._weights_floor: dict[int, float] = {}

    @torch.no_grad()
    def mean_threshold(self) -> float:
        """Mean of ``sigmoid(s)`` over the layers carrying a :class:`SoftThreshold` (0 if none)."""
        values = [float(torch.sigmoid(p.s)) for m in self.modules if parametrize.is_parametrized(m, "weight")
                  for p in m.parametrizations.weight if isinstance(p, SoftThreshold)]  # fmt: skip
        return sum(values) / len(values) if values else 0.0

    @torch.no_grad()
    def sparsity(self) -> float:
        zeros = total = 0
        for m in self.modules:
            w = m.weight
            zeros += int((w == 0).sum())
            total += w.numel()
        return zeros / total

    def __call__(self, optimizer, args=None, kwargs=None) -> None:
        self.t += 1
        if self.t % self.update_every:
            return
        wanted = self.target * cubic_ramp(self.t / self.ramp_steps)
        sparsity = self.sparsity()
        step = max(-self.max_step, min(self.max_step, self.gain * (wanted - sparsity) / self.target))
        density_gap = math.log(max(1.0 - sparsity, 1e-12) / max(1.0 - wanted, 1e-12))
        step_w = max(-self.max_step, min(self.max_step, self.gain * density_gap))
        saturated = step_w > 0 and self.mean_threshold() >= self.saturation
        for g in optimizer.param_groups:
            if g.get("str"):
                g["weight_decay"] = min(max(g["weight_decay"] * math.exp(step), self.lam_bounds[0]), self.lam_bounds[1])
            elif g.get("str_weights") and (saturated or step_w < 0):
                floor = self._weights_floor.setdefault(id(g), g["weight_decay"])
                g["weight_decay"] = min(max(g["weight_decay"] * math.exp(step_w), floor), self.lam_bounds[1])


# --------------------------------------------------------------------------- L1 in the loss


def l1_loss(model: nn.Module, lam: float, base: Callable | None = None) -> Callable:
    """``loss(out, y) = base(out, y) + lam * sum_l ||W_l||_1`` over the prunable weights.

    The penalty is minimised by plain (sub)gradient steps: weights oscillate around
    zero at the scale of the learning rate instead of reaching it, so the method ends
    with a magnitude threshold (:func:`budget_masks`).
    """
    base = F.cross_entropy if base is None else base
    weights = list(prunable_weights(model).values())

    def loss(out, y):
        return base(out, y) + lam * sum(m.weight.abs().sum() for m in weights)

    return loss
