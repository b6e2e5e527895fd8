"""``spred run compression``: network compression with spred against pruning baselines.

Protocol (``docs/compression.md`` has the long version and the numbers):

* **Unstructured.** LeNet-300-100 and LeNet-5-Caffe on MNIST (ResNet-18 on CIFAR-10
  with ``--cifar10 PATH --device cuda``). Every method is run at the same target
  compression ratios ``R``: the final model may have at most ``floor(total / R)``
  nonzero parameters, ``total`` counting every weight and bias of the original model
  (buffers never count). The reported ratio is ``total / nonzero`` of the final model.
* **Methods, at equal epochs** (``epochs`` of training + ``finetune_epochs`` of masked
  fine-tuning for everyone, the same optimizer, batch size and data order):

  ``spred``
      :func:`spred.sparsify` (elementwise), trained with a target-sparsity
      controller (:class:`spred.train.TargetSparsity`) that adapts lam, then
      :func:`spred.collapse` at ``threshold``;
  ``magnitude``
      dense training, one-shot global magnitude pruning
      (``torch.nn.utils.prune.global_unstructured``);
  ``gmp``
      gradual magnitude pruning (Zhu & Gupta, 2017), cubic schedule;
  ``synflow``
      SynFlow (Tanaka et al., 2020): 100 data-free rounds at initialisation, then
      training with the mask for ``epochs + finetune_epochs``;
  ``str``
      soft threshold reparametrisation (Kusupati et al., 2020), its weight decay
      adapted to reach the target sparsity;
  ``l1``
      dense training with ``lam * ||W||_1`` added to the loss (lam: the final lam of
      spred for the same model, ratio and seed, unless ``l1_lam`` is set).

  Every method then keeps its best weights within the budget
  (:func:`~spred.experiments._baselines_prune.budget_masks`: magnitude, or the SynFlow
  score), removes dead units exactly (constants folded into the next bias), and
  fine-tunes with the zeros frozen from a fresh optimizer (``fit(mask=...)``).
  Each row records the training cost: epochs, pruning steps and wall time.
* **Structured.** LeNet-5-Caffe (or ``--structured-model smallvgg``) with ``groups="out"`` (one penalty group per conv
  filter and hidden neuron, not the output layer), trained to a target sparsity,
  collapsed, fine-tuned with frozen zeros, then physically pruned by
  :func:`spred.compress.prune_channels`. Reported: the outputs of the pruned module
  against the collapsed one, parameters, FLOPs and the measured latency at batch 1
  and 256; and a filter-norm baseline pruned to the same widths.

Outputs under ``--out``: ``compression.csv`` (one row per model, method, ratio and
seed), ``compression_structured.csv``, ``compression_summary.csv`` (mean and std
over seeds), ``compression.png`` (test error against compression ratio per method),
``summary.md`` and ``config.json``.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from torch import nn

import spred
from spred.experiments import _baselines_prune as bp
from spred.experiments import _common

logger = logging.getLogger("spred")

__all__ = [
    "CompressionConfig",
    "CompressionResults",
    "DEFAULT_LRS",
    "DEFAULT_RATIOS",
    "Data",
    "METHODS",
    "PUBLISHED",
    "QUICK",
    "RandomCropFlip",
    "add_arguments",
    "build_model",
    "check_config",
    "comparisons",
    "config_from_args",
    "load_data",
    "plot",
    "report",
    "run",
    "run_experiment",
    "run_structured",
    "run_unstructured",
    "structured_table",
    "summarise",
    "summary_table",
]

NAME = "compression"
METHODS = ("spred", "magnitude", "gmp", "synflow", "str", "l1")
LABELS = {"dense": "dense", "spred": "spred", "magnitude": "magnitude (one-shot)", "gmp": "gradual magnitude",
          "synflow": "SynFlow", "str": "STR", "l1": "L1 in loss", "spred_group": "spred (groups)",
          "filter_norm": "filter norm"}  # fmt: skip
MODELS = ("lenet300100", "lenet5caffe", "resnet18")
#: CNNs of the structured experiment (MNIST); zero channels of both are removed exactly.
STRUCTURED_MODELS = ("lenet5caffe", "smallvgg")
DATASET = {"lenet300100": "mnist", "lenet5caffe": "mnist", "resnet18": "cifar10", "smallvgg": "mnist"}
#: Constructor options: SmallVGG on MNIST, without BatchNorm (each conv has a bias, zeroed with its channel).
MODEL_KWARGS = {"smallvgg": {"in_channels": 1, "batch_norm": False}}
DEFAULT_LRS = {"spred": 1e-2, "magnitude": 1e-3, "gmp": 3e-3, "synflow": 3e-3, "str": 3e-3, "l1": 3e-3}
DEFAULT_RATIOS = {"lenet300100": (12.0, 68.0), "lenet5caffe": (12.0, 280.0), "resnet18": (10.0, 50.0)}
#: Published (compression ratio, test error %) on MNIST; DESIGN.md section 4.
PUBLISHED = {
    "lenet300100": {"Sparse VD": (68.0, 1.92), "Han et al.": (12.0, 1.59)},
    "lenet5caffe": {"Sparse VD": (280.0, 0.75), "Han et al.": (12.0, 0.77)},
}
CSV_COLUMNS = (
    "model", "method", "seed", "target_ratio", "compression_ratio", "total", "nonzero", "nonzero_weights",
    "test_error", "test_error_before_finetune", "train_epochs", "finetune_epochs", "epochs", "prune_steps",
    "wall_s", "lam", "dead_units", "train_size",
)  # fmt: skip
STRUCTURED_COLUMNS = (
    "model", "method", "seed", "target_sparsity", "lam_exponent", "round_to", "widths_before", "widths_nonzero", "widths_after", "params", "params_pruned",
    "compression_ratio", "flops", "flops_pruned", "flop_ratio", "latency_b1_ms", "latency_b1_pruned_ms",
    "speedup_b1", "latency_b256_ms", "latency_b256_pruned_ms", "speedup_b256", "latency_b1_cl_ms", "latency_b1_cl_pruned_ms",
    "speedup_b1_cl", "latency_b256_cl_ms", "latency_b256_cl_pruned_ms", "speedup_b256_cl", "max_abs_diff", "max_rel_diff", "max_abs_diff_fp64",
    "fp32_error_collapsed", "fp32_error_pruned",
    "test_error_collapsed", "test_error", "epochs", "wall_s", "threads",
)  # fmt: skip


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CompressionConfig:
    """Settings of the compression experiment (defaults: the full MNIST run).

    Parameters
    ----------
    models : tuple of {"lenet300100", "lenet5caffe", "resnet18"}
        Networks for the unstructured comparison (MNIST; ResNet-18 on CIFAR-10);
        empty for the structured experiment only.
    ratios : mapping of str to tuple of float
        Target compression ratios per model (every method runs at each of them).
    methods : tuple of str
        Which of ``METHODS`` to run (the dense reference always runs).
    epochs, finetune_epochs : int
        Training epochs ``N`` and masked fine-tuning epochs ``M``; every method gets
        ``N + M`` (SynFlow trains ``N + M`` epochs with its mask from the start).
    train_size : int or None
        Use a random subset of the training set of this size (None: all of it).
    batch_size : int
    optimizer : {"adam", "sgd"}
        For every method and phase (SGD with ``momentum``).
    lrs : mapping of str to float
        Learning rate of the training phase of each method (the dense model that
        magnitude pruning starts from uses ``lrs["magnitude"]``). The defaults were
        chosen per method from {1e-3, 3e-3, 1e-2} on a validation split of the
        training set (LeNet-300-100, 10,000 images, 68x; docs/compression.md).
    finetune_lr : float
        Learning rate of the masked fine-tuning (every method), cosine schedule.
    lam : float
        spred's initial lam (the controller adapts it; start low).
    threshold : float
        ``|v| <= threshold`` counts as zero for spred's controller and ``collapse``.
    controller_margin : float
        spred's and STR's controllers aim at ``(1 + controller_margin)`` times the
        weight budget; the smallest weights are then trimmed to the budget.
    ramp : float
        Fraction of the training epochs over which the sparsity ramps up (spred's
        controller, STR's controller, the end of the gradual magnitude schedule).
    gmp_start : float
        Fraction of the training epochs before the first gradual pruning step.
    gmp_every : int
        Optimizer steps between two gradual pruning steps.
    synflow_rounds : int
        SynFlow's pruning rounds at initialisation.
    str_s_init, str_lam : float
        STR's initial threshold parameter (threshold ``sigmoid(s_init)``) and its
        initial weight decay of the weights and the thresholds; both are adapted
        during training to reach the target (see ``STRController``).
    l1_lam : float or None
        Strength of the L1 penalty of ``l1``; None: spred's final lam for the same
        model, ratio and seed (or ``lam`` when spred did not run).
    dense : bool
        Train the dense reference (its error and wall time in the table). Required by
        ``magnitude``, which prunes that model.
    structured : bool
        Also run the structured (channel) experiment.
    structured_model : str
        The CNN of the structured experiment: ``lenet5caffe``, or ``smallvgg``
        (:class:`spred.models.SmallVGG` on MNIST without BatchNorm, six 3x3 convs
        32-32-64-64-128-128), whose inference time is in its convolutions;
        LeNet-5's time on a CPU is mostly in its max-pools and first conv.
    structured_sparsity : float or tuple of float
        Target fractions of zeros (weights in removed channels) among the grouped
        weights: one structured spred run per value and exponent, from a gentle
        operating point to an extreme one.
    structured_lam_exponents : tuple of float
        One structured spred run per value ``e``: lam of each grouped layer is
        ``lam * positions**e``, with ``positions`` the output positions per sample
        (FLOPs per weight: 576 and 64 for LeNet-5's convolutions, 1 for a Linear
        layer); 0 weighs all groups alike (parameters), 1 makes the penalty
        proportional to the FLOPs a channel costs.
    structured_epochs, structured_finetune_epochs : int or None
        Epochs of the structured runs (None: ``epochs`` / ``finetune_epochs``).
    round_to : int or None
        Passed to :func:`spred.compress.prune_channels` in the structured runs: every
        pruned layer keeps a multiple of ``round_to`` channels (some of them zero), the
        widths CPU kernels run fastest at (8 for float32 on x86). None: the exact
        widths. The filter-norm baseline keeps as many nonzero channels as spred and is
        rounded the same way.
    latency_repeats : int
        Timed forward passes per model and batch size (medians are reported).
    seeds : tuple of int
    device : str
        ``"cpu"``, ``"cuda"``, ...
    cifar10 : str or None
        Folder of CIFAR-10's python batches (needed for ``resnet18``).
    """

    models: tuple[str, ...] = ("lenet300100", "lenet5caffe")
    ratios: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_RATIOS))
    methods: tuple[str, ...] = METHODS
    epochs: int = 30
    finetune_epochs: int = 10
    train_size: int | None = None
    batch_size: int = 100
    optimizer: str = "adam"
    lrs: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LRS))
    finetune_lr: float = 1e-3
    lam: float = 1e-5
    threshold: float = 1e-3
    controller_margin: float = 0.1
    ramp: float = 0.67
    gmp_start: float = 0.1
    gmp_every: int = 50
    synflow_rounds: int = 100
    str_s_init: float = -6.0
    str_lam: float = 1e-5
    l1_lam: float | None = None
    dense: bool = True
    structured: bool = True
    structured_model: str = "lenet5caffe"
    structured_sparsity: tuple[float, ...] = (0.5, 0.8, 0.95)
    structured_lam_exponents: tuple[float, ...] = (0.0, 0.5)
    structured_epochs: int | None = None
    structured_finetune_epochs: int | None = None
    round_to: int | None = None
    latency_repeats: int = 30
    seeds: tuple[int, ...] = (0, 1, 2)
    device: str = "cpu"
    cifar10: str | None = None


#: ``--quick``: LeNet-300-100 on 10,000 MNIST images and the structured LeNet-5, one seed.
QUICK = {
    "models": ("lenet300100",),
    "ratios": {"lenet300100": (12.0, 68.0)},
    "train_size": 10_000,
    "epochs": 20,
    "finetune_epochs": 5,
    "structured_epochs": 10,
    "structured_finetune_epochs": 3,
    "structured_lam_exponents": (0.5,),
    "structured_sparsity": (0.5, 0.95),
    "latency_repeats": 20,
    "seeds": (0,),
}


def _err(kind, name: str, expected: str, value) -> Exception:
    got = f"{value!r} of type {type(value).__name__}" if kind is TypeError else repr(value)
    return kind(f"The '{name}' parameter of CompressionConfig must be {expected}. Got {got} instead.")


def _check_int(cfg, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _err(TypeError, name, f"an int >= {low}", value)
    if value < low:
        raise _err(ValueError, name, f"an int >= {low}", value)


def _check_real(cfg, name: str, low: float, high: float = math.inf, *, low_open: bool = False, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    interval = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise _err(TypeError, name, f"a float in {interval}", value)
    ok = (value > low if low_open else value >= low) and value <= high
    if not (ok and math.isfinite(value)):
        raise _err(ValueError, name, f"a float in {interval}", value)


def _check_choices(cfg, name: str, choices: Sequence[str]) -> None:
    values = getattr(cfg, name)
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise _err(TypeError, name, f"a non-empty tuple of names from {tuple(choices)}", values)
    bad = [v for v in values if v not in choices]
    if bad or len(set(values)) != len(values):
        raise _err(ValueError, name, f"distinct names from {tuple(choices)}", tuple(values))


def check_config(cfg: CompressionConfig) -> CompressionConfig:
    """Validate every field of ``cfg``; return it with ``ratios`` and ``structured_sparsity`` as tuples of floats.

    Raises
    ------
    TypeError
        A field of the wrong type.
    ValueError
        A field with a wrong value; the message names the field and the value.
    """
    if not (cfg.models == () and cfg.structured is True):  # () with structured: the structured experiment only
        _check_choices(cfg, "models", MODELS)
    _check_choices(cfg, "methods", METHODS)
    if not isinstance(cfg.ratios, Mapping):
        raise _err(TypeError, "ratios", "a mapping model -> tuple of compression ratios", cfg.ratios)
    ratios = {}
    for model in cfg.models:
        values = cfg.ratios.get(model)
        if values is None:
            raise ValueError(f"The 'ratios' parameter of CompressionConfig has no ratios for model {model!r}. Got {dict(cfg.ratios)!r}.")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise _err(TypeError, "ratios", f"a non-empty tuple of numbers for {model!r}", values)
        for r in values:
            if isinstance(r, bool) or not isinstance(r, Real):
                raise _err(TypeError, "ratios", "numbers >= 1", r)
            if not (math.isfinite(r) and r >= 1):
                raise _err(ValueError, "ratios", "numbers >= 1", r)
        ratios[model] = tuple(float(r) for r in values)
    for name in ("epochs", "batch_size", "gmp_every", "synflow_rounds", "latency_repeats"):
        _check_int(cfg, name, 1)
    _check_int(cfg, "finetune_epochs", 0)
    _check_int(cfg, "train_size", 2, optional=True)
    _check_int(cfg, "structured_epochs", 1, optional=True)
    _check_int(cfg, "structured_finetune_epochs", 0, optional=True)
    _check_int(cfg, "round_to", 1, optional=True)
    if cfg.optimizer not in ("adam", "sgd"):
        raise _err(ValueError, "optimizer", "one of ('adam', 'sgd')", cfg.optimizer)
    _check_real(cfg, "finetune_lr", 0.0, low_open=True)
    if not isinstance(cfg.lrs, Mapping):
        raise _err(TypeError, "lrs", "a mapping method -> learning rate", cfg.lrs)
    missing = [m for m in cfg.methods if m not in cfg.lrs] + ([] if "magnitude" in cfg.lrs else ["magnitude"])
    if missing:
        raise ValueError(f"The 'lrs' parameter of CompressionConfig has no learning rate for {sorted(set(missing))}. Got {dict(cfg.lrs)!r}.")
    for method, lr in cfg.lrs.items():
        if isinstance(lr, bool) or not isinstance(lr, Real):
            raise _err(TypeError, "lrs", "positive numbers", lr)
        if not (math.isfinite(lr) and lr > 0):
            raise _err(ValueError, "lrs", "positive numbers", lr)
    _check_real(cfg, "lam", 0.0, low_open=True)
    _check_real(cfg, "threshold", 0.0, low_open=True)
    _check_real(cfg, "ramp", 0.0, 1.0, low_open=True)
    _check_real(cfg, "controller_margin", 0.0, 1.0)
    exps = cfg.structured_lam_exponents
    if isinstance(exps, str) or not isinstance(exps, Sequence) or not exps:
        raise _err(TypeError, "structured_lam_exponents", "a non-empty tuple of floats in [0, 1]", exps)
    if any(isinstance(e, bool) or not isinstance(e, Real) or not 0 <= e <= 1 for e in exps):
        raise _err(ValueError, "structured_lam_exponents", "a non-empty tuple of floats in [0, 1]", tuple(exps))
    _check_real(cfg, "gmp_start", 0.0, 1.0)
    if cfg.gmp_start >= cfg.ramp:
        raise ValueError(f"The 'gmp_start' parameter of CompressionConfig must be smaller than 'ramp'={cfg.ramp}. Got {cfg.gmp_start!r} instead.")
    _check_real(cfg, "str_s_init", -math.inf)
    _check_real(cfg, "str_lam", 0.0, low_open=True)
    _check_real(cfg, "l1_lam", 0.0, optional=True)
    for name in ("dense", "structured"):
        if not isinstance(getattr(cfg, name), bool):
            raise _err(TypeError, name, "a bool", getattr(cfg, name))
    if not cfg.dense and "magnitude" in cfg.methods and cfg.models:
        raise ValueError("The 'dense' parameter of CompressionConfig must be True when 'methods' has 'magnitude': one-shot "
                         "magnitude pruning starts from the dense model. Drop 'magnitude' or keep the dense run.")
    if cfg.structured_model not in STRUCTURED_MODELS:
        raise _err(ValueError, "structured_model", f"one of {STRUCTURED_MODELS}", cfg.structured_model)
    sparsity = cfg.structured_sparsity
    if isinstance(sparsity, Real) and not isinstance(sparsity, bool):
        sparsity = (sparsity,)
    if isinstance(sparsity, str) or not isinstance(sparsity, Sequence) or not sparsity:
        raise _err(TypeError, "structured_sparsity", "a float or a non-empty tuple of floats in (0, 1)", cfg.structured_sparsity)
    if any(isinstance(s, bool) or not isinstance(s, Real) or not 0 < s < 1 for s in sparsity):
        raise _err(ValueError, "structured_sparsity", "a float or a non-empty tuple of floats in (0, 1)", cfg.structured_sparsity)
    if isinstance(cfg.seeds, str) or not isinstance(cfg.seeds, Sequence) or not cfg.seeds:
        raise _err(TypeError, "seeds", "a non-empty tuple of ints >= 0", cfg.seeds)
    if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise _err(ValueError, "seeds", "distinct ints >= 0", tuple(cfg.seeds))
    if not isinstance(cfg.device, str):
        raise _err(TypeError, "device", "a device string such as 'cpu' or 'cuda'", cfg.device)
    try:
        torch.device(cfg.device)
    except (RuntimeError, ValueError) as exc:
        raise _err(ValueError, "device", "a device string such as 'cpu' or 'cuda'", cfg.device) from exc
    if "resnet18" in cfg.models and cfg.cifar10 is None:
        raise ValueError("The 'resnet18' model runs on CIFAR-10: pass --cifar10 PATH (the folder of the python batches, "
                         "https://www.cs.toronto.edu/~kriz/cifar.html); a GPU (--device cuda) is recommended.")  # fmt: skip
    return _replace(cfg, ratios=ratios, structured_sparsity=tuple(float(s) for s in sparsity))


def _replace(cfg: CompressionConfig, **values) -> CompressionConfig:
    import dataclasses

    return dataclasses.replace(cfg, **values)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    """Train and test tensors of one dataset (images, channels first) and a small example batch."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def example(self) -> torch.Tensor:
        return self.X_test[:8]


def load_data(dataset: str, *, train_size: int | None = None, seed: int = 0, cifar10: str | None = None) -> Data:
    """MNIST (1 x 28 x 28) or CIFAR-10 (3 x 32 x 32) as float32 tensors in [0, 1].

    ``train_size`` draws a random subset of the training set from ``seed``; the test
    set is always the full one (10,000 images).
    """
    if dataset == "mnist":
        from spred.datasets import load_mnist

        X, y = load_mnist(train=True)
        Xt, yt = load_mnist(train=False)
    elif dataset == "cifar10":
        from spred.datasets import load_cifar10

        X, y = load_cifar10(cifar10, train=True)
        Xt, yt = load_cifar10(cifar10, train=False)
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; expected 'mnist' or 'cifar10'.")
    X, Xt = torch.as_tensor(X), torch.as_tensor(Xt)
    if X.dim() == 3:
        X, Xt = X.unsqueeze(1), Xt.unsqueeze(1)
    y, yt = torch.as_tensor(y), torch.as_tensor(yt)
    if train_size is not None and train_size < len(X):
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:train_size]
        X, y = X[idx], y[idx]
    return Data(X, y, Xt, yt)


