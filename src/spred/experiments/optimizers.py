"""``spred run optimizers``: SGD, Adam, AdamW and Adagrad under structured and unstructured spred.

For every optimizer, sparsity type and target sparsity a fresh CNN is sparsified with
:func:`spred.sparsify` and trained by :func:`spred.train.fit`, whose target-sparsity
controller (:class:`spred.train.TargetSparsity`) adapts lam until the wanted fraction
of the sparsified weights is zero. Then the model is collapsed to exact zeros, tested,
physically pruned (structured), timed, and its KKT residual is measured.

Optimizers (``OPTIMIZERS``):

* ``sgd``: SGD with momentum 0.9, coupled weight decay lam on the factors (L1);
* ``adam`` and ``adagrad``: the same coupled decay (L1);
* ``adamw``: AdamW as :func:`spred.train.fit` builds it: the spred groups get weight
  decay 0 and :func:`spred.penalty` is added to the loss (the L1 problem again);
* ``adamw_decoupled``: AdamW with its own *decoupled* decay lam applied to the factors
  (``torch.optim.AdamW(spred.param_groups(model))``), what the seed's extension did.
  Its fixed points satisfy ``m / sqrt(v) = -lam * theta``: it sparsifies, but it is
  not L1 (DESIGN.md section 1). The controller adapts its decay all the same, starting
  from a larger lam (``initial_lams``) because a decoupled step shrinks a weight by
  ``lr * lam``, not by ``lam``.

Sparsity types: ``unstructured`` (one factor per weight, every Linear / Conv weight),
``structured`` (``groups="out"``: one scalar per conv filter / hidden neuron; the last
layer, whose outputs are the classes, stays dense).

Zeros. A weight counts as zero when ``|v| <= threshold`` (a group when its norm is);
the same threshold is used by the target-sparsity controller (which counts whole groups
for grouped tensors), :func:`spred.collapse`, :func:`spred.sparsity_report` and
:func:`spred.kkt_residual`.

Learning rates are tuned once per optimizer and sparsity type (and for the dense
baselines) on a validation split of the training data (the last ``val_fraction`` of a
seeded permutation), seed ``tune_seed``, over ``lr_grid``, at the lowest target (or
``tune_target``); the learning rate with the best validation accuracy among the runs
that reached the target is kept for every run of that optimizer and type. Tuning at
the lowest target matters: a learning rate can make low targets unreachable (Adam at
lr 1e-2 left 22 of the 64 hidden units of the MNIST CNN dead within two epochs, and
every lam > 0 then zeroes their weights at Adam's normalised speed: 49% of zeros at
lam = 1e-5). Per type, because the group scalars of structured spred see summed
gradients: SGD at lr 0.3 was the best unstructured choice and diverged structured.
Given ``lrs`` skip the tuning.

KKT. On a fixed batch of training data (eval mode) the gradient ``g = dL/dv`` is
compared with the L1 (group-L1) subdifferential: ``kkt_relative`` is
``spred.kkt_residual(...).relative`` (the largest residual over all weights divided by
lam). The largest residual is dominated by a few weights of a network stopped after a
few epochs, so the rows also carry robust statistics: ``lam_fit``, the median of
``-g . v / |v|`` over the nonzero weights (groups), i.e. the lam for which the nonzero
weights are best explained as an L1 stationary point (``lam_fit / lam`` is 1 at an
L1 optimum); ``kkt_median`` the median relative residual of the nonzero weights at
``lam_fit``; ``zero_violations`` the fraction of zero weights (groups) with
``|g| > lam_fit``, i.e. zeros that L1 with that strength would not have produced.

Outputs under ``--out``: ``optimizers.csv`` (one row per dataset, optimizer, sparsity
type, target and seed, plus the dense baselines), ``optimizers_summary.csv`` (mean and
std over seeds), ``optimizers_lr_tuning.csv``, ``optimizers_<dataset>_<type>.png``
(2x2: accuracy, inference time and their change relative to the dense model, against
the sparsity reached, one line per optimizer), ``summary.md`` and ``config.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

import spred
from spred.experiments import _common

logger = logging.getLogger("spred")

__all__ = [
    "CSV_COLUMNS",
    "OPTIMIZERS",
    "OptimizersConfig",
    "QUICK",
    "SPARSITY_TYPES",
    "StudyCNN",
    "add_arguments",
    "check_config",
    "config_from_args",
    "kkt_statistics",
    "load_dataset",
    "optimizer_study",
    "plot_panel",
    "report",
    "run",
    "run_experiment",
    "summarise",
    "summary_table",
    "tune_learning_rates",
]

NAME = "optimizers"
OPTIMIZERS = ("sgd", "adam", "adamw", "adamw_decoupled", "adagrad")
SPARSITY_TYPES = ("unstructured", "structured")
DATASETS = ("mnist", "fashion_mnist")
LABELS = {
    "sgd": "SGD (momentum 0.9)", "adam": "Adam", "adamw": "AdamW + penalty in loss (L1)",
    "adamw_decoupled": "AdamW, decoupled decay (not L1)", "adagrad": "Adagrad",
}  # fmt: skip
_COLORS = {"sgd": "tab:blue", "adam": "tab:orange", "adamw": "tab:green", "adamw_decoupled": "tab:red", "adagrad": "tab:purple"}
_MARKERS = {"sgd": "o", "adam": "s", "adamw": "^", "adamw_decoupled": "v", "adagrad": "D"}
# The optimizer whose dense (not sparsified) run is the baseline of each study optimizer.
DENSE_OF = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "adamw_decoupled": "adamw", "adagrad": "adagrad"}
_TORCH_NAME = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "adagrad": "adagrad"}

# Half-decade grids of three values. On MNIST (quick settings) a first pass one step lower (SGD 0.01-0.1, Adam
# 3e-4-3e-3, Adagrad 3e-3-3e-2) picked the top of every grid, so the grids moved up; in a second pass SGD 1.0
# diverged (spred), decoupled AdamW 3e-2 was worse than 1e-2 and dense SGD preferred 0.03 to 0.1 and 0.3.
# spred's SGD steps on v are ~10x smaller than dense ones with the default split (u = c, w = v / c with
# c^2 = rms(v): a step on v scales with u^2 + w^2 ~ 2 rms(v)), hence one grid spans both.
DEFAULT_LR_GRID = {
    "sgd": (0.03, 0.1, 0.3),
    "adam": (1e-3, 3e-3, 1e-2),
    "adamw": (1e-3, 3e-3, 1e-2),
    "adamw_decoupled": (3e-3, 1e-2, 3e-2),
    "adagrad": (1e-2, 3e-2, 1e-1),
}
KINDS = (*SPARSITY_TYPES, "dense")
# lam at the start of training; the controller moves it by up to 1000x in half of training.
# Start low: zeros made by overshooting do not come back. With 1e-4, Adam (lr 1e-3) zeroed 67% of the weights of
# the MNIST CNN for targets of 20%, 40% and 60% alike: its normalised step drives every weight whose gradient is
# below lam to zero within ~100 steps. A decoupled step shrinks by lr * lam, hence its larger start.
DEFAULT_INITIAL_LAMS = {"sgd": 1e-5, "adam": 1e-5, "adamw": 1e-5, "adamw_decoupled": 1e-2, "adagrad": 1e-5}

CSV_COLUMNS = (
    "dataset", "optimizer", "sparsity_type", "target", "seed", "lr", "lr_source", "epochs", "diverged", "threshold",
    "lam_initial", "lam_final", "weight_sparsity", "sparsity_error", "reached_target",
    "param_sparsity", "zero_channels", "n_channels", "channel_sparsity", "compression_ratio", "test_acc",
    "test_acc_before_collapse", "dense_test_acc", "train_seconds", "params_total", "params_nonzero", "params_pruned",
    "macs_dense", "macs_pruned", "latency_dense_b1", "latency_collapsed_b1", "latency_pruned_b1", "latency_dense_bmax",
    "latency_collapsed_bmax", "latency_pruned_bmax", "latency_batch", "pruned_max_abs_diff", "kkt_max", "kkt_relative",
    "lam_fit", "lam_fit_ratio", "kkt_median", "zero_violations", "n_zero_units", "n_nonzero_units", "cpu_seconds",
)  # fmt: skip
TUNING_COLUMNS = ("optimizer", "lr", "val_acc", "weight_sparsity", "reached_target", "chosen", "sparsity_type", "target", "seed", "epochs", "cpu_seconds")


# --------------------------------------------------------------------------- the network


class StudyCNN(nn.Module):
    """The small CNN of the study (20,490 parameters for 28x28 inputs).

    ``conv 8@5x5 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 -> fc 64 -> ReLU -> fc 10``.
    The convolutions have no padding, so the constant that a zero filter still emits
    (ReLU of its bias) folds exactly into the next layer's bias and
    :func:`spred.compress.prune_channels` can remove every zero filter and neuron.

    Parameters
    ----------
    in_channels : int, default=1
    num_classes : int, default=10
    widths : (int, int), default=(8, 16)
        Filters of the two convolutions.
    hidden : int, default=64
        Neurons of the hidden fully connected layer.
    input_size : int, default=28

    Examples
    --------
    >>> StudyCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (8, 16), hidden: int = 64, input_size: int = 28):
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"The 'input_size' parameter of StudyCNN must be at least 16. Got {input_size!r} instead.")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[1] * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class OptimizersConfig:
    """Settings of ``spred run optimizers``.

    Parameters
    ----------
    datasets : tuple of {"mnist", "fashion_mnist"}
        ``mnist``: the first ``n_train`` images of the MNIST training set (all 60,000
        when None), tested on the 10,000 test images. ``fashion_mnist``: the staged
        subset of 2,000 Fashion-MNIST test images, split once (stratified, seed 0) into
        ``1 - fashion_test_size`` for training and the rest for testing.
    optimizers : tuple of str
        A subset of ``OPTIMIZERS``.
    sparsity_types : tuple of {"unstructured", "structured"}
    targets : tuple of float
        Target fractions of zeros among the sparsified weights, each in (0, 1).
    seeds : tuple of int
        Seeds of the initial weights and of the data order (the data split stays fixed).
    epochs : int
        Epochs per MNIST run.
    fashion_epochs : int
        Epochs per Fashion-MNIST run (its training set is 8x smaller than 10,000 MNIST images).
    batch_size : int
    n_train : int or None
        Size of the MNIST training subset (None: all 60,000 images).
    fashion_test_size : float
    threshold : float
        ``|v| <= threshold`` (group norm for structured) counts as zero.
    lrs : dict
        Fixed learning rates, ``{optimizer: lr}`` (every sparsity type and the dense
        baseline) or ``{"unstructured" | "structured" | "dense": {optimizer: lr}}``;
        the ones not given are tuned on ``lr_grid``.
    lr_grid : dict of str to tuple of float
    tune_target, tune_seed, val_fraction
        Where the learning rates are tuned: target (None: the lowest of ``targets``),
        seed and the fraction of the training data held out for validation.
    initial_lams : dict of str to float
        lam at the start of every run, per optimizer.
    momentum : float
        SGD momentum.
    kkt_samples : int
        Training samples in the fixed batch of the KKT check.
    latency_batch_sizes : tuple of int
    latency_repeats : int
    tolerance : float
        A run reached its target when ``|weight_sparsity - target| <= tolerance``.
    dense_baseline : bool
        Also train every optimizer without spred (the reference for the relative change).
    """

    datasets: tuple[str, ...] = DATASETS
    optimizers: tuple[str, ...] = OPTIMIZERS
    sparsity_types: tuple[str, ...] = SPARSITY_TYPES
    targets: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 15
    fashion_epochs: int = 40
    batch_size: int = 64
    n_train: int | None = None
    fashion_test_size: float = 0.25
    threshold: float = 1e-3
    lrs: dict = field(default_factory=dict)
    lr_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_LR_GRID))
    tune_target: float | None = None
    tune_seed: int = 0
    val_fraction: float = 0.1
    initial_lams: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_INITIAL_LAMS))
    momentum: float = 0.9
    kkt_samples: int = 2048
    latency_batch_sizes: tuple[int, ...] = (1, 256)
    latency_repeats: int = 30
    tolerance: float = 0.02
    dense_baseline: bool = True


