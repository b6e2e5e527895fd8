"""Evaluation: the mean loss and accuracy of a model, alone (:func:`evaluate`) or after every epoch of ``fit``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from spred._validation import check_int
from spred.train._data import as_batches
from spred.train._distributed import Distributed
from spred.train._options import parse_device


def _resolve_device(device, model: nn.Module, who: str = "fit") -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return parse_device(device, "device", who)


def _autocast(amp: torch.dtype | None, device: torch.device):
    """``torch.autocast`` to ``amp`` on ``device``'s type, or nothing."""
    return contextlib.nullcontext() if amp is None else torch.autocast(device_type=device.type, dtype=amp)


def _accuracy_count(output: torch.Tensor, target: torch.Tensor) -> int | None:
    if output.dim() == 2 and output.shape[1] > 1 and target.dim() == 1 and not target.is_floating_point():
        return int((output.argmax(dim=1) == target).sum())
    return None


@torch.no_grad()
def _evaluate_batches(model: nn.Module, batches, loss_fn, dist: Distributed | None = None, amp: torch.dtype | None = None) -> dict:
    """Mean loss and accuracy over ``batches``; with ``dist``, over the union of every rank's batches."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        with parametrize.cached():  # every spred product is computed once for the whole evaluation
            for x, y in batches.epoch():
                if len(y) == 0:  # an empty slice of a batch smaller than the number of ranks
                    continue
                with _autocast(amp, x.device):
                    out = model(x)
                    loss = loss_fn(out, y)
                loss_sum += float(loss) * len(y)
                c = _accuracy_count(out, y)
                correct = None if c is None or correct is None else correct + c
                n += len(y)
    finally:
        model.train(was_training)
    if dist is not None:
        no_acc = correct is None and n > 0
        loss_sum, total_correct, n, no_acc = dist.sum([loss_sum, correct or 0, n, float(no_acc)])
        correct = None if no_acc else total_correct
    return {"loss": loss_sum / n, "acc": None if correct is None else correct / n}


def evaluate(model: nn.Module, data, loss_fn: Callable | None = None, batch_size: int = 1024, *, device=None) -> dict:
    """Mean loss and accuracy of ``model`` on ``data``, in eval mode and without gradients.

    Parameters
    ----------
    model : nn.Module
    data : (X, y) tuple of tensors or DataLoader
    loss_fn : callable(output, target), default=cross-entropy
        Must return the *mean* loss over the batch (as torch's losses do).
    batch_size : int, default=1024
        For ``(X, y)`` tensors.
    device : torch.device or str, optional
        Default: the device of the model's parameters.

    Returns
    -------
    dict
        ``{"loss": mean loss over all samples, "acc": fraction of correct arg-max
        predictions, or None when the output is not class scores with integer targets}``.
        The model's train/eval mode is restored.
    """
    if loss_fn is None:
        loss_fn = F.cross_entropy
    elif not callable(loss_fn):
        raise TypeError(f"The 'loss_fn' parameter of evaluate must be a callable (output, target) -> loss. Got {loss_fn!r} instead.")
    check_int(batch_size, "batch_size", "evaluate", 1)
    dev = _resolve_device(device, model, "evaluate")
    batches = as_batches(data, name="data", who="evaluate", batch_size=batch_size, device=dev, shuffle=False)
    return _evaluate_batches(model, batches, loss_fn)