class RandomCropFlip(nn.Module):
    """Standard CIFAR augmentation on the batch (training mode only): 4-pixel padded random crop, horizontal flip.

    An identity in eval mode; parameter-free, so it changes no parameter count.
    """

    def __init__(self, padding: int = 4):
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, _, h, w = x.shape
        p = self.padding
        padded = nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
        flip = torch.rand(n, device=x.device) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)


def build_model(name: str, seed: int) -> nn.Module:
    """A reference network initialised from ``seed`` (ResNet-18 gets the CIFAR augmentation in front)."""
    from spred.models import build

    model = build(name, seed=seed, **MODEL_KWARGS.get(name, {}))
    if DATASET[name] == "cifar10":
        model = nn.Sequential(RandomCropFlip(), model)
    return model


# --------------------------------------------------------------------------- one run


@dataclass
class _Context:
    """Everything the methods of one (model, seed) share."""

    cfg: CompressionConfig
    model_name: str
    seed: int
    data: Data
    total: int
    chain: bp.Chain | None
    progress: bool
    dense: nn.Module | None = None  # dense model after `epochs` epochs
    dense_seconds: float = 0.0
    spred_lam: dict = field(default_factory=dict)  # ratio -> final lam of spred

    def lr(self, method: str) -> float:
        return float(self.cfg.lrs[method])

    def fit(self, model, epochs, **kwargs):
        from spred.train import fit

        kwargs.setdefault("optimizer", self.cfg.optimizer)
        return fit(model, (self.data.X_train, self.data.y_train), epochs=epochs, batch_size=self.cfg.batch_size,
                   seed=self.seed, device=self.cfg.device, progress=self.progress, **kwargs)  # fmt: skip

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.X_train) / self.cfg.batch_size)

    def test_error(self, model) -> float:
        from spred.train import evaluate

        return 1.0 - evaluate(model, (self.data.X_test, self.data.y_test), device=self.cfg.device)["acc"]