QUICK = {"datasets": ("mnist",), "seeds": (0,), "epochs": 8, "n_train": 10_000, "fashion_epochs": 30, "latency_repeats": 20}


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= low


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_names(values, allowed, name: str, who: str) -> tuple:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values or not set(values) <= set(allowed):
        raise ValueError(f"The '{name}' parameter of {who} must be a non-empty subset of {list(allowed)}. Got {values!r} instead.")
    return tuple(values)


def _check_targets(targets, who: str) -> tuple[float, ...]:
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets or not all(_is_real(t) and 0 < t < 1 for t in targets):
        raise ValueError(f"The 'targets' parameter of {who} must be a non-empty list of floats in (0, 1). Got {targets!r} instead.")
    return tuple(float(t) for t in targets)


def _check_seeds(seeds, who: str) -> tuple[int, ...]:
    if isinstance(seeds, str) or not isinstance(seeds, Sequence) or not seeds or not all(_is_int(s) for s in seeds):
        raise ValueError(f"The 'seeds' parameter of {who} must be a non-empty list of ints >= 0. Got {seeds!r} instead.")
    return tuple(int(s) for s in seeds)


def _check_lr_map(values, name: str, who: str, *, grid: bool = False) -> dict:
    if not isinstance(values, Mapping):
        raise TypeError(f"The '{name}' parameter of {who} must be a mapping from optimizer names to {'lists of ' if grid else ''}floats. Got {type(values).__name__} instead.")
    unknown = sorted(set(values) - set(OPTIMIZERS))
    if unknown:
        raise ValueError(f"The '{name}' parameter of {who} has unknown optimizers {unknown}; valid names are {list(OPTIMIZERS)}.")
    out = {}
    for key, value in values.items():
        items = value if grid else [value]
        if isinstance(items, str) or not isinstance(items, Sequence) or not items or not all(_is_real(v) and v > 0 for v in items):
            what = "a non-empty list of floats > 0" if grid else "a float > 0"
            raise ValueError(f"The '{name}' entry for {key!r} of {who} must be {what}. Got {value!r} instead.")
        out[key] = tuple(float(v) for v in items) if grid else float(value)
    return out


def _nested_lrs(lrs, who: str) -> dict[str, dict[str, float]]:
    """``{kind: {optimizer: lr}}`` for every kind, from a flat ``{optimizer: lr}`` or a nested mapping."""
    if not isinstance(lrs, Mapping):
        raise TypeError(f"The 'lrs' parameter of {who} must be a mapping {{optimizer: lr}} or {{sparsity type: {{optimizer: lr}}}}. Got {type(lrs).__name__} instead.")
    if any(k in KINDS for k in lrs):
        unknown = sorted(set(lrs) - set(KINDS))
        if unknown:
            raise ValueError(f"The 'lrs' parameter of {who} mixes sparsity types and other keys {unknown}; nested keys must be among {list(KINDS)}.")
        out = {k: _check_lr_map(v, f"lrs['{k}']", who) for k, v in lrs.items()}
    else:
        flat = _check_lr_map(lrs, "lrs", who)
        out = {k: dict(flat) for k in KINDS}
    return {k: out.get(k, {}) for k in KINDS}


