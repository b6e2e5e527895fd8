"""The prediction network of :class:`~spred.feature_selection.SpredSelector`.

:func:`final_network` turns the path's sparsified network into a plain one whose
input columns outside the support are exactly zero; :func:`refit` trains it again on
the selected columns only (a compact input layer, trained by :func:`spred.train.fit`
without the group penalty) and writes them back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import spred
from spred.feature_selection._networks import new_linear, swap_layer
from spred.feature_selection._path import Result
from spred.train import fit

__all__ = ["RefitSettings", "final_network", "refit"]


def _layer(net: nn.Module, name: str) -> nn.Linear:
    return net.get_submodule(name) if name else net


def final_network(res: Result, build: Callable[[], nn.Module], name: str, support: np.ndarray) -> nn.Module:
    """A plain network whose input columns outside ``support`` are exactly zero.

    ``res.net`` is the path's (sparsified, possibly column-pruned) network; with
    stability selection there is none and ``build()`` makes an untrained one.
    """
    net = build() if res.net is None else spred.collapse(res.net.cpu(), threshold=0.0)
    layer = _layer(net, name)
    p = support.size
    if layer.in_features != p:  # the path pruned columns: put them back, as zeros
        full = new_linear(p, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype)
        with torch.no_grad():
            full.weight.zero_()
            full.weight[:, torch.as_tensor(res.cols)] = layer.weight
            if layer.bias is not None:
                full.bias.copy_(layer.bias)
        net, layer = swap_layer(net, name, full), full
    with torch.no_grad():
        layer.weight[:, ~torch.as_tensor(support)] = 0.0
    return net


@dataclass(frozen=True)
class RefitSettings:
    """How :func:`refit` trains: the selector's ``refit_iter``, ``lr``, ``weight_decay``, batch size and patience."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    patience: int
    seed: int
    device: torch.device


def refit(net: nn.Module, name: str, support: np.ndarray, data: tuple, val: tuple | None, loss_fn, how: RefitSettings) -> nn.Module:
    """Train ``net`` on the ``support`` columns of ``data`` only (a compact input layer), then write them back.

    The dropped columns stay exactly zero; early stopping on ``val`` when it is given.
    """
    support = torch.as_tensor(support)
    if int(support.sum()) == 0:
        return net
    full = _layer(net, name)
    compact = new_linear(int(support.sum()), full.out_features, full.bias is not None, dtype=full.weight.dtype)
    with torch.no_grad():
        compact.weight.copy_(full.weight[:, support])
        if full.bias is not None:
            compact.bias.copy_(full.bias)
    root = swap_layer(net, name, compact)
    val_c = None if val is None else (val[0][:, support], val[1])
    fit(
        root, (data[0][:, support], data[1]), epochs=how.epochs, optimizer="adam", lr=how.lr, weight_decay=how.weight_decay,
        loss_fn=loss_fn, batch_size=how.batch_size, val_data=val_c, early_stopping=how.patience if val_c is not None else None,
        seed=how.seed, device=how.device, progress=False, history=False,
    )  # fmt: skip
    root.cpu()
    with torch.no_grad():
        full.weight.zero_()
        full.weight[:, support] = compact.weight.detach().cpu()
        if full.bias is not None:
            full.bias.copy_(compact.bias.detach().cpu())
    return swap_layer(root, name, full) if name else full