def _weight_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs() for n, m in bp.prunable_weights(model).items()}


def _n_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in bp.prunable_weights(model).values())


def _target_sparsity(model: nn.Module, budget: int, margin: float = 0.0) -> float:
    """The controllers' target: the fraction of zero weights if the whole budget (plus ``margin``) went to weights.

    The controllers of spred and STR tend to overshoot a little, and zeros made by
    overshooting do not come back; aiming ``margin`` above the budget and trimming
    the smallest weights afterwards (:func:`_trim`) lands on the budget instead.
    """
    n = _n_weights(model)
    return min(max(1.0 - budget * (1.0 + margin) / n, 1e-3), 1.0 - 1e-6)


def _finish(ctx: _Context, model: nn.Module, method: str, ratio: float, *, train_epochs: int, finetune_epochs: int,
            seconds: float, prune_steps: int, lam: float | None = None, lr: float | None = None) -> dict:  # fmt: skip
    """Remove dead units, fine-tune with the zeros frozen (cosine schedule from ``lr``), and measure: one CSV row."""
    cfg = ctx.cfg
    dead = bp.remove_dead_units(model, ctx.chain, ctx.data.example.to(cfg.device))
    before = ctx.test_error(model)
    if finetune_epochs:
        result = ctx.fit(model, finetune_epochs, lr=lr or cfg.finetune_lr, mask=bp.keep_masks(model), scheduler="cosine")
        seconds += result.wall_time_s
    from spred.compress import count_parameters

    nonzero = count_parameters(model, nonzero=True)
    row = {
        "model": ctx.model_name, "method": method, "seed": ctx.seed, "target_ratio": ratio,
        "compression_ratio": ctx.total / nonzero if nonzero else math.inf, "total": ctx.total, "nonzero": nonzero,
        "nonzero_weights": sum(int((m.weight != 0).sum()) for m in bp.prunable_weights(model).values()),
        "test_error": ctx.test_error(model), "test_error_before_finetune": before,
        "train_epochs": train_epochs, "finetune_epochs": finetune_epochs, "epochs": train_epochs + finetune_epochs,
        "prune_steps": prune_steps, "wall_s": seconds, "lam": math.nan if lam is None else lam,
        "dead_units": sum(dead.values()), "train_size": len(ctx.data.X_train),
    }  # fmt: skip
    logger.info("%s %s x%g seed %d: ratio %.1f, error %.2f%% (before fine-tuning %.2f%%), %.0f s",
                ctx.model_name, method, ratio, ctx.seed, row["compression_ratio"], 100 * row["test_error"], 100 * before, seconds)
    return row