def check_config(cfg: OptimizersConfig) -> OptimizersConfig:
    """Validate a config; every message names the field and the value."""
    who = "the optimizers experiment"
    _check_names(cfg.datasets, DATASETS, "datasets", who)
    _check_names(cfg.optimizers, OPTIMIZERS, "optimizers", who)
    _check_names(cfg.sparsity_types, SPARSITY_TYPES, "sparsity_types", who)
    _check_targets(cfg.targets, who)
    _check_seeds(cfg.seeds, who)
    for name in ("epochs", "fashion_epochs", "batch_size", "kkt_samples", "latency_repeats"):
        if not _is_int(getattr(cfg, name), 1):
            raise ValueError(f"The '{name}' parameter of {who} must be an int >= 1. Got {getattr(cfg, name)!r} instead.")
    if cfg.n_train is not None and not _is_int(cfg.n_train, 2):
        raise ValueError(f"The 'n_train' parameter of {who} must be None or an int >= 2. Got {cfg.n_train!r} instead.")
    for name, lo, hi in (("fashion_test_size", 0, 1), ("val_fraction", 0, 1), ("tune_target", 0, 1), ("tolerance", 0, 1)):
        value = getattr(cfg, name)
        if name == "tune_target" and value is None:
            continue
        if not (_is_real(value) and lo < value < hi):
            raise ValueError(f"The '{name}' parameter of {who} must be a float in ({lo}, {hi}). Got {value!r} instead.")
    if not (_is_real(cfg.threshold) and cfg.threshold > 0):
        raise ValueError(f"The 'threshold' parameter of {who} must be a float > 0. Got {cfg.threshold!r} instead.")
    if not (_is_real(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise ValueError(f"The 'momentum' parameter of {who} must be a float in [0, 1). Got {cfg.momentum!r} instead.")
    if not _is_int(cfg.tune_seed):
        raise ValueError(f"The 'tune_seed' parameter of {who} must be an int >= 0. Got {cfg.tune_seed!r} instead.")
    lrs = _nested_lrs(cfg.lrs, who)
    grid = _check_lr_map(cfg.lr_grid, "lr_grid", who, grid=True)
    missing = [o for o in cfg.optimizers if o not in grid and not all(o in lrs[k] for k in cfg.sparsity_types)]
    if missing:
        raise ValueError(f"The 'lr_grid' parameter of {who} has no grid for {missing}, which have no fixed 'lrs' either.")
    _check_lr_map(cfg.initial_lams, "initial_lams", who)
    if isinstance(cfg.latency_batch_sizes, str) or not cfg.latency_batch_sizes or not all(_is_int(b, 1) for b in cfg.latency_batch_sizes):
        raise ValueError(f"The 'latency_batch_sizes' parameter of {who} must be a non-empty list of ints >= 1. Got {cfg.latency_batch_sizes!r} instead.")
    return cfg


# --------------------------------------------------------------------------- data


def load_dataset(name: str, cfg: OptimizersConfig, data_home=None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((X_train, y_train), (X_test, y_test))`` as float32 ``(n, 1, 28, 28)`` tensors and int64 labels."""
    from spred import datasets

    if name == "mnist":
        X, y = datasets.load_mnist(data_home, train=True)
        Xt, yt = datasets.load_mnist(data_home, train=False)
        if cfg.n_train is not None:
            X, y = X[: cfg.n_train], y[: cfg.n_train]
    elif name == "fashion_mnist":
        from sklearn.model_selection import train_test_split

        X_all, y_all = datasets.load_fashion_mnist_subset(data_home)
        X, Xt, y, yt = train_test_split(X_all, y_all, test_size=cfg.fashion_test_size, stratify=y_all, random_state=0)
    else:
        raise ValueError(f"The 'datasets' of the optimizers experiment must be among {list(DATASETS)}. Got {name!r} instead.")

    def as_tensors(images, labels):
        return torch.as_tensor(images, dtype=torch.float32).unsqueeze(1), torch.as_tensor(labels, dtype=torch.int64)

    return as_tensors(X, y), as_tensors(Xt, yt)


def _is_tensor_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _check_data(data, name: str) -> None:
    from torch.utils.data import DataLoader

    if _is_tensor_pair(data):
        if len(data[0]) != len(data[1]) or len(data[0]) < 2:
            raise ValueError(f"The '{name}' parameter of optimizer_study must hold at least 2 samples with as many targets as inputs. Got {len(data[0])} inputs and {len(data[1])} targets.")
        return
    if not isinstance(data, DataLoader):
        raise TypeError(f"The '{name}' parameter of optimizer_study must be a tuple (X, y) of tensors or a DataLoader. Got {type(data).__name__} instead.")


def _first_samples(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of ``(X, y)`` tensors, or of the batches a DataLoader yields (in its order)."""
    if _is_tensor_pair(data):
        return data[0][:n], data[1][:n]
    xs, ys, count = [], [], 0
    for x, y in data:
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _validation_split(train_data, fraction: float, seed: int = 0):
    """``(train, val)``: the last ``fraction`` of a seeded permutation of ``(X, y)`` is held out."""
    X, y = train_data
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(y)))
    tr, va = order[:-n_val], order[-n_val:]
    return (X[tr], y[tr]), (X[va], y[va])


# --------------------------------------------------------------------------- measurements


def _last_layer(model: nn.Module, include=(nn.Linear, nn.Conv1d, nn.Conv2d)) -> str:
    """Name of the last module (in registration order) whose weight spred would sparsify: the output layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, include) and getattr(m, "weight", None) is not None]
    if not names:
        raise ValueError(f"optimizer_study found no Linear / Conv layer to sparsify in {type(model).__name__}.")
    return names[-1]


def _sparsify(model: nn.Module, sparsity_type: str, lam: float, output_layer: str) -> None:
    """Sparsify in place: every weight, or one group per filter / neuron but the output layer's."""
    if sparsity_type == "unstructured":
        spred.sparsify(model, lam)
    else:
        spred.sparsify(model, lam, groups="out", exclude=(output_layer,))


def _grad_wrt_weights(model: nn.Module, loss_fn, batch) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    """``[(SparsifiedTensor, v, dL/dv)]`` on ``batch`` (buffers restored afterwards)."""
    tensors = list(spred.nn.sparsified_tensors(model))
    inputs, targets = batch
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        with torch.enable_grad(), parametrize.cached():
            values = [getattr(t.module, t.tensor_name) for t in tensors]
            grads = torch.autograd.grad(loss_fn(model(inputs), targets), values, allow_unused=True)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return [(t, v.detach(), torch.zeros_like(v) if g is None else g.detach()) for t, v, g in zip(tensors, values, grads)]


def _units(v: torch.Tensor, g: torch.Tensor, groups: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per penalty unit (weight, or output group): ``|v|``, ``|g|``, ``-g . v/|v|`` and ``|g + lam_unit v/|v||`` for lam_unit = 1 scaled later."""
    if groups is None:
        vf, gf = v.reshape(-1, 1), g.reshape(-1, 1)
    elif groups == "out":
        vf, gf = v.flatten(1), g.flatten(1)
    else:  # "in": one group per input feature / channel
        vf, gf = v.transpose(0, 1).flatten(1), g.transpose(0, 1).flatten(1)
    nv, ng = vf.norm(dim=1), gf.norm(dim=1)
    direction = vf / torch.where(nv > 0, nv, torch.ones_like(nv)).unsqueeze(1)
    return nv, ng, -(gf * direction).sum(1), (gf, direction)


def kkt_statistics(model: nn.Module, loss_fn: Callable, batch, *, threshold: float) -> dict[str, float]:
    """How close a sparsified model is to an L1 (group-L1) stationary point, on one batch.

    The model is evaluated in eval mode (restored afterwards). Units are single weights
    (unstructured) or groups (``groups="out"/"in"``); a unit is zero when its norm is
    ``<= threshold``. With ``g = dL/dv`` and ``d = v / |v|``:

    * ``kkt_max``, ``kkt_relative``: :func:`spred.kkt_residual` at the model's lam
      (largest residual over all units; divided by lam);
    * ``lam_fit``: the median over nonzero units of ``-g . d``. At an L1 optimum every
      nonzero unit has ``g = -lam d``, so ``lam_fit = lam``; ``lam_fit_ratio = lam_fit / lam``;
    * ``kkt_median``: the median over nonzero units of ``|g + lam_fit d| / lam_fit``;
    * ``zero_violations``: the fraction of zero units with ``|g| > lam_fit``, zeros that
      the L1 problem with strength ``lam_fit`` would not have.

    Returns
    -------
    dict of str to float
        The keys above plus ``n_zero_units`` and ``n_nonzero_units``.
    """
    was_training = model.training
    model.eval()
    try:
        report = spred.kkt_residual(model, loss_fn, batch, threshold=threshold)
        items = _grad_wrt_weights(model, loss_fn, batch)
    finally:
        model.train(was_training)
    lams = {t.spred.lam for t, _, _ in items}
    lam = sum(lams) / len(lams)
    push, zero_grad, nonzero_parts = [], [], []
    for t, v, g in items:
        nv, ng, along, (gf, direction) = _units(v, g, t.spred.groups)
        zero = nv <= threshold
        push.append(along[~zero])
        zero_grad.append(ng[zero])
        nonzero_parts.append((gf[~zero], direction[~zero]))
    push_all = torch.cat(push)
    zero_all = torch.cat(zero_grad)
    lam_fit = float(push_all.median()) if push_all.numel() else math.nan
    if push_all.numel() and lam_fit > 0:
        resid = torch.cat([(gf + lam_fit * d).norm(dim=1) for gf, d in nonzero_parts]) / lam_fit
        kkt_median = float(resid.median())
        violations = float((zero_all > lam_fit).float().mean()) if zero_all.numel() else 0.0
    else:
        kkt_median, violations = math.nan, math.nan
    return {
        "kkt_max": report.max, "kkt_relative": report.relative, "lam_fit": lam_fit,
        "lam_fit_ratio": lam_fit / lam if lam > 0 else math.nan, "kkt_median": kkt_median, "zero_violations": violations,
        "n_zero_units": int(zero_all.numel()), "n_nonzero_units": int(push_all.numel()),
    }  # fmt: skip


def _channel_counts(report: spred.SparsityReport, output_layer: str) -> tuple[int, int]:
    """(zero, total) output channels / neurons over every weight with ndim >= 2 except the output layer's."""
    rows = [r for r in report.rows if r.n_groups and r.name != f"{output_layer}.weight" and r.groups != "in"]
    return sum(r.zero_groups for r in rows), sum(r.n_groups for r in rows)


def _latencies(models: Mapping[str, nn.Module], example_inputs, batch_sizes, repeats) -> dict[str, dict[int, float]]:
    from spred.compress import compare_latency

    return compare_latency(dict(models), example_inputs, batch_sizes=tuple(batch_sizes), repeats=repeats, warmup=3)


def _prune(model: nn.Module, example_inputs):
    """``(pruned, plan)``, or ``(None, None)`` without Torch-Pruning."""
    from spred.compress import prune_channels

    try:
        with _quiet_epochs():
            return prune_channels(model, example_inputs)
    except ImportError as exc:
        logger.warning("no physical pruning: %s", exc)
        return None, None


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Setup:
    """What every run of one study shares."""

    model_factory: Callable[[], nn.Module]
    train_data: Any
    test_data: Any
    kkt_batch: tuple[torch.Tensor, torch.Tensor]
    example_inputs: Any
    epochs: int
    batch_size: int
    threshold: float
    momentum: float
    loss_fn: Callable
    latency_batch_sizes: tuple[int, ...]
    latency_repeats: int
    tolerance: float
    device: Any
    dataset: str


def _fit_optimizer(name: str, model: nn.Module, lr: float):
    """What :func:`spred.train.fit` gets as ``optimizer``: a name, or AdamW with decoupled decay on the factors."""
    if name != "adamw_decoupled":
        return _TORCH_NAME[name]
    if not spred.is_sparsified(model):
        return "adamw"
    return torch.optim.AdamW(spred.param_groups(model, 0.0), lr=lr)  # decoupled decay lam on u and w: deliberately not L1


def _train(setup: _Setup, model: nn.Module, optimizer: str, lr: float, seed: int, target, threshold: float, val_data=None):
    from spred.train import fit

    opt = _fit_optimizer(optimizer, model, lr)
    with warnings.catch_warnings(), _quiet_epochs():
        if optimizer == "adamw_decoupled":  # the point of this variant: silence the warning that says it is not L1
            warnings.filterwarnings("ignore", message=".*decoupled.*", category=UserWarning)
        return fit(
            model, setup.train_data, epochs=setup.epochs, optimizer=opt, lr=lr, momentum=setup.momentum, batch_size=setup.batch_size,
            loss_fn=setup.loss_fn, target_sparsity=target, threshold=threshold, seed=seed, device=setup.device, progress=False,
            val_data=val_data,
        )  # fmt: skip


class _EpochFilter(logging.Filter):
    """Drops the INFO lines of the training loop (per epoch) and of pruning (one line per run is logged instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.module not in ("_loop", "_prune")


@contextlib.contextmanager
def _quiet_epochs():
    filt = _EpochFilter()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


def _evaluate(setup: _Setup, model: nn.Module, data) -> float:
    from spred.train import evaluate

    acc = evaluate(model, data, setup.loss_fn)["acc"]  # where the model is (the CPU after training)
    return math.nan if acc is None else float(acc)


def _dense_row(setup: _Setup, optimizer: str, lr: float, lr_source: str, seed: int) -> dict:
    with _common.torch_seed(seed):
        model = setup.model_factory()
    result = _train(setup, model, optimizer, lr, seed, None, setup.threshold)
    model.cpu()
    acc = _evaluate(setup, model, setup.test_data)
    lat = _latencies({"dense": model}, setup.example_inputs, setup.latency_batch_sizes, setup.latency_repeats)["dense"]
    from spred.compress import count_flops, count_parameters

    b_lo, b_hi = min(setup.latency_batch_sizes), max(setup.latency_batch_sizes)
    n_params = count_parameters(model)
    row = {c: math.nan for c in CSV_COLUMNS}
    row.update({
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": "dense", "target": 0.0, "seed": seed, "lr": lr,
        "lr_source": lr_source, "epochs": setup.epochs, "diverged": False, "threshold": setup.threshold, "weight_sparsity": 0.0, "reached_target": True,
        "test_acc": acc, "test_acc_before_collapse": acc, "dense_test_acc": acc, "train_seconds": result.wall_time_s,
        "params_total": n_params, "params_nonzero": count_parameters(model, nonzero=True), "macs_dense": count_flops(model, setup.example_inputs[:1]),
        "latency_dense_b1": lat[b_lo], "latency_dense_bmax": lat[b_hi], "latency_batch": b_hi,
    })  # fmt: skip
    return row


def _sparse_row(setup: _Setup, optimizer: str, sparsity_type: str, target: float, lr: float, lr_source: str, seed: int, initial_lam: float) -> dict:
    """Train one sparsified model to ``target`` and measure it: one row of the study."""
    from spred.compress import count_flops, count_parameters
    from spred.train import TargetSparsity

    with _common.torch_seed(seed):
        model = setup.model_factory()
    dense = _copy_plain(model)
    output_layer = _last_layer(model)
    _sparsify(model, sparsity_type, initial_lam, output_layer)
    result = _train(setup, model, optimizer, lr, seed, TargetSparsity(target, threshold=setup.threshold), setup.threshold)
    model.cpu()
    acc_before = _evaluate(setup, model, setup.test_data)
    report = spred.sparsity_report(model, threshold=setup.threshold)
    kkt = kkt_statistics(model, setup.loss_fn, setup.kkt_batch, threshold=setup.threshold)
    lam_final = statistics.fmean(spred.get_lam(model).values())
    collapsed = spred.collapse(model, threshold=setup.threshold)
    acc = _evaluate(setup, collapsed, setup.test_data)
    zero_ch, n_ch = _channel_counts(report, output_layer)
    models = {"dense": dense, "collapsed": collapsed}
    pruned = plan = None
    if sparsity_type == "structured":
        pruned, plan = _prune(collapsed, setup.example_inputs)
        if pruned is not None:
            models["pruned"] = pruned
    lat = _latencies(models, setup.example_inputs, setup.latency_batch_sizes, setup.latency_repeats)
    b_lo, b_hi = min(setup.latency_batch_sizes), max(setup.latency_batch_sizes)
    one = setup.example_inputs[:1]
    reached = report.sparsified_sparsity
    row = {
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": sparsity_type, "target": target, "seed": seed,
        "lr": lr, "lr_source": lr_source, "epochs": setup.epochs, "diverged": False, "threshold": setup.threshold,
        "lam_initial": initial_lam, "lam_final": lam_final, "weight_sparsity": reached, "sparsity_error": reached - target,
        "reached_target": bool(abs(reached - target) <= setup.tolerance), "param_sparsity": report.sparsity,
        "zero_channels": zero_ch, "n_channels": n_ch, "channel_sparsity": zero_ch / n_ch if n_ch else math.nan,
        "compression_ratio": report.compression_ratio, "test_acc": acc, "test_acc_before_collapse": acc_before,
        "dense_test_acc": math.nan, "train_seconds": result.wall_time_s, "params_total": count_parameters(collapsed),
        "params_nonzero": count_parameters(collapsed, nonzero=True),
        "params_pruned": count_parameters(pruned) if pruned is not None else math.nan,
        "macs_dense": count_flops(collapsed, one), "macs_pruned": count_flops(pruned, one) if pruned is not None else math.nan,
        "latency_dense_b1": lat["dense"][b_lo], "latency_collapsed_b1": lat["collapsed"][b_lo],
        "latency_pruned_b1": lat["pruned"][b_lo] if pruned is not None else math.nan,
        "latency_dense_bmax": lat["dense"][b_hi], "latency_collapsed_bmax": lat["collapsed"][b_hi],
        "latency_pruned_bmax": lat["pruned"][b_hi] if pruned is not None else math.nan, "latency_batch": b_hi,
        "pruned_max_abs_diff": plan.max_abs_diff if plan is not None else math.nan, **kkt,
    }  # fmt: skip
    if not row["reached_target"]:
        logger.warning(
            "%s %s %s target %.0f%% seed %d: reached %.1f%% of zeros, not within %.0f points of the target (did not converge there)",
            setup.dataset, optimizer, sparsity_type, 100 * target, seed, 100 * reached, 100 * setup.tolerance,
        )
    return row


def _copy_plain(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# --------------------------------------------------------------------------- learning rates


def _tune_job(shared, job) -> dict:
    """One tuning run (module level, so that worker processes can run it)."""
    from spred.train import TargetSparsity

    setup, val_data, sparsity_type, target, lams, seed = shared
    optimizer, lr = job
    dense, threshold = sparsity_type == "dense", setup.threshold
    cpu = time.process_time()
    with _common.torch_seed(seed):
        model = setup.model_factory()
    try:
        if dense:
            _train(setup, model, optimizer, lr, seed, None, threshold)
            model.cpu()
            sparsity, acc = 0.0, _evaluate(setup, model, val_data)
        else:
            _sparsify(model, sparsity_type, lams[optimizer], _last_layer(model))
            _train(setup, model, optimizer, lr, seed, TargetSparsity(target, threshold=threshold), threshold)
            model.cpu()
            sparsity = spred.sparsity_report(model, threshold=threshold).sparsified_sparsity
            acc = _evaluate(setup, spred.collapse(model, threshold=threshold), val_data)
    except FloatingPointError as exc:  # a learning rate that diverges is a result, not an error
        logger.info("tuning %s lr %g diverged: %s", optimizer, lr, exc)
        sparsity, acc = math.nan, math.nan
    return {"optimizer": optimizer, "lr": lr, "val_acc": acc, "weight_sparsity": sparsity,
            "reached_target": dense or bool(abs(sparsity - target) <= setup.tolerance), "chosen": False,
            "sparsity_type": sparsity_type, "target": 0.0 if dense else target, "seed": seed, "epochs": setup.epochs,
            "cpu_seconds": time.process_time() - cpu}  # fmt: skip


def tune_learning_rates(
    model_factory: Callable[[], nn.Module],
    train_data,
    val_data,
    *,
    optimizers: Sequence[str] = OPTIMIZERS,
    lr_grid: Mapping[str, Sequence[float]] | None = None,
    sparsity_type: str = "unstructured",
    target: float = 0.6,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 64,
    threshold: float = 1e-3,
    momentum: float = 0.9,
    initial_lams: Mapping[str, float] | None = None,
    tolerance: float = 0.02,
    loss_fn: Callable | None = None,
    device=None,
    progress: bool = True,
    n_jobs: int = 1,
) -> tuple[dict[str, float], list[dict]]:
    """Pick one learning rate per optimizer: the best validation accuracy at one sparsity level.

    For every optimizer and learning rate of its grid, a model from ``model_factory`` is
    sparsified (``sparsity_type``), trained on ``train_data`` to ``target`` with the
    controller, collapsed at ``threshold`` and scored on ``val_data``. The chosen
    learning rate is the one with the highest validation accuracy among the runs that
    reached the target (``|sparsity - target| <= tolerance``), or among all runs if none did.
    ``sparsity_type="dense"`` tunes the plain model instead (no spred, no target; for the
    dense baselines: a learning rate tuned under spred need not suit the plain model, whose
    gradient steps are scaled differently; ``"adamw_decoupled"`` is then plain AdamW).
    ``n_jobs`` worker processes run the grid side by side, as in :func:`optimizer_study`.

    Returns
    -------
    lrs : dict of str to float
        The chosen learning rate per optimizer.
    rows : list of dict
        One row per (optimizer, lr): ``val_acc``, ``weight_sparsity``, ``reached_target``, ``chosen``.
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"The 'n_jobs' parameter of tune_learning_rates must be an int >= 1. Got {n_jobs!r} instead.")
    optimizers = _check_names(optimizers, OPTIMIZERS, "optimizers", "tune_learning_rates")
    if sparsity_type not in (*SPARSITY_TYPES, "dense"):
        raise ValueError(f"The 'sparsity_type' parameter of tune_learning_rates must be one of {[*SPARSITY_TYPES, 'dense']}. Got {sparsity_type!r} instead.")
    grid = _check_lr_map(dict(DEFAULT_LR_GRID if lr_grid is None else lr_grid), "lr_grid", "tune_learning_rates", grid=True)
    lams = {**DEFAULT_INITIAL_LAMS, **dict(initial_lams or {})}
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    setup = _Setup(model_factory, train_data, val_data, None, None, epochs, batch_size, threshold, momentum, loss_fn, (1,), 1, tolerance, device, "tuning")
    rows, chosen = [], {}
    jobs = [(o, lr) for o in optimizers for lr in grid[o]]
    shared = (setup, val_data, sparsity_type, target, lams, seed)
    for _, row in _common.map_jobs(_tune_job, shared, jobs, n_jobs=n_jobs, threads=torch.get_num_threads(), progress=progress, desc="tuning lr"):
        rows.append(row)
        logger.info("tuning %s (%s) lr %g: val acc %.4f, sparsity %.3f", row["optimizer"], sparsity_type, row["lr"], row["val_acc"], row["weight_sparsity"])
    for optimizer in optimizers:
        own = [r for r in rows if r["optimizer"] == optimizer and math.isfinite(r["val_acc"])]
        pool = [r for r in own if r["reached_target"]] or own
        if not pool:
            raise FloatingPointError(f"every learning rate of the grid {list(grid[optimizer])} diverged for {optimizer}; lower the grid.")
        best = max(pool, key=lambda r: r["val_acc"])
        best["chosen"] = True
        chosen[optimizer] = best["lr"]
    return chosen, rows


# --------------------------------------------------------------------------- the study


def optimizer_study(
    model_factory: Callable[[], nn.Module],
    train_data,
    test_data,
    *,
    optimizers: Sequence[str] = OPTIMIZERS,
    sparsity_types: Sequence[str] = SPARSITY_TYPES,
    targets: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 10,
    lrs: Mapping | None = None,
    lr_grid: Mapping[str, Sequence[float]] | None = None,
    val_data=None,
    val_fraction: float = 0.1,
    example_inputs=None,
    batch_size: int = 64,
    threshold: float = 1e-3,
    momentum: float = 0.9,
    initial_lams: Mapping[str, float] | None = None,
    tolerance: float = 0.02,
    kkt_samples: int = 2048,
    latency_batch_sizes: Sequence[int] = (1, 256),
    latency_repeats: int = 30,
    dense_baseline: bool = True,
    tune_target: float | None = None,
    tune_seed: int = 0,
    loss_fn: Callable | None = None,
    device=None,
    dataset: str = "custom",
    progress: bool = True,
    n_jobs: int = 1,
    tuning: list | None = None,
) -> list[dict]:
    """Compare optimizers under unstructured and structured spred on your own model.

    For every optimizer, sparsity type, target and seed, ``model_factory()`` (called
    under ``torch.manual_seed(seed)``, the caller's random state untouched) is
    sparsified, trained by :func:`spred.train.fit` with a target-sparsity controller
    to ``target`` zeros among its sparsified weights, collapsed to exact zeros at
    ``threshold``, tested, physically pruned (structured), timed against the dense
    architecture, and checked for L1 optimality (:func:`kkt_statistics`). See the
    module docstring for the optimizers and the sparsity types.

    Parameters
    ----------
    model_factory : callable () -> nn.Module
        Builds a fresh, plain (not sparsified) model.
    train_data, test_data : (X, y) tuple of tensors or DataLoader
        As for :func:`spred.train.fit`.
    optimizers : sequence of str, default=OPTIMIZERS
        Among ``"sgd"``, ``"adam"``, ``"adamw"``, ``"adamw_decoupled"``, ``"adagrad"``.
    sparsity_types : sequence of {"unstructured", "structured"}
        ``structured`` puts one group per output channel / neuron on every Linear and
        Conv layer except the last one (the output layer), which stays dense.
    targets : sequence of float in (0, 1)
    seeds : sequence of int
    epochs : int, default=10
    lrs : mapping, optional
        Fixed learning rates: ``{optimizer: lr}`` for every sparsity type and the dense
        baseline, or ``{"unstructured" | "structured" | "dense": {optimizer: lr}}``.
        Those not given are tuned with :func:`tune_learning_rates` on ``lr_grid``, per
        sparsity type (and on the plain model for the dense baselines).
    lr_grid : mapping of str to sequence of float, optional
        Default: ``DEFAULT_LR_GRID``.
    val_data : (X, y) tuple or DataLoader, optional
        Validation data for the tuning. Default: the last ``val_fraction`` of a seeded
        permutation of ``train_data`` (tensors only), the tuning then trains on the rest.
    val_fraction : float, default=0.1
    example_inputs : Tensor, optional
        Inputs for pruning and timing (at least 2 samples; batches cycle through them).
        Default: the first 64 test inputs.
    batch_size : int, default=64
    threshold : float, default=1e-3
        ``|v| <= threshold`` (group norm for structured) counts as zero.
    momentum : float, default=0.9
        SGD only.
    initial_lams : mapping of str to float, optional
        lam at the start, per optimizer. Default: ``DEFAULT_INITIAL_LAMS``.
    tolerance : float, default=0.02
        A run reached its target when ``|weight_sparsity - target| <= tolerance``; a
        run that did not is logged as a warning and has ``reached_target=False``.
    kkt_samples : int, default=2048
        The KKT check uses the first ``kkt_samples`` training samples.
    latency_batch_sizes : sequence of int, default=(1, 256)
    latency_repeats : int, default=30
    dense_baseline : bool, default=True
        Also train every optimizer without spred (rows with ``sparsity_type="dense"``).
    tune_target : float, optional
        The target at which the learning rates are tuned. Default: the lowest of
        ``targets`` (a learning rate that reaches it reaches the higher ones too; the
        converse fails when a large learning rate kills units, whose weights every lam > 0 zeroes).
    tune_seed : int, default=0
    loss_fn : callable, default=cross-entropy
    device : torch.device or str, optional
        Where to train; evaluation, pruning and timing run on the CPU.
    dataset : str, default="custom"
        Written into every row.
    progress : bool, default=True
        A tqdm bar over the runs.
    n_jobs : int, default=1
        Worker processes for the runs (and the tuning); every run seeds itself, so the
        results do not depend on it, only the wall time (and the timings' noise) does.
        Needs a picklable ``model_factory``, data and ``loss_fn``.
    tuning : list, optional
        If given, the tuning rows (see :func:`tune_learning_rates`) are appended to it.

    Returns
    -------
    list of dict
        One row per run with the keys of ``CSV_COLUMNS``.

    Examples
    --------
    >>> rows = optimizer_study(lambda: MyNet(), (X, y), (X_test, y_test), optimizers=("sgd", "adam"),
    ...                        targets=(0.5, 0.9), seeds=(0,), lrs={"sgd": 0.05, "adam": 1e-3})  # doctest: +SKIP
    """
    who = "optimizer_study"
    if not callable(model_factory) or isinstance(model_factory, nn.Module):
        raise TypeError(f"The 'model_factory' parameter of {who} must be a callable that builds a fresh model (e.g. lambda: MyNet()), not a model. Got {type(model_factory).__name__} instead.")
    optimizers = _check_names(optimizers, OPTIMIZERS, "optimizers", who)
    sparsity_types = _check_names(sparsity_types, SPARSITY_TYPES, "sparsity_types", who)
    targets = _check_targets(targets, who)
    seeds = _check_seeds(seeds, who)
    _check_data(train_data, "train_data")
    _check_data(test_data, "test_data")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("kkt_samples", kkt_samples), ("latency_repeats", latency_repeats)):
        if not _is_int(value, 1):
            raise ValueError(f"The '{name}' parameter of {who} must be an int >= 1. Got {value!r} instead.")
    if not (_is_real(threshold) and threshold > 0):
        raise ValueError(f"The 'threshold' parameter of {who} must be a float > 0 (the controller counts |v| <= threshold as zero). Got {threshold!r} instead.")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"The 'n_jobs' parameter of {who} must be an int >= 1. Got {n_jobs!r} instead.")
    if not (_is_real(tolerance) and 0 < tolerance < 1):
        raise ValueError(f"The 'tolerance' parameter of {who} must be a float in (0, 1). Got {tolerance!r} instead.")
    lrs = _nested_lrs({} if lrs is None else lrs, who)
    if tune_target is None:
        tune_target = min(targets)
    elif not (_is_real(tune_target) and 0 < tune_target < 1):
        raise ValueError(f"The 'tune_target' parameter of {who} must be None or a float in (0, 1). Got {tune_target!r} instead.")
    lams = {**DEFAULT_INITIAL_LAMS, **_check_lr_map({} if initial_lams is None else initial_lams, "initial_lams", who)}
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    probe = model_factory()
    if not isinstance(probe, nn.Module):
        raise TypeError(f"The 'model_factory' parameter of {who} must return an nn.Module. Got {type(probe).__name__} instead.")
    if spred.is_sparsified(probe):
        raise ValueError(f"The 'model_factory' parameter of {who} must return a plain model; it returned a model already sparsified by spred.sparsify.")
    if example_inputs is None:
        example_inputs = _first_samples(test_data, 64)[0]
    if not isinstance(example_inputs, torch.Tensor) or len(example_inputs) < 2:
        raise ValueError(f"The 'example_inputs' parameter of {who} must be a tensor with at least 2 samples (pruning reads the constants zero channels emit from them).")
    example_inputs = example_inputs.cpu()

    wanted = {kind: list(optimizers) for kind in sparsity_types}
    if dense_baseline:
        wanted["dense"] = list(dict.fromkeys(DENSE_OF[o] for o in optimizers))
    sources = {kind: {o: "given" for o in lrs[kind]} for kind in KINDS}
    missing = {kind: [o for o in names if o not in lrs[kind]] for kind, names in wanted.items()}
    missing = {kind: names for kind, names in missing.items() if names}
    if missing:
        if val_data is None:
            if not _is_tensor_pair(train_data):
                raise ValueError(f"tuning the learning rates {missing} needs validation data: pass val_data=..., or lrs={{...}} for every optimizer.")
            tune_train, val_data = _validation_split(train_data, val_fraction)
        else:
            tune_train = train_data
        common = {"lr_grid": lr_grid, "seed": tune_seed, "epochs": epochs, "batch_size": batch_size, "threshold": threshold, "momentum": momentum,
                  "initial_lams": lams, "tolerance": tolerance, "loss_fn": loss_fn, "device": device, "progress": progress,
                  "n_jobs": n_jobs}  # fmt: skip
        for kind, names in missing.items():
            chosen, tune_rows = tune_learning_rates(model_factory, tune_train, val_data, optimizers=names, sparsity_type=kind, target=tune_target, **common)
            if tuning is not None:
                tuning.extend(tune_rows)
            lrs[kind].update(chosen)
            sources[kind].update({o: "tuned" for o in chosen})

    kkt_x, kkt_y = _first_samples(train_data, kkt_samples)
    setup = _Setup(
        model_factory, train_data, test_data, (kkt_x.cpu(), kkt_y.cpu()), example_inputs, epochs, batch_size, threshold, momentum, loss_fn,
        tuple(latency_batch_sizes), latency_repeats, tolerance, device, dataset,
    )  # fmt: skip
    jobs = [("dense", o, None, s) for o in wanted.get("dense", []) for s in seeds]
    jobs += [(t, o, target, s) for t in sparsity_types for o in optimizers for target in targets for s in seeds]
    rows = []
    shared = (setup, lrs, sources, lams)
    for (kind, optimizer, target, seed), row in _common.map_jobs(
        _study_job, shared, jobs, n_jobs=n_jobs, threads=torch.get_num_threads(), progress=progress, desc=f"optimizers ({dataset})",
        postfix=lambda j: {"type": j[0], "opt": j[1], "target": j[2], "seed": j[3]},
    ):
        if row["diverged"]:
            logger.warning("%s %s %s target %s seed %d diverged (non-finite loss)", dataset, optimizer, kind, target, seed)
        logger.info(
            "%s %-16s %-12s target %.2f seed %d: sparsity %.3f, test acc %.4f, %.1f s",
            dataset, optimizer, kind, target or 0.0, seed, row["weight_sparsity"], row["test_acc"], row["train_seconds"],
        )
        rows.append(row)
    _attach_dense(rows)
    return rows


