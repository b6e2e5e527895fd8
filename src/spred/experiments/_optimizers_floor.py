"""``spred run optimizers``: the masked fine-tune after collapse and the magnitude-pruning floor.

Both use the same fine-tune, so that spred and the floor are compared on equal terms:

* :func:`masked_finetune`: a plain (collapsed or pruned) model is trained for a few
  epochs by :func:`spred.train.fit` with ``freeze_zeros=True`` (every weight that is
  exactly 0 stays 0), without any penalty. After spred this removes the L1 shrinkage
  of the kept weights (the "debiasing" step of the Lasso); after magnitude pruning it
  is the usual retraining.
* :func:`magnitude_prune_to`: the floor. The *dense* model of the same optimizer and
  seed is pruned to the sparsity spred reached: unstructured, the globally smallest
  ``|w|`` over the weights spred sparsified (every Linear / Conv weight); structured,
  in every layer that spred grouped (all but the output layer) the same fraction of
  output channels with the smallest L2 norms (filter-norm pruning).
* :func:`finetune_and_floor`: both, for one sparse run of the study.

The fine-tune is one recipe for every run, whatever optimizer trained the model:
``FINETUNE_OPTIMIZER`` at ``FINETUNE_LR`` (Adam at 1e-4) from the dense model's weight
norms under BatchNorm (:func:`match_scale`). The study's optimizers leave no optimizer
state that a fine-tune of the collapsed weights could continue (theirs is on the spred
factors), and restarting each run's own optimizer at its training rate is not a
fine-tune: a fresh Adagrad (empty accumulator) or Adam moves *every* weight by about
``lr`` in its first steps, whatever its size (see docs/optimizers.md, "The fine-tune").

This module is part of the cache key of every sparse run (see ``_optimizers_cache``):
a change here retrains the sparse runs and keeps the dense ones.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from spred.experiments._prune_budget import prunable_weights

__all__ = ["FINETUNE_LR", "FINETUNE_OPTIMIZER", "FINETUNE_OPTIMIZERS", "finetune_and_floor", "magnitude_prune_to", "masked_finetune", "match_scale"]

#: The fine-tune of every sparse run and of its floor (``spred.train.fit`` optimizer names), unless the study is given another.
FINETUNE_OPTIMIZER = "adam"
FINETUNE_LR = 1e-4
FINETUNE_OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad")


def masked_finetune(model: nn.Module, train_data, *, optimizer: str, lr: float, epochs: int, seed: int, batch_size: int, momentum: float,
                    loss_fn, device=None) -> nn.Module:  # fmt: skip
    """A copy of the plain ``model`` trained ``epochs`` epochs with its zero weights frozen at 0 (``epochs=0``: the copy)."""
    from spred.experiments._optimizers_runs import _quiet_logs
    from spred.train import fit

    tuned = copy.deepcopy(model)
    if epochs == 0:
        return tuned
    with warnings.catch_warnings(), _quiet_logs():
        warnings.simplefilter("ignore", UserWarning)
        fit(tuned, train_data, epochs=epochs, optimizer=optimizer, lr=lr, momentum=momentum, batch_size=batch_size,
            loss_fn=loss_fn, freeze_zeros=True, seed=seed, device=device, progress=False)  # fmt: skip
    return tuned.cpu()


def _normalised_layers(model: nn.Module) -> list[tuple[nn.Module, nn.modules.batchnorm._BatchNorm]]:
    """``(layer, norm)`` for every Linear / Conv whose next module (in registration order) is a BatchNorm of its outputs."""
    modules = [m for m in model.modules() if not list(m.children())]
    pairs = []
    for layer, nxt in zip(modules, modules[1:]):
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)) and isinstance(nxt, nn.modules.batchnorm._BatchNorm):
            if nxt.num_features == layer.weight.shape[0] and nxt.track_running_stats and nxt.running_var is not None:
                pairs.append((layer, nxt))
    return pairs


def match_scale(model: nn.Module, reference: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm-normalised layers have the weight norms of ``reference`` (the same function).

    A layer followed by BatchNorm computes the same function for any positive scale of its
    weight (the running mean and variance scaled with it, as done here), but a gradient step
    changes it by ``lr / |w|^2`` of its norm: spred's penalty shrinks these weights, so
    fine-tuning them at the dense model's learning rate takes steps many times larger
    than the dense model's. Rescaling every such layer to the norm of the same layer of
    the dense ``reference`` gives the fine-tune the dense model's effective step.
    """
    scaled = copy.deepcopy(model)
    ref = dict(zip((id(m) for m in model.modules()), reference.modules()))
    own = dict(zip((id(m) for m in model.modules()), scaled.modules()))
    with torch.no_grad():
        for layer, norm in _normalised_layers(model):
            target, mine = ref[id(layer)].weight.norm(), layer.weight.norm()
            if mine > 0 and target > 0:
                s = float(target / mine)
                own[id(layer)].weight.mul_(s)
                own[id(norm)].running_mean.mul_(s)
                own[id(norm)].running_var.mul_(s * s)
    return scaled