def _trim(ctx: _Context, model: nn.Module, budget: int) -> int:
    """Keep the largest weights within the budget (a no-op when already within it); returns 1 if it pruned."""
    masks = bp.budget_masks(model, _weight_scores(model), budget, ctx.chain)
    pruned = any(bool((~k & (m.weight != 0)).any()) for k, m in zip(masks.values(), bp.prunable_weights(model).values()))
    bp.apply_masks(model, masks)
    return int(pruned)


def _run_dense(ctx: _Context) -> dict:
    cfg = ctx.cfg
    model = build_model(ctx.model_name, ctx.seed)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("magnitude"))
    ctx.dense, ctx.dense_seconds = copy.deepcopy(model), result.wall_time_s
    seconds = result.wall_time_s
    if cfg.finetune_epochs:
        seconds += ctx.fit(model, cfg.finetune_epochs, lr=cfg.finetune_lr, scheduler="cosine").wall_time_s
    from spred.compress import count_parameters

    nonzero = count_parameters(model, nonzero=True)
    err = ctx.test_error(model)
    return {
        "model": ctx.model_name, "method": "dense", "seed": ctx.seed, "target_ratio": 1.0, "compression_ratio": ctx.total / nonzero,
        "total": ctx.total, "nonzero": nonzero, "nonzero_weights": sum(int((m.weight != 0).sum()) for m in bp.prunable_weights(model).values()),
        "test_error": err, "test_error_before_finetune": err, "train_epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
        "epochs": cfg.epochs + cfg.finetune_epochs, "prune_steps": 0, "wall_s": seconds, "lam": math.nan, "dead_units": 0,
        "train_size": len(ctx.data.X_train),
    }  # fmt: skip


def _run_spred(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import TargetSparsity

    cfg = ctx.cfg
    model = spred.sparsify(build_model(ctx.model_name, ctx.seed), cfg.lam)
    target = TargetSparsity(_target_sparsity(model, budget, cfg.controller_margin), ramp_epochs=cfg.ramp * cfg.epochs)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("spred"), target_sparsity=target, threshold=cfg.threshold)
    lams = list(spred.get_lam(model).values())
    lam = float(np.mean(lams))
    ctx.spred_lam[ratio] = lam
    model = spred.collapse(model, threshold=cfg.threshold)
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "spred", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