def _study_job(shared, job) -> dict:
    """One run of the study (module level, so that worker processes can run it)."""
    setup, lrs, sources, lams = shared
    kind, optimizer, target, seed = job
    lr, source = lrs[kind][optimizer], sources[kind][optimizer]
    cpu = time.process_time()
    try:
        if kind == "dense":
            row = _dense_row(setup, optimizer, lr, source, seed)
        else:
            row = _sparse_row(setup, optimizer, kind, target, lr, source, seed, lams[optimizer])
    except FloatingPointError as exc:  # a diverged run is a result: recorded, not raised
        logger.info("%s %s target %s seed %d diverged: %s", optimizer, kind, target, seed, exc)
        row = _diverged_row(setup, optimizer, kind, target, lr, source, seed, lams[optimizer])
    row["cpu_seconds"] = time.process_time() - cpu
    return row


def _diverged_row(setup: _Setup, optimizer: str, kind: str, target, lr: float, source: str, seed: int, initial_lam: float) -> dict:
    row = {c: math.nan for c in CSV_COLUMNS}
    row.update({
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": kind, "target": 0.0 if target is None else target, "seed": seed,
        "lr": lr, "lr_source": source, "epochs": setup.epochs, "diverged": True, "threshold": setup.threshold,
        "lam_initial": math.nan if kind == "dense" else initial_lam, "reached_target": False,
    })  # fmt: skip
    return row


