"""Budgets, chains and dead units: the steps every method of ``spred run compression`` ends with.

1. **A budget of nonzero parameters.** A compression ratio ``R`` allows
   ``floor(total / R)`` nonzero parameters (:func:`max_nonzero`), where ``total`` counts
   every weight and bias of the original model (buffers never count).
   :func:`budget_masks` keeps the ``k`` best-scored weights for the largest ``k`` whose
   model, once its dead units are removed, has at most that many nonzero parameters,
   biases included (:func:`count_nonzero_after_cleanup`).
2. **Dead units.** In a chain of layers (:func:`find_chain`: every layer feeds only
   the next one, as in LeNet-300-100 and LeNet-5-Caffe) a unit with no incoming
   weight emits a constant, which is folded exactly into the next layer's bias
   (:mod:`spred.compress._fold`, the folding ``prune_channels`` uses too), and a unit
   whose output no weight reads is useless; :func:`remove_dead_units` writes exact
   zeros for both without changing the model's function.
3. **Masked fine-tuning** with :func:`spred.train.fit` (``mask=``), from a fresh
   optimizer, so pruned weights stay exactly zero: :func:`keep_masks` gives the masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred.compress import _fold

logger = logging.getLogger(__name__)

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
            if _fold.zero_padding(b) is not None or b.groups != 1 or ya.dim() < 3:
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


@torch.no_grad()
def remove_dead_units(model: nn.Module, chain: Chain | None, example: torch.Tensor) -> dict[str, int]:
    """Write exact zeros for the dead units of a chain, keeping the model's function.

    A unit that receives no weight from a live unit emits a constant: its
    contribution ``W_next[:, unit] * constant`` is added to the next layer's bias
    (exact for Linear consumers and convolutions without padding, which
    :func:`find_chain` guarantees), then its incoming weights, bias and outgoing
    weights are zeroed. A unit whose output no weight reads is zeroed the same way
    (its contribution is 0). Done layer by layer from the input, so constants that
    flow on are folded with their final values. The constants are read and folded by
    :mod:`spred.compress._fold`, the folding of ``prune_channels``.

    Parameters
    ----------
    model : nn.Module
        A plain model (no spred or STR parametrisation); changed in place.
    chain : Chain or None
        From :func:`find_chain`; None does nothing.
    example : Tensor
        Inputs for one forward pass (to read the constants; the first sample is used).

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
        cur, nxt = modules[i], modules[i + 1]
        inputs = _expand(dead, chain.expansion[i]).nonzero().flatten()  # the inputs of the next layer the dead units feed
        _, ranges = _fold.input_ranges(model, ((example[:1],), {}), [nxt])
        constants = _fold.input_constants(ranges, nxt, inputs).to(inputs.device)
        varying = torch.isnan(constants)
        if bool(varying.any()):  # a dead unit that is not constant has no input-free value; no weight may read it
            if bool((nxt.weight.detach().index_select(1, inputs[varying]) != 0).any()):
                raise RuntimeError(f"remove_dead_units: a dead unit of '{chain.names[i]}' is not constant but is read by the next layer.")
            constants = torch.where(varying, torch.zeros_like(constants), constants)
        _fold.fold_inputs(nxt, inputs, constants)
        _fold.silence_inputs(nxt, inputs)
        _fold.clear_units(cur, dead.nonzero().flatten())
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