def _run_magnitude(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    model = copy.deepcopy(ctx.dense)
    t = time.perf_counter()
    bp.magnitude_prune(model, budget, ctx.chain)
    seconds = ctx.dense_seconds + time.perf_counter() - t
    return _finish(ctx, model, "magnitude", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=seconds, prune_steps=1)  # fmt: skip


def _run_gmp(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import build_optimizer

    cfg = ctx.cfg
    model = build_model(ctx.model_name, ctx.seed).to(cfg.device)
    steps = cfg.epochs * ctx.steps_per_epoch
    gmp = bp.GradualMagnitudePruning(model, budget, start=int(cfg.gmp_start * steps), end=max(int(cfg.ramp * steps), 1),
                                     every=cfg.gmp_every, chain=ctx.chain)  # fmt: skip
    optimizer, _ = build_optimizer(model, cfg.optimizer, lr=ctx.lr("gmp"))
    optimizer.register_step_post_hook(gmp)
    result = ctx.fit(model, cfg.epochs, optimizer=optimizer)
    gmp.remove()
    return _finish(ctx, model, "gmp", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=gmp.n_prunes)  # fmt: skip


def _run_synflow(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    model = build_model(ctx.model_name, ctx.seed).to(cfg.device)
    t = time.perf_counter()
    masks = bp.synflow_masks(model, ctx.data.example.to(cfg.device), budget, ctx.chain, rounds=cfg.synflow_rounds)
    bp.apply_masks(model, masks)
    seconds = time.perf_counter() - t
    return _finish(ctx, model, "synflow", ratio, train_epochs=0, finetune_epochs=cfg.epochs + cfg.finetune_epochs,
                   seconds=seconds, prune_steps=cfg.synflow_rounds, lr=ctx.lr("synflow"))  # fmt: skip


def _run_str(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import OPTIMIZERS

    cfg = ctx.cfg
    model = build_model(ctx.model_name, ctx.seed).to(cfg.device)
    thresholds = bp.str_sparsify(model, cfg.str_s_init)
    weights = {id(m.parametrizations.weight.original) for m in bp.prunable_weights(model).values()}
    s_ids = {id(p) for p in thresholds}
    params = list(model.parameters())
    groups = [
        {"params": list(thresholds), "weight_decay": cfg.str_lam, "str": True},
        {"params": [p for p in params if id(p) in weights], "weight_decay": cfg.str_lam, "str_weights": True},
        {"params": [p for p in params if id(p) not in weights and id(p) not in s_ids], "weight_decay": 0.0},
    ]
    kwargs = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
    optimizer = OPTIMIZERS[cfg.optimizer](groups, lr=ctx.lr("str"), **kwargs)
    controller = bp.STRController(model, _target_sparsity(model, budget, cfg.controller_margin), ramp_steps=int(cfg.ramp * cfg.epochs * ctx.steps_per_epoch))
    optimizer.register_step_post_hook(controller)
    result = ctx.fit(model, cfg.epochs, optimizer=optimizer)
    lam = optimizer.param_groups[0]["weight_decay"]
    bp.str_collapse(model)
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "str", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


def _run_l1(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    lam = cfg.l1_lam if cfg.l1_lam is not None else ctx.spred_lam.get(ratio, cfg.lam)
    model = build_model(ctx.model_name, ctx.seed).to(cfg.device)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("l1"), loss_fn=bp.l1_loss(model, lam))
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "l1", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


_RUNNERS = {"spred": _run_spred, "magnitude": _run_magnitude, "gmp": _run_gmp, "synflow": _run_synflow, "str": _run_str, "l1": _run_l1}


def run_unstructured(cfg: CompressionConfig, model_name: str, seed: int, data: Data, *, progress: bool = False) -> list[dict]:
    """The dense reference and every method at every ratio of ``model_name`` for one seed: CSV rows.

    The dense model trained for ``epochs`` is shared by the magnitude baseline at
    all ratios (its wall time counts the dense training); spred runs first so that
    the L1 baseline can use its final lam.
    """
    from spred.compress import count_parameters

    with _common.torch_seed(seed):
        probe = build_model(model_name, seed)
        chain = bp.find_chain(probe, data.example)
    ctx = _Context(cfg, model_name, seed, data, count_parameters(probe), chain, progress)
    rows = [_run_dense(ctx)] if cfg.dense else []
    order = [m for m in METHODS if m in cfg.methods]
    for ratio in cfg.ratios[model_name]:
        budget = bp.max_nonzero(ctx.total, ratio)
        for method in order:
            with _common.torch_seed(seed):
                rows.append(_RUNNERS[method](ctx, ratio, budget))
    return rows


# --------------------------------------------------------------------------- structured


def grouped_layers(model: nn.Module) -> list[str]:
    """Names of the layers the structured runs group by output channel: every prunable layer but the last."""
    return [n[: -len(".weight")] for n in bp.prunable_weights(model)][:-1]


def _widths(model: nn.Module, names: Sequence[str]) -> list[int]:
    modules = dict(model.named_modules())
    return [modules[n].weight.shape[0] for n in names]


def _nonzero_widths(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Channels (output rows) of each layer with a nonzero weight."""
    modules = dict(model.named_modules())
    return [int(modules[n].weight.detach().flatten(1).ne(0).any(1).sum()) for n in names]


def _layer_lams(model: nn.Module, layers: Sequence[str], lam: float, exponent: float, example: torch.Tensor) -> dict[str, float]:
    """``{layer.weight: lam * positions**exponent}``, positions = output entries per sample and channel."""
    modules = dict(model.named_modules())
    positions = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: positions.__setitem__(n, o[0].numel() // o.shape[1])) for n in layers]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train()
        for h in handles:
            h.remove()
    return {f"{n}.weight": lam * positions[n] ** exponent for n in layers}


def _structured_row(ctx: _Context, method: str, sparsity: float, collapsed: nn.Module, err_collapsed: float, seconds: float, epochs: int, names) -> dict:
    from spred.compress import compare_latency, count_flops, count_parameters, prune_channels

    cfg, x = ctx.cfg, ctx.data.X_test
    pruned, plan = prune_channels(collapsed, ctx.data.example.to(cfg.device), round_to=cfg.round_to)
    with torch.no_grad():
        collapsed.eval(), pruned.eval()
        check = x[:1000].to(cfg.device)
        reference = collapsed(check)
        out = pruned(check)
        diff = float((out - reference).abs().max())
        # the same comparison in float64: what is left of the float32 difference is summation order;
        # and each float32 module against the collapsed function in float64 (float32's own rounding)
        exact = copy.deepcopy(collapsed).double()(check.double())
        diff64 = float((copy.deepcopy(pruned).double()(check.double()) - exact).abs().max())
        err32 = {k: float((v.double() - exact).abs().max()) for k, v in (("collapsed", reference), ("pruned", out))}
    one = x[:1].to(cfg.device)
    flops, flops_pruned = count_flops(collapsed, one), count_flops(pruned, one)
    pair, batch = {"collapsed": collapsed, "pruned": pruned}, x[:256].to(cfg.device)
    lat = compare_latency(pair, batch, batch_sizes=(1, 256), repeats=cfg.latency_repeats)
    # the same in channels-last (NHWC) layout, often the faster way to run a CNN on CPU
    cl = compare_latency(pair, batch, batch_sizes=(1, 256), repeats=cfg.latency_repeats, channels_last=True)
    params_pruned = count_parameters(pruned, nonzero=True)
    widths_before, widths_after = _widths(collapsed, names), _widths(pruned, names)
    return {
        "model": ctx.model_name, "method": method, "seed": ctx.seed, "target_sparsity": sparsity,
        "round_to": cfg.round_to, "widths_before": "-".join(map(str, widths_before)),
        "widths_nonzero": "-".join(map(str, _nonzero_widths(collapsed, names))), "widths_after": "-".join(map(str, widths_after)),
        "params": ctx.total, "params_pruned": params_pruned, "compression_ratio": ctx.total / params_pruned,
        "flops": flops, "flops_pruned": flops_pruned, "flop_ratio": flops / flops_pruned,
        "latency_b1_ms": 1e3 * lat["collapsed"][1], "latency_b1_pruned_ms": 1e3 * lat["pruned"][1],
        "speedup_b1": lat["collapsed"][1] / lat["pruned"][1],
        "latency_b256_ms": 1e3 * lat["collapsed"][256], "latency_b256_pruned_ms": 1e3 * lat["pruned"][256],
        "speedup_b256": lat["collapsed"][256] / lat["pruned"][256],
        **{f"latency_b{b}_cl_ms": 1e3 * cl["collapsed"][b] for b in (1, 256)},
        **{f"latency_b{b}_cl_pruned_ms": 1e3 * cl["pruned"][b] for b in (1, 256)},
        **{f"speedup_b{b}_cl": cl["collapsed"][b] / cl["pruned"][b] for b in (1, 256)}, "max_abs_diff": diff,
        "max_rel_diff": diff / float(reference.abs().max()), "max_abs_diff_fp64": diff64,
        "fp32_error_collapsed": err32["collapsed"], "fp32_error_pruned": err32["pruned"],
        "test_error_collapsed": err_collapsed, "test_error": ctx.test_error(pruned), "epochs": epochs, "wall_s": seconds,
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def _spred_structured(ctx: _Context, hidden: Sequence[str], sparsity: float, exponent: float) -> dict:
    from spred.train import TargetSparsity

    cfg, name = ctx.cfg, ctx.model_name
    model = build_model(name, ctx.seed)
    spred.sparsify(model, _layer_lams(model, hidden, cfg.lam, exponent, ctx.data.example), groups="out")
    target = TargetSparsity(sparsity, ramp_epochs=cfg.ramp * cfg.epochs)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("spred"), target_sparsity=target, threshold=cfg.threshold)
    collapsed = spred.collapse(model, threshold=cfg.threshold)
    with torch.no_grad():  # a removed channel takes its bias along (spred penalises weights only)
        for n in hidden:
            m = dict(collapsed.named_modules())[n]
            if m.bias is not None:
                m.bias[m.weight.flatten(1).eq(0).all(1)] = 0.0
    seconds = result.wall_time_s
    if cfg.finetune_epochs:
        seconds += ctx.fit(collapsed, cfg.finetune_epochs, lr=cfg.finetune_lr, mask=bp.keep_masks(collapsed), scheduler="cosine").wall_time_s
    row = _structured_row(ctx, "spred_group", sparsity, collapsed, ctx.test_error(collapsed), seconds, cfg.epochs + cfg.finetune_epochs, hidden)
    return {**row, "lam_exponent": exponent}


def _filter_norm(ctx: _Context, dense: nn.Module, dense_seconds: float, hidden: Sequence[str], spred_row: Mapping) -> dict:
    cfg = ctx.cfg
    model = copy.deepcopy(dense)
    modules = dict(model.named_modules())
    widths = [int(w) for w in spred_row["widths_nonzero"].split("-")]
    masks = {}
    with torch.no_grad():
        for n, width in zip(hidden, widths):
            m = modules[n]
            keep = torch.zeros(m.weight.shape[0], dtype=torch.bool, device=m.weight.device)
            keep[m.weight.flatten(1).norm(dim=1).argsort(descending=True)[:width]] = True
            m.weight[~keep] = 0.0
            m.bias[~keep] = 0.0
            masks[f"{n}.weight"] = keep.view((-1,) + (1,) * (m.weight.dim() - 1)).expand_as(m.weight).clone()
            masks[f"{n}.bias"] = keep.clone()
    seconds = dense_seconds
    if cfg.finetune_epochs:
        seconds += ctx.fit(model, cfg.finetune_epochs, lr=cfg.finetune_lr, mask=masks, scheduler="cosine").wall_time_s
    row = _structured_row(ctx, "filter_norm", spred_row["target_sparsity"], model, ctx.test_error(model), seconds, cfg.epochs + cfg.finetune_epochs, hidden)
    return {**row, "lam_exponent": spred_row["lam_exponent"]}


def run_structured(cfg: CompressionConfig, seed: int, data: Data, *, progress: bool = False) -> list[dict]:
    """Channel sparsity: spred with ``groups="out"`` and a filter-norm baseline at the same widths.

    spred, once per ``structured_sparsity`` and ``structured_lam_exponents``: sparsify
    every conv filter and hidden neuron (not the output layer) with one group each (lam
    weighted by ``positions**exponent``), train to the target sparsity with the controller,
    collapse, zero the biases of the zero channels (a removed channel takes its bias
    along), fine-tune with those zeros frozen, then
    :func:`spred.compress.prune_channels`. The baseline trains the dense network for
    the same epochs (once, shared), zeroes the filters / neurons of smallest L2 norm
    so that every layer keeps as many as spred's, and fine-tunes with them frozen.
    Every row reports the pruned module against the collapsed one (outputs,
    parameters, FLOPs, latency).
    """
    from spred.compress import count_parameters

    cfg = check_config(cfg)
    name = cfg.structured_model
    epochs = cfg.structured_epochs or cfg.epochs
    ft = cfg.finetune_epochs if cfg.structured_finetune_epochs is None else cfg.structured_finetune_epochs
    sub = _replace(cfg, epochs=epochs, finetune_epochs=ft)
    probe = build_model(name, seed)
    ctx = _Context(sub, name, seed, data, count_parameters(probe), None, progress)
    hidden = grouped_layers(probe)
    rows = []
    for sparsity in cfg.structured_sparsity:
        for exponent in cfg.structured_lam_exponents:
            with _common.torch_seed(seed):
                rows.append(_spred_structured(ctx, hidden, sparsity, exponent))
    with _common.torch_seed(seed):
        dense = build_model(name, seed)
        dense_seconds = ctx.fit(dense, epochs, lr=ctx.lr("magnitude")).wall_time_s
    for row in list(rows):
        with _common.torch_seed(seed):
            rows.append(_filter_norm(ctx, dense, dense_seconds, hidden, row))
    return rows


# --------------------------------------------------------------------------- summaries, table, plot


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and standard deviation over seeds per (model, target ratio, method)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["target_ratio"], r["method"])].append(r)
    out = []
    for (model, target, method), rs in groups.items():
        def stat(key, fn):
            vals = [float(r[key]) for r in rs]
            return fn(vals) if len(vals) > 1 or fn is statistics.mean else 0.0

        out.append({
            "model": model, "target_ratio": target, "method": method, "n_seeds": len(rs),
            "compression_ratio": stat("compression_ratio", statistics.mean),
            "compression_ratio_min": min(float(r["compression_ratio"]) for r in rs),
            "test_error_mean": stat("test_error", statistics.mean), "test_error_std": stat("test_error", statistics.stdev),
            "test_error_before_finetune": stat("test_error_before_finetune", statistics.mean),
            "epochs": rs[0]["epochs"], "prune_steps": stat("prune_steps", statistics.mean), "wall_s": stat("wall_s", statistics.mean),
        })  # fmt: skip
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def summary_table(summary: Sequence[Mapping]) -> str:
    """Markdown: one line per model, target ratio and method."""
    order = {m: i for i, m in enumerate(("dense",) + METHODS)}
    rows = sorted(summary, key=lambda r: (r["model"], r["target_ratio"], order.get(r["method"], 99)))
    return _common.markdown_table(rows, [
        ("model", "model"), ("target", lambda r: f"{r['target_ratio']:g}x"), ("method", lambda r: LABELS[r["method"]]),
        ("ratio (min)", lambda r: f"{r['compression_ratio']:.1f} ({r['compression_ratio_min']:.1f})"),
        ("test error %", lambda r: f"{_pct(r['test_error_mean'])} ± {_pct(r['test_error_std'])}"),
        ("before FT %", lambda r: _pct(r["test_error_before_finetune"])),
        ("epochs", "epochs"), ("prune steps", lambda r: f"{r['prune_steps']:g}"), ("wall s", lambda r: f"{r['wall_s']:.0f}"),
        ("seeds", "n_seeds"),
    ])  # fmt: skip


def _opt(r: Mapping, key: str, unit: str, divisor: float = 1.0, fmt: str = ".2f") -> str:
    """``r[key] / divisor`` (two decimals by default), or "-" for a CSV written before ``key`` existed."""
    return "-" if r.get(key) is None else f"{r[key] / divisor:{fmt}}{unit}"


def _widths_cell(r: Mapping) -> str:
    before, nonzero, after = r["widths_before"], r.get("widths_nonzero") or r["widths_after"], r["widths_after"]
    if nonzero == after:
        return f"{before} -> {after}"
    return f"{before} -> {nonzero} nonzero, {after} kept (multiples of {r.get('round_to')})"


def structured_table(rows: Sequence[Mapping]) -> str:
    """Markdown: one line per structured run."""
    return _common.markdown_table(rows, [
        ("method", lambda r: LABELS[r["method"]]), ("target", lambda r: f"{100 * float(r['target_sparsity']):g}%"), ("lam exponent", "lam_exponent"), ("seed", "seed"), ("widths", _widths_cell),
        ("params", lambda r: f"{r['params']} -> {r['params_pruned']} ({r['compression_ratio']:.1f}x)"),
        ("FLOPs", lambda r: f"{r['flop_ratio']:.2f}x fewer"),
        ("speed-up b1 (NCHW / NHWC)", lambda r: f"{r['speedup_b1']:.2f}x / {_opt(r, 'speedup_b1_cl', 'x')}"),
        ("speed-up b256 (NCHW / NHWC)", lambda r: f"{r['speedup_b256']:.2f}x / {_opt(r, 'speedup_b256_cl', 'x')}"),
        ("b256 / FLOP ratio (NCHW / NHWC)", lambda r: f"{r['speedup_b256'] / r['flop_ratio']:.2f} / {_opt(r, 'speedup_b256_cl', '', r['flop_ratio'])}"),
        ("max abs diff (fp32 / fp64)", lambda r: f"{r['max_abs_diff']:.1e} / {r['max_abs_diff_fp64']:.0e}"),
        ("fp32 error, collapsed / pruned", lambda r: f"{_opt(r, 'fp32_error_collapsed', '', fmt='.1e')} / {_opt(r, 'fp32_error_pruned', '', fmt='.1e')}"), ("test error %", lambda r: _pct(r["test_error"])),
        ("epochs", "epochs"), ("wall s", lambda r: f"{r['wall_s']:.0f}"),
    ])  # fmt: skip


def comparisons(summary: Sequence[Mapping]) -> list[str]:
    """One line per (model, target): spred against magnitude pruning, and against the published figure."""
    look = {(r["model"], r["target_ratio"], r["method"]): r for r in summary}
    lines = []
    for (model, target, method), r in sorted(look.items()):
        if method != "spred":
            continue
        line = f"{model} at {target:g}x: spred {_pct(r['test_error_mean'])}% at {r['compression_ratio']:.1f}x"
        mag = look.get((model, target, "magnitude"))
        if mag is not None:
            delta = 100 * (mag["test_error_mean"] - r["test_error_mean"])
            line += f"; magnitude pruning {_pct(mag['test_error_mean'])}% at {mag['compression_ratio']:.1f}x ({'spred ahead' if delta > 0 else 'spred behind'} by {abs(delta):.2f} points)"
        for ref, (ratio, err) in PUBLISHED.get(model, {}).items():
            if math.isclose(ratio, target):
                line += f"; {ref}: {err:.2f}% at {ratio:g}x"
        lines.append(line)
    return lines


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _plot_structured(ax_speed, ax_error, structured: Sequence[Mapping]) -> None:
    """Speed-up against FLOP reduction (with the 0.7x target line) and test error against FLOP reduction."""
    from matplotlib.ticker import FuncFormatter

    groups = defaultdict(list)
    for r in structured:
        groups[(r["method"], float(r["lam_exponent"]), float(r["target_sparsity"]))].append(r)

    def mean(rs, key, scale=1.0):
        return float(np.mean([scale * float(r[key]) for r in rs]))

    exponents = sorted({k[1] for k in groups})
    markers = dict(zip(exponents, "osD^v"))
    spred_runs = sorted(((k, rs) for k, rs in groups.items() if k[0] == "spred_group"), key=lambda kv: kv[0])
    top = max(mean(rs, "flop_ratio") for _, rs in spred_runs)
    line = np.geomspace(1.0, top * 1.5, 50)
    ax_speed.plot(line, line, color="grey", lw=1, label="speed-up = FLOP reduction")
    ax_speed.plot(line, 0.7 * line, color="grey", lw=1, ls="--", label="target: 0.7 x FLOP reduction")
    if "speedup_b256_cl" in structured[0]:
        series = [("b256_cl", "tab:red", "batch 256, NHWC"), ("b256", "tab:orange", "batch 256, NCHW"), ("b1_cl", "tab:blue", "batch 1, NHWC")]
    else:  # a CSV written before the channels-last columns: NCHW only
        series = [("b256", "tab:orange", "batch 256, NCHW"), ("b1", "tab:blue", "batch 1, NCHW")]
    for key, colour, text in series:
        for (_, e, sp), rs in spred_runs:
            x, y = mean(rs, "flop_ratio"), mean(rs, f"speedup_{key}")
            ax_speed.plot([x], [y], marker=markers[e], color=colour, ls="none",
                          label=f"{text}, exp. {e:g}" if sp == spred_runs[0][0][2] else None)  # fmt: skip
            if key == series[0][0]:
                ax_speed.annotate(f"{100 * sp:g}%", (x, y), textcoords="offset points", xytext=(4, -10), fontsize="x-small")
    for ax in (ax_speed, ax_error):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(_null_formatter())
        ax.set_xlabel("FLOP reduction (collapsed / pruned)")
    ax_speed.set_yscale("log")
    ax_speed.set_ylabel("measured speed-up (x, median)")
    rounding = structured[0].get("round_to")
    rounded = f" (round_to={rounding})" if rounding not in (None, "", 1, "1") else ""
    ax_speed.set_title(f"structured {structured[0]['model']}: latency after prune_channels{rounded}", fontsize="medium")
    ax_speed.legend(fontsize="x-small")
    for method, colour in (("spred_group", "tab:red"), ("filter_norm", "tab:grey")):
        for e in exponents:
            pts = sorted((mean(rs, "flop_ratio"), mean(rs, "test_error", 100), float(np.std([100 * float(r["test_error"]) for r in rs])))
                         for k, rs in groups.items() if k[0] == method and k[1] == e)  # fmt: skip
            if pts:
                xs, ys, es = zip(*pts)
                ax_error.errorbar(xs, ys, yerr=es, marker=markers[e], capsize=3, color=colour, label=f"{LABELS[method]}, exp. {e:g}")
    ax_error.set_ylabel("test error (%, mean ± std over seeds)")
    ax_error.set_title("same widths: spred groups vs filter norm", fontsize="medium")
    ax_error.legend(fontsize="x-small")


def plot(rows: Sequence[Mapping], structured: Sequence[Mapping], path: str | Path) -> Path:
    """Test error against compression ratio per method (one panel per model), and the structured latency and error."""
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    n_panels = len(models) + (2 if structured else 0)
    fig = Figure(figsize=(5.2 * n_panels, 4.2), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    colours = dict(zip(METHODS, ("tab:red", "tab:blue", "tab:cyan", "tab:green", "tab:purple", "tab:orange")))
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        for method in METHODS:
            pts = defaultdict(list)
            for r in mine:
                if r["method"] == method:
                    pts[r["target_ratio"]].append((float(r["compression_ratio"]), 100 * float(r["test_error"])))
            if not pts:
                continue
            xs = [np.mean([p[0] for p in v]) for v in pts.values()]
            ys = [np.mean([p[1] for p in v]) for v in pts.values()]
            es = [np.std([p[1] for p in v]) for v in pts.values()]
            order = np.argsort(xs)
            ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(es)[order], marker="o", capsize=3,
                        color=colours[method], label=LABELS[method], lw=2 if method == "spred" else 1)  # fmt: skip
        dense = [100 * float(r["test_error"]) for r in mine if r["method"] == "dense"]
        if dense:
            ax.axhline(np.mean(dense), color="grey", ls="--", lw=1, label="dense")
        for ref, (ratio, err) in PUBLISHED.get(model, {}).items():
            ax.plot([ratio], [err], marker="*", ms=12, ls="none", color="black" if ref == "Sparse VD" else "grey", label=f"{ref} (published)")
        ax.set_xscale("log")
        ticks = sorted({float(r["target_ratio"]) for r in mine if r["method"] != "dense"} | {r for r, _ in PUBLISHED.get(model, {}).values()})
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(_null_formatter())
        ax.set_xlabel("compression ratio (all weights and biases / nonzero)")
        ax.set_ylabel("test error (%)")
        size = mine[0]["train_size"] if mine else ""
        ax.set_title(f"{model} ({size} training images, mean ± std over seeds)", fontsize="medium")
        ax.legend(fontsize="x-small", ncols=2)
    if structured:
        _plot_structured(axes[-2], axes[-1], structured)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------- the experiment


def _warm_up(device: str) -> None:
    """One optimizer step on a tiny model, so that one-time imports (torch's optimizers load
    ``torch._dynamo`` on their first step, seconds on a busy CPU) are not charged to the first method."""
    from spred.train import fit

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    for opt in ("adam", "sgd"):
        fit(model, (torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)), epochs=1, optimizer=opt, device=device, progress=False)


@dataclass
class CompressionResults:
    """What :func:`run_experiment` returns: the CSV rows, the per-seed summary, the files written and the wall time."""

    rows: list[dict]
    structured: list[dict]
    summary: list[dict]
    files: dict[str, Path]
    seconds: float
    threads: int = 1


def run_experiment(cfg: CompressionConfig, out: str | Path | None = None, *, plot_figure: bool = True, progress: bool | None = None) -> CompressionResults:
    """Run every (model, seed) and the structured experiment; write the outputs (see the module docstring)."""
    from tqdm.auto import tqdm

    cfg = check_config(cfg)
    out_dir = _common.prepare_out_dir(out, NAME)
    start = time.perf_counter()
    rows: list[dict] = []
    structured: list[dict] = []
    cache: dict[tuple[str, int], Data] = {}

    def data_for(dataset: str, seed: int) -> Data:
        key = (dataset, seed if cfg.train_size else 0)
        if key not in cache:
            cache.clear()
            cache[key] = load_data(dataset, train_size=cfg.train_size, seed=seed, cifar10=cfg.cifar10)
        return cache[key]

    _warm_up(cfg.device)
    jobs = [(m, s) for m in cfg.models for s in cfg.seeds] + ([("structured", s) for s in cfg.seeds] if cfg.structured else [])
    bar = tqdm(total=len(jobs), desc=NAME, unit="run", disable=progress is False)
    for model, seed in jobs:
        bar.set_postfix(model=model, seed=seed, refresh=False)
        if model == "structured":
            structured += run_structured(cfg, seed, data_for("mnist", seed), progress=bool(progress))
        else:
            rows += run_unstructured(cfg, model, seed, data_for(DATASET[model], seed), progress=bool(progress))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    summary = summarise(rows)
    files = {}
    if rows:
        files["runs"] = _common.write_csv(rows, out_dir / "compression.csv", CSV_COLUMNS)
        files["summary"] = _common.write_csv(summary, out_dir / "compression_summary.csv")
    if structured:
        files["structured"] = _common.write_csv(structured, out_dir / "compression_structured.csv", STRUCTURED_COLUMNS)
    if plot_figure and (rows or structured):
        files["figure"] = plot(rows, structured, out_dir / "compression.png")
    results = CompressionResults(rows, structured, summary, files, seconds, torch.get_num_threads())
    files["summary_md"] = out_dir / "summary.md"
    files["summary_md"].write_text(report(results) + "\n")
    files["config"] = _common.write_config(out_dir / "config.json", cfg, experiment=NAME, extra={"wall_seconds": seconds, "threads": torch.get_num_threads()})
    return results


def report(results: CompressionResults) -> str:
    """The markdown printed at the end: the unstructured table, the comparisons, the structured table."""
    parts = []
    if results.rows:
        parts += ["Unstructured compression (test error on the 10,000 test images; mean ± std over seeds):", "",
                  summary_table(results.summary), ""]  # fmt: skip
        parts += [f"- {line}" for line in comparisons(results.summary)] + [""]
    if results.structured:
        parts += ["Structured (channel) compression; latency of the pruned module against the collapsed one (medians):", "",
                  structured_table(results.structured), ""]  # fmt: skip
    parts.append(f"Total wall time: {results.seconds:.0f} s ({results.threads} torch thread{'s' if results.threads > 1 else ''}).")
    return "\n".join(parts)


def add_arguments(parser) -> None:
    """Options of ``spred run compression``."""
    _common.add_common_arguments(parser, NAME, "LeNet-300-100 on 10,000 MNIST images at 12x and 68x, structured LeNet-5 at 50%% and 95%%, one seed (about 7 minutes on one core)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None, help="networks (default: lenet300100 lenet5caffe)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="methods (default: all)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, metavar="R", help="target compression ratios for every model")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs N (default 30)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="masked fine-tuning epochs M (default 10)")
    parser.add_argument("--train-size", type=int, default=None, help="random subset of the training set")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, ...")
    parser.add_argument("--cifar10", default=None, metavar="PATH", help="CIFAR-10 python batches (for resnet18)")
    parser.add_argument("--no-dense", action="store_true",
                        help="skip the dense reference (its error and time; not with --methods magnitude)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-structured", action="store_true", help="skip the structured (channel) experiment")
    group.add_argument("--structured-only", action="store_true", help="run the structured (channel) experiment only")
    parser.add_argument("--structured-model", choices=STRUCTURED_MODELS, default=None,
                        help="CNN of the structured runs (default lenet5caffe; smallvgg: conv 32-32-64-64-128-128, time in the convolutions)")
    parser.add_argument("--structured-sparsity", type=float, nargs="+", default=None, metavar="S",
                        help="target fractions of zeros of the structured runs (default: 0.5 0.8 0.95)")
    parser.add_argument("--round-to", type=int, default=None, metavar="N",
                        help="structured runs: keep a multiple of N channels in every pruned layer (8: the fastest widths on CPU)")


def config_from_args(args) -> CompressionConfig:
    """The resolved config: defaults, ``--quick``, ``--config FILE``, then the other options."""
    cli = {
        "seeds": args.seeds, "models": args.models, "methods": args.methods, "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs, "train_size": args.train_size, "device": args.device, "cifar10": args.cifar10,
        "structured": False if args.no_structured else None, "dense": False if args.no_dense else None,
        "structured_model": args.structured_model, "structured_sparsity": None if args.structured_sparsity is None else tuple(args.structured_sparsity),
        "round_to": args.round_to,
    }  # fmt: skip
    cfg = _common.resolve_config(CompressionConfig, quick=args.quick, quick_values=QUICK, config_file=args.config, cli_values=cli)
    if args.structured_only:
        if args.models is not None or args.ratios is not None:
            raise ValueError("--structured-only runs the structured CNN only: drop --models / --ratios.")
        cfg = _replace(cfg, models=(), structured=True)
    elif args.ratios is not None:
        cfg = _replace(cfg, ratios={m: tuple(args.ratios) for m in cfg.models})
    elif args.models is not None:
        cfg = _replace(cfg, ratios={m: tuple(cfg.ratios.get(m, DEFAULT_RATIOS[m])) for m in cfg.models})
    return check_config(cfg)


def run(args) -> int:
    """``spred run compression``: run, write the outputs, print the tables; returns the exit code."""
    cfg = config_from_args(args)
    with _common.num_threads(args.threads):
        results = run_experiment(cfg, args.out, plot_figure=not args.no_plot)
    print(report(results))
    print()
    print(f"wrote {', '.join(str(p) for p in results.files.values())} in {results.seconds:.1f} s")
    return 0