def _attach_dense(rows: list[dict]) -> None:
    """Fill ``dense_test_acc`` of every sparse row from the dense run of its optimizer and seed."""
    dense = {(r["dataset"], r["optimizer"], r["seed"]): r["test_acc"] for r in rows if r["sparsity_type"] == "dense"}
    for r in rows:
        if r["sparsity_type"] != "dense":
            r["dense_test_acc"] = dense.get((r["dataset"], DENSE_OF[r["optimizer"]], r["seed"]), math.nan)


# --------------------------------------------------------------------------- summaries


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _mean_std(values) -> tuple[float, float]:
    vals = [float(v) for v in values if isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


SUMMARY_METRICS = {
    "weight_sparsity": lambda r: r["weight_sparsity"],
    "channel_sparsity": lambda r: r["channel_sparsity"],
    "test_acc": lambda r: r["test_acc"],
    "acc_change": lambda r: r["test_acc"] - r["dense_test_acc"],
    "test_acc_before_collapse": lambda r: r["test_acc_before_collapse"],
    "train_seconds": lambda r: r["train_seconds"],
    "latency_collapsed_bmax": lambda r: r["latency_collapsed_bmax"],
    "latency_pruned_bmax": lambda r: r["latency_pruned_bmax"],
    "latency_dense_bmax": lambda r: r["latency_dense_bmax"],
    "speed_collapsed_b1": lambda r: _ratio(r["latency_dense_b1"], r["latency_collapsed_b1"]),
    "speed_pruned_b1": lambda r: _ratio(r["latency_dense_b1"], r["latency_pruned_b1"]),
    "speed_collapsed_bmax": lambda r: _ratio(r["latency_dense_bmax"], r["latency_collapsed_bmax"]),
    "speed_pruned_bmax": lambda r: _ratio(r["latency_dense_bmax"], r["latency_pruned_bmax"]),
    "flop_ratio": lambda r: _ratio(r["macs_dense"], r["macs_pruned"]),
    "lam_final": lambda r: r["lam_final"],
    "kkt_relative": lambda r: r["kkt_relative"],
    "lam_fit_ratio": lambda r: r["lam_fit_ratio"],
    "kkt_median": lambda r: r["kkt_median"],
    "zero_violations": lambda r: r["zero_violations"],
}


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and std over seeds per (dataset, sparsity type, optimizer, target), dense baselines included.

    ``acc_change`` is the test accuracy minus that of the dense run of the same
    optimizer and seed; ``speed_*`` are dense latency / collapsed (pruned) latency of
    the same run (the models were timed in turns); ``n_reached`` counts the seeds whose
    sparsity is within the tolerance of the target.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["sparsity_type"], r["optimizer"], float(r["target"]))].append(r)
    out = []
    for (dataset, kind, optimizer, target), rs in groups.items():
        row = {"dataset": dataset, "sparsity_type": kind, "optimizer": optimizer, "target": target, "lr": rs[0]["lr"], "n_seeds": len(rs),
               "n_reached": sum(bool(r["reached_target"]) for r in rs), "n_diverged": sum(bool(r["diverged"]) for r in rs)}  # fmt: skip
        for name, get in SUMMARY_METRICS.items():
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(get(r) for r in rs)
        out.append(row)
    order = {k: i for i, k in enumerate(("dense", *SPARSITY_TYPES))}
    out.sort(key=lambda r: (r["dataset"], order.get(r["sparsity_type"], 9), OPTIMIZERS.index(r["optimizer"]), r["target"]))
    return out