def _global_magnitude(weights: list[torch.Tensor], sparsity: float) -> None:
    """Zero (in place) the ``round(sparsity * n)`` smallest ``|w|`` over all ``weights`` (ties in a fixed order)."""
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = round(sparsity * flat.numel())
    if k <= 0:
        return
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.argsort(stable=True)[:k]] = False
    with torch.no_grad():
        for w, mask in zip(weights, keep.split([w.numel() for w in weights])):
            w.mul_(mask.view_as(w))


def _filter_norms(model: nn.Module, sparsity: float, output_layer: str) -> None:
    """Zero (in place) the ``round(sparsity * out_channels)`` filters of smallest L2 norm in every grouped layer."""
    for name, module in prunable_weights(model).items():
        if name == f"{output_layer}.weight":
            continue
        w = module.weight
        n_zero = min(w.shape[0] - 1, round(sparsity * w.shape[0]))  # keep one channel: a layer with none left is a cut network
        if n_zero <= 0:
            continue
        norms = w.detach().flatten(1).norm(dim=1)
        drop = norms.argsort()[:n_zero]
        with torch.no_grad():
            w[drop] = 0
            if getattr(module, "bias", None) is not None:
                module.bias[drop] = 0


def magnitude_prune_to(dense: nn.Module, sparsity: float, structured: bool, output_layer: str) -> nn.Module:
    """A copy of the plain ``dense`` model pruned by magnitude to ``sparsity`` (see the module docstring)."""
    pruned = copy.deepcopy(dense)
    if not math.isfinite(sparsity) or sparsity <= 0:
        return pruned
    if structured:
        _filter_norms(pruned, sparsity, output_layer)
    else:
        _global_magnitude([m.weight for m in prunable_weights(pruned).values()], sparsity)
    return pruned


def finetune_and_floor(setup, seed: int, collapsed: nn.Module, dense_trained: nn.Module | None, reached: float, structured: bool,
                       output_layer: str) -> dict:  # fmt: skip
    """The masked fine-tune of the collapsed model and the magnitude floor (the same fine-tune), as row fields of the study.

    ``setup`` is the study's ``_Setup``; ``dense_trained`` the dense model of the run's optimizer
    and seed (None: no floor, and no rescale before the fine-tune).
    """
    from spred.experiments._optimizers_runs import _evaluate

    kw = {"optimizer": setup.finetune_optimizer, "lr": setup.finetune_lr, "epochs": setup.finetune_epochs, "seed": seed,
          "batch_size": setup.batch_size, "momentum": setup.momentum, "loss_fn": setup.loss_fn, "device": setup.device}  # fmt: skip
    out = {"model": setup.model, "finetune_epochs": setup.finetune_epochs, "finetune_optimizer": setup.finetune_optimizer,
           "finetune_lr": setup.finetune_lr, "test_acc_finetuned": math.nan, "magnitude_acc": math.nan, "magnitude_acc_finetuned": math.nan}  # fmt: skip
    # both start the fine-tune with the dense model's weight norms in BatchNorm-normalised layers (see match_scale)
    rescale = (lambda m: match_scale(m, dense_trained)) if dense_trained is not None else (lambda m: m)
    if setup.finetune_epochs:
        out["test_acc_finetuned"] = _evaluate(setup, masked_finetune(rescale(collapsed), setup.train_data, **kw), setup.test_data)
    if dense_trained is not None:
        floor = magnitude_prune_to(dense_trained, reached, structured, output_layer)
        out["magnitude_acc"] = _evaluate(setup, floor, setup.test_data)
        if setup.finetune_epochs:
            out["magnitude_acc_finetuned"] = _evaluate(setup, masked_finetune(rescale(floor), setup.train_data, **kw), setup.test_data)
    return out
