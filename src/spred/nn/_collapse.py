"""Back from factors to plain modules, with exact zeros."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred._validation import check_float
from spred.nn._channels import ChannelGroup, _gate_scales
from spred.nn._gates import remove_pass_hooks
from spred.nn._rules import zero_mask
from spred.nn._sparsify import _require

logger = logging.getLogger(__name__)


def _restore_position(params: dict, name: str, position: int) -> None:
    """Put ``name`` back where it was, so parameters and state_dict keys keep the dense order."""
    items = list(params.items())
    item = next(i for i in items if i[0] == name)
    items.remove(item)
    items.insert(min(position, len(items)), item)
    params.clear()
    params.update(items)


def _unparametrize(module: nn.Module, name: str, position: int) -> torch.Tensor:
    """``module.<name>`` becomes a plain Parameter holding the product, at its dense position."""
    with torch.enable_grad():  # under no_grad torch would re-register the weight as a buffer
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    _restore_position(module._parameters, name, position)
    return getattr(module, name)


def _collapse_channels(model: nn.Module, groups: list[ChannelGroup], threshold: float) -> int:
    """Write every gated tensor's value and zero every slice of the channel groups that count as zero."""
    zeros: list[tuple[nn.Module, str, int, torch.Tensor]] = []
    with torch.no_grad():
        for g in groups:  # decide on the whole group first: the gates are gone once the tensors are written
            zero = g.zero_channels(threshold)
            zeros += [(m.module, m.tensor_name, m.dim, m.pos[zero[m.idx]]) for m in g.members if bool(zero[m.idx].any())]
    for module, name, scale in list(_gate_scales(model)):
        _unparametrize(module, name, scale.position)
    written = 0
    with torch.no_grad():
        for module, name, dim, rows in zeros:
            weight = getattr(module, name)
            written += int((weight.index_select(dim, rows) != 0).sum())
            weight.index_fill_(dim, rows, 0.0)
    return written


def collapse(model: nn.Module, *, threshold: float = 0.0, inplace: bool = False) -> nn.Module:
    """Replace every spred product by its value, writing exact zeros where ``|v| <= threshold``.

    The returned model has no parametrisations and the original module classes
    (``type(layer) is nn.Linear``), so it saves, loads and exports like the dense model;
    a tied weight is one Parameter again, held by every module that held it.
    With plain SGD pruned weights reach exact zeros by themselves; with Adam they
    hover near ``lr**2`` and need a threshold (check it with :func:`kkt_residual`).

    Parameters
    ----------
    model : nn.Module
        A model sparsified by :func:`sparsify`.
    threshold : float, default=0.0
        Entries with ``|v| <= threshold`` become exactly 0. For grouped tensors a group
        whose L2 norm is ``<= threshold`` becomes 0 as a whole.
    inplace : bool, default=False
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
    """
    threshold = check_float(threshold, "threshold", "collapse", 0.0)
    for t in _require(model, "collapse"):  # refuse before changing anything (inplace=True)
        places = [(m.name, m.module, m.tensor_name) for m in t.members] if isinstance(t, ChannelGroup) else [(t.name, t.module, t.tensor_name)]
        for name, module, tensor_name in places:
            if len(module.parametrizations[tensor_name]) != 1:
                raise ValueError(f"'{name}' carries other parametrizations besides spred; remove them before collapse.")
    if not inplace:
        model = copy.deepcopy(model)
        # A deep copy of a parametrized module shares torch's injected class with the
        # original; removing a parametrization edits that class, so give each copy its own.
        for module in model.modules():
            if parametrize.is_parametrized(module):
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    units = _require(model, "collapse")
    written = _collapse_channels(model, [t for t in units if isinstance(t, ChannelGroup)], threshold)
    for t in [t for t in units if not isinstance(t, ChannelGroup)]:
        spred = t.spred
        weight = _unparametrize(t.module, t.tensor_name, t.module.__dict__.pop("_spred_position", getattr(spred, "position", 0)))
        for _, module, name in t.aliases:  # a tied weight stays one Parameter
            _unparametrize(module, name, module.__dict__.pop("_spred_position", getattr(spred, "position", 0)))
            setattr(module, name, weight)  # same key: keeps its position
        with torch.no_grad():
            mask = zero_mask(weight, spred.groups, spred.out_dim, threshold)
            written += int((mask & (weight != 0)).sum())
            weight.masked_fill_(mask, 0.0)
    if hasattr(model, "_spred_skipped_groups"):
        del model._spred_skipped_groups
    remove_pass_hooks(model)
    logger.debug("collapse wrote %d exact zeros (threshold %g)", written, threshold)
    return model