def _pm(mean: float, std: float, fmt: str = ".3f", scale: float = 1.0) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{format(scale * mean, fmt)} ± {format(scale * std, fmt)}"


def summary_table(summary: Sequence[Mapping], dataset: str, sparsity_type: str) -> str:
    """One markdown table per dataset and sparsity type (mean ± std over seeds)."""
    rows = [r for r in summary if r["dataset"] == dataset and r["sparsity_type"] in (sparsity_type, "dense")]
    rows = [r for r in rows if r["sparsity_type"] == sparsity_type or any(DENSE_OF[o] == r["optimizer"] for o in _opts(summary))]
    structured = sparsity_type == "structured"
    cols = [
        ("optimizer", lambda r: r["optimizer"] + (" (dense)" if r["sparsity_type"] == "dense" else "")),
        ("lr", lambda r: f"{r['lr']:g}"),
        ("target", lambda r: "-" if r["sparsity_type"] == "dense" else f"{100 * r['target']:.0f}%"),
        ("weights zero (%)", lambda r: _pm(r["weight_sparsity_mean"], r["weight_sparsity_std"], ".1f", 100)),
        ("reached", lambda r: f"{r['n_reached']}/{r['n_seeds']}"),
        ("channels zero (%)", lambda r: _pm(r["channel_sparsity_mean"], r["channel_sparsity_std"], ".1f", 100)),
        ("test acc (%)", lambda r: _pm(r["test_acc_mean"], r["test_acc_std"], ".2f", 100)),
        ("vs dense (pts)", lambda r: _pm(r["acc_change_mean"], r["acc_change_std"], "+.2f", 100)),
        ("train s", lambda r: _pm(r["train_seconds_mean"], r["train_seconds_std"], ".1f")),
        ("speed-up collapsed b=max", lambda r: _pm(r["speed_collapsed_bmax_mean"], r["speed_collapsed_bmax_std"], ".2f")),
    ]
    if structured:
        cols += [
            ("speed-up pruned b=1", lambda r: _pm(r["speed_pruned_b1_mean"], r["speed_pruned_b1_std"], ".2f")),
            ("speed-up pruned b=max", lambda r: _pm(r["speed_pruned_bmax_mean"], r["speed_pruned_bmax_std"], ".2f")),
            ("FLOP ratio", lambda r: _pm(r["flop_ratio_mean"], r["flop_ratio_std"], ".2f")),
        ]
    cols += [
        ("lam", lambda r: "-" if not math.isfinite(r["lam_final_mean"]) else f"{r['lam_final_mean']:.2g}"),
        ("KKT max/lam", lambda r: "-" if not math.isfinite(r["kkt_relative_mean"]) else f"{r['kkt_relative_mean']:.3g}"),
        ("lam_fit/lam", lambda r: _pm(r["lam_fit_ratio_mean"], r["lam_fit_ratio_std"], ".3g")),
        ("KKT median", lambda r: _pm(r["kkt_median_mean"], r["kkt_median_std"], ".2f")),
        ("zero viol. (%)", lambda r: _pm(r["zero_violations_mean"], r["zero_violations_std"], ".1f", 100)),
    ]
    return _common.markdown_table(rows, cols)


