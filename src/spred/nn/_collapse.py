"""Back from factors to plain modules, with exact zeros."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred._validation import check_float
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


def _unparametrize(module: nn.Module, name: str, spred) -> torch.Tensor:
    """``module.<name>`` becomes a plain Parameter holding the product, at its dense position."""
    with torch.enable_grad():  # under no_grad torch would re-register the weight as a buffer
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    position = module.__dict__.pop("_spred_position", getattr(spred, "position", 0))
    _restore_position(module._parameters, name, position)
    return getattr(module, name)


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
        if len(t.module.parametrizations[t.tensor_name]) != 1:
            raise ValueError(f"'{t.name}' carries other parametrizations besides spred; remove them before collapse.")
    if not inplace:
        model = copy.deepcopy(model)
        # A deep copy of a parametrized module shares torch's injected class with the
        # original; removing a parametrization edits that class, so give each copy its own.
        for module in model.modules():
            if parametrize.is_parametrized(module):
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    written = 0
    for t in list(_require(model, "collapse")):
        spred = t.spred
        weight = _unparametrize(t.module, t.tensor_name, spred)
        for _, module, name in t.aliases:  # a tied weight stays one Parameter
            _unparametrize(module, name, spred)
            setattr(module, name, weight)  # same key: keeps its position
        with torch.no_grad():
            mask = zero_mask(weight, spred.groups, spred.out_dim, threshold)
            written += int((mask & (weight != 0)).sum())
            weight.masked_fill_(mask, 0.0)
    logger.debug("collapse wrote %d exact zeros (threshold %g)", written, threshold)
    return model