def _opts(summary: Sequence[Mapping]) -> list[str]:
    present = {r["optimizer"] for r in summary if r["sparsity_type"] != "dense"}
    return [o for o in OPTIMIZERS if o in present]


def plot_panel(summary: Sequence[Mapping], dataset: str, sparsity_type: str, path: str | Path) -> Path:
    """The 2x2 panel of one dataset and sparsity type, one line per optimizer (mean ± std over seeds).

    (a) test accuracy, (b) inference time at the largest batch (collapsed model; for
    structured also the pruned one, solid), (c) accuracy change against the dense model
    of the same optimizer (points), (d) inference time relative to the dense
    architecture timed in turns with it (%), all against the fraction of zero weights reached.
    The dense run sits at sparsity 0.
    """
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8.2), layout="constrained")
    (ax_acc, ax_lat), (ax_dacc, ax_dlat) = fig.subplots(2, 2, sharex=True)
    structured = sparsity_type == "structured"
    lat_key = "latency_pruned_bmax" if structured else "latency_collapsed_bmax"
    speed_key = "speed_pruned_bmax" if structured else "speed_collapsed_bmax"
    for opt in _opts(summary):
        rs = sorted((r for r in summary if r["dataset"] == dataset and r["sparsity_type"] == sparsity_type and r["optimizer"] == opt), key=lambda r: r["target"])
        if not rs:
            continue
        dense = [r for r in summary if r["dataset"] == dataset and r["sparsity_type"] == "dense" and r["optimizer"] == DENSE_OF[opt]]
        style = {"color": _COLORS[opt], "marker": _MARKERS[opt], "capsize": 3, "label": LABELS[opt], "ms": 5}
        x = [0.0] * bool(dense) + [100 * r["weight_sparsity_mean"] for r in rs]
        xerr = [0.0] * bool(dense) + [100 * r["weight_sparsity_std"] for r in rs]
        acc = dense[:1] + rs
        ax_acc.errorbar(x, [100 * r["test_acc_mean"] for r in acc], yerr=[100 * r["test_acc_std"] for r in acc], xerr=xerr, **style)
        ax_dacc.errorbar(x, [0.0] * bool(dense) + [100 * r["acc_change_mean"] for r in rs], yerr=[0.0] * bool(dense) + [100 * r["acc_change_std"] for r in rs], xerr=xerr, **style)
        xs = [100 * r["weight_sparsity_mean"] for r in rs]
        ax_lat.errorbar(xs, [1e3 * r[f"{lat_key}_mean"] for r in rs], yerr=[1e3 * r[f"{lat_key}_std"] for r in rs], **style)
        ax_dlat.errorbar(xs, [100 * (1 / r[f"{speed_key}_mean"] - 1) for r in rs], **style)
        ax_lat.plot(xs, [1e3 * r["latency_dense_bmax_mean"] for r in rs], color=_COLORS[opt], ls=":", lw=1)
        if structured:
            ax_lat.plot(xs, [1e3 * r["latency_collapsed_bmax_mean"] for r in rs], color=_COLORS[opt], ls="--", lw=1)
    what = "pruned (solid), collapsed (dashed)" if structured else "collapsed (solid)"
    ax_acc.set(ylabel="test accuracy (%)", title="(a) accuracy (dense run at 0)")
    ax_lat.set(ylabel="ms per forward pass, largest batch", title=f"(b) inference time: {what}, dense (dotted)")
    ax_dacc.set(xlabel="weights zero (%)", ylabel="accuracy change vs dense (points)", title="(c) relative accuracy")
    ax_dlat.set(xlabel="weights zero (%)", ylabel="inference time vs dense (%)", title=f"(d) relative inference time ({'pruned' if structured else 'collapsed'})")
    for ax in (ax_dacc, ax_dlat):
        ax.axhline(0, color="0.7", lw=0.8)
    ax_acc.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"spred {sparsity_type} on {dataset}: optimizers (mean ± std over seeds)")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- the experiment


@dataclass
class OptimizersResults:
    rows: list[dict]
    summary: list[dict]
    tuning: list[dict]
    lrs: dict[str, dict[str, dict[str, float]]]  # dataset -> sparsity type or "dense" -> optimizer -> lr
    files: dict[str, Path]
    seconds: float
    cpu_seconds: float = math.nan  # CPU time of this process and its workers: the wall time on one free core, roughly


def run_experiment(cfg: OptimizersConfig, out: str | Path | None = None, *, plot_figure: bool = True, progress: bool | None = None,
                   data_home=None, n_jobs: int = 1) -> OptimizersResults:  # fmt: skip
    """Run the study on every dataset of ``cfg`` and write the outputs (see the module docstring).

    ``n_jobs`` worker processes run the independent runs side by side (see :func:`optimizer_study`).
    """
    cfg = check_config(cfg)
    out_dir = _common.prepare_out_dir(out, NAME)
    start, cpu_start = time.perf_counter(), time.process_time()
    rows: list[dict] = []
    tuning: list[dict] = []
    chosen: dict[str, dict[str, float]] = {}
    for dataset in cfg.datasets:
        train, test = load_dataset(dataset, cfg, data_home)
        epochs = cfg.epochs if dataset == "mnist" else cfg.fashion_epochs
        tune_rows: list[dict] = []
        ds_rows = optimizer_study(
            StudyCNN, train, test, optimizers=cfg.optimizers, sparsity_types=cfg.sparsity_types, targets=cfg.targets,
            seeds=cfg.seeds, epochs=epochs, lrs=cfg.lrs, lr_grid=cfg.lr_grid, val_fraction=cfg.val_fraction,
            batch_size=cfg.batch_size, threshold=cfg.threshold, momentum=cfg.momentum, initial_lams=cfg.initial_lams,
            tolerance=cfg.tolerance, kkt_samples=cfg.kkt_samples, latency_batch_sizes=cfg.latency_batch_sizes,
            latency_repeats=cfg.latency_repeats, dense_baseline=cfg.dense_baseline,
            tune_target=cfg.tune_target, tune_seed=cfg.tune_seed, dataset=dataset, progress=progress is not False, tuning=tune_rows,
            n_jobs=n_jobs,
        )  # fmt: skip
        for r in tune_rows:
            r["dataset"] = dataset
        tuning += tune_rows
        chosen[dataset] = {kind: {r["optimizer"]: r["lr"] for r in ds_rows if r["sparsity_type"] == kind} for kind in KINDS}
        rows += ds_rows
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if n_jobs > 1:  # the runs' CPU time was spent in the workers
        cpu_seconds += sum(r["cpu_seconds"] for r in [*rows, *tuning] if math.isfinite(r.get("cpu_seconds", math.nan)))
    summary = summarise(rows)
    files = {
        "runs": _common.write_csv(rows, out_dir / "optimizers.csv", CSV_COLUMNS),
        "summary": _common.write_csv(summary, out_dir / "optimizers_summary.csv"),
    }
    if tuning:
        files["tuning"] = _common.write_csv(tuning, out_dir / "optimizers_lr_tuning.csv", ("dataset", *TUNING_COLUMNS))
    if plot_figure:
        for dataset in cfg.datasets:
            for kind in cfg.sparsity_types:
                files[f"figure_{dataset}_{kind}"] = plot_panel(summary, dataset, kind, out_dir / f"optimizers_{dataset}_{kind}.png")
    results = OptimizersResults(rows, summary, tuning, chosen, files, seconds, cpu_seconds)
    (out_dir / "summary.md").write_text(report(results, cfg) + "\n")
    files["markdown"] = out_dir / "summary.md"
    extra = {"learning_rates": chosen, "lr_tuning": tuning, "wall_seconds": seconds, "cpu_seconds": cpu_seconds, "torch_threads": torch.get_num_threads(),
             "n_jobs": n_jobs}
    files["config"] = _common.write_config(out_dir / "config.json", cfg, experiment=NAME, extra=extra)
    return results


def report(results: OptimizersResults, cfg: OptimizersConfig) -> str:
    """The markdown printed at the end: learning rates, one table per dataset and type, the runs that missed their target."""
    parts = []
    for dataset, by_kind in results.lrs.items():
        for kind, lrs in by_kind.items():
            tuned = {r["optimizer"] for r in results.tuning if r.get("dataset") == dataset and r["chosen"] and r["sparsity_type"] == kind}
            desc = ", ".join(f"{o} {lr:g}" + (" (tuned)" if o in tuned else " (given)") for o, lr in lrs.items())
            if desc:
                parts.append(f"Learning rates on {dataset} ({kind}): {desc}.")
    for dataset in cfg.datasets:
        for kind in cfg.sparsity_types:
            n = len(cfg.seeds)
            parts += ["", f"**{dataset}, {kind}** (mean ± std over {n} seed{'s' * (n > 1)}; latency: batch {max(cfg.latency_batch_sizes)}, "
                      f"{torch.get_num_threads()} thread(s); 'reached': seeds within {100 * cfg.tolerance:.0f} points of the target):", "",
                      summary_table(results.summary, dataset, kind)]  # fmt: skip
    missed = [r for r in results.rows if r["sparsity_type"] != "dense" and not r["reached_target"]]
    parts.append("")
    if missed:
        parts.append(f"Did not converge to the target (|reached - target| > {100 * cfg.tolerance:.0f} points) in {len(missed)} of "
                     f"{sum(r['sparsity_type'] != 'dense' for r in results.rows)} runs:")  # fmt: skip
        parts += [f"- {r['dataset']} {r['optimizer']} {r['sparsity_type']} target {100 * r['target']:.0f}% seed {r['seed']}: "
                  + ("diverged (training loss not finite)" if r["diverged"] else f"reached {100 * r['weight_sparsity']:.1f}%") for r in missed]  # fmt: skip
    else:
        parts.append(f"Every run reached its target within {100 * cfg.tolerance:.0f} points.")
    diverged_dense = [r for r in results.rows if r["sparsity_type"] == "dense" and r["diverged"]]
    parts += [f"- dense baseline {r['dataset']} {r['optimizer']} seed {r['seed']} diverged (training loss not finite)" for r in diverged_dense]
    return "\n".join(parts)


def add_arguments(parser) -> None:
    """Options of ``spred run optimizers``."""
    _common.add_common_arguments(parser, NAME, "MNIST only, 10,000 images, 8 epochs, one seed (about 10 minutes on 2 cores with --jobs 2)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help="datasets (default: mnist fashion_mnist)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None, help="optimizers (default: all)")
    parser.add_argument("--types", dest="sparsity_types", nargs="+", choices=SPARSITY_TYPES, default=None, help="sparsity types (default: both)")
    parser.add_argument("--targets", type=float, nargs="+", default=None, metavar="T", help="target sparsities in (0, 1) (default 0.2 0.4 0.6 0.8)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per MNIST run (default 15; --quick: 8)")
    parser.add_argument("--fashion-epochs", dest="fashion_epochs", type=int, default=None, help="epochs per Fashion-MNIST run (default 40)")
    parser.add_argument("--n-train", dest="n_train", type=int, default=None, help="MNIST training images (default: all 60000; --quick: 10000)")
    parser.add_argument("--lr", dest="lrs", nargs="+", default=None, metavar="[TYPE:]OPT=LR",
                        help="fixed learning rates, e.g. sgd=0.03 (every type) or structured:sgd=0.1 dense:sgd=0.03 (others are tuned)")
    parser.add_argument("--threshold", type=float, default=None, help="|v| <= threshold counts as zero (default 1e-3)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="worker processes running the runs side by side (default 1; results do not depend on it)")


def _parse_lrs(items) -> dict[str, dict[str, float]] | None:
    """``--lr`` values as ``{kind: {optimizer: lr}}``; ``OPT=LR`` sets every kind."""
    if items is None:
        return None
    out: dict[str, dict[str, float]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"The '--lr' option of spred run optimizers takes [TYPE:]OPT=LR pairs such as sgd=0.03. Got {item!r} instead.")
        try:
            lr = float(value)
        except ValueError as exc:
            raise ValueError(f"The '--lr' option of spred run optimizers needs a number after '='. Got {item!r} instead.") from exc
        kind, colon, opt = name.rpartition(":")
        if colon and kind not in KINDS:
            raise ValueError(f"The '--lr' option of spred run optimizers takes a type among {list(KINDS)} before ':'. Got {item!r} instead.")
        for k in [kind] if colon else KINDS:
            out.setdefault(k, {})[opt] = lr
    return out


def config_from_args(args) -> OptimizersConfig:
    """The resolved config: defaults, ``--quick``, ``--config FILE``, then the other options."""
    cli = {
        "seeds": args.seeds, "datasets": args.datasets, "optimizers": args.optimizers, "sparsity_types": args.sparsity_types,
        "targets": args.targets, "epochs": args.epochs, "fashion_epochs": args.fashion_epochs, "n_train": args.n_train,
        "lrs": _parse_lrs(args.lrs), "threshold": args.threshold,
    }  # fmt: skip
    cfg = _common.resolve_config(OptimizersConfig, quick=args.quick, quick_values=QUICK, config_file=args.config, cli_values=cli)
    return check_config(cfg)


def run(args) -> int:
    """``spred run optimizers``: run, write the outputs, print the tables; returns the exit code."""
    cfg = config_from_args(args)
    with _common.num_threads(args.threads):
        if args.jobs < 1:
            raise ValueError(f"The '--jobs' option of spred run optimizers must be an int >= 1. Got {args.jobs} instead.")
        results = run_experiment(cfg, args.out, plot_figure=not args.no_plot, n_jobs=args.jobs)
        text = report(results, cfg)
    print(text)
    print()
    print(f"wrote {', '.join(str(p) for p in results.files.values())} in {results.seconds:.1f} s ({results.cpu_seconds:.1f} s of CPU time)")
    return 0
