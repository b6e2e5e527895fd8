"""``spred run compression``: the settings (:class:`CompressionConfig`), the ``--quick`` preset and their validation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch

from spred._validation import check_bool, check_choice, check_choices, check_float, check_int, param_error

METHODS = ("spred", "magnitude", "gmp", "synflow", "str", "l1")
MODELS = ("lenet300100", "lenet5caffe", "resnet18", "resnet20")
#: CNNs of the structured experiment (MNIST); zero channels of both are removed exactly.
STRUCTURED_MODELS = ("lenet5caffe", "smallvgg")
DEFAULT_LRS = {"spred": 1e-2, "magnitude": 1e-3, "gmp": 3e-3, "synflow": 3e-3, "str": 3e-3, "l1": 3e-3}
DEFAULT_RATIOS = {"lenet300100": (12.0, 68.0), "lenet5caffe": (12.0, 280.0), "resnet18": (10.0, 50.0), "resnet20": (10.0, 50.0, 100.0)}


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


WHO = "CompressionConfig"


def _check_ratios(cfg: CompressionConfig) -> dict[str, tuple[float, ...]]:
    """``ratios`` as ``{model: tuple of floats}`` for the models of ``cfg``."""
    if not isinstance(cfg.ratios, Mapping):
        raise param_error(TypeError, "ratios", WHO, "a mapping model -> tuple of compression ratios", cfg.ratios)
    ratios = {}
    for model in cfg.models:
        values = cfg.ratios.get(model)
        if values is None:
            raise ValueError(f"The 'ratios' parameter of {WHO} has no ratios for model {model!r}. Got {dict(cfg.ratios)!r}.")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise param_error(TypeError, "ratios", WHO, f"a non-empty tuple of numbers for {model!r}", values)
        for r in values:
            if isinstance(r, bool) or not isinstance(r, Real):
                raise param_error(TypeError, "ratios", WHO, "numbers >= 1", r)
            if not (math.isfinite(r) and r >= 1):
                raise param_error(ValueError, "ratios", WHO, "numbers >= 1", r)
        ratios[model] = tuple(float(r) for r in values)
    return ratios


def _check_lrs(cfg: CompressionConfig) -> None:
    if not isinstance(cfg.lrs, Mapping):
        raise param_error(TypeError, "lrs", WHO, "a mapping method -> learning rate", cfg.lrs)
    missing = [m for m in cfg.methods if m not in cfg.lrs] + ([] if "magnitude" in cfg.lrs else ["magnitude"])
    if missing:
        raise ValueError(f"The 'lrs' parameter of {WHO} has no learning rate for {sorted(set(missing))}. Got {dict(cfg.lrs)!r}.")
    for lr in cfg.lrs.values():
        if isinstance(lr, bool) or not isinstance(lr, Real):
            raise param_error(TypeError, "lrs", WHO, "positive numbers", lr)
        if not (math.isfinite(lr) and lr > 0):
            raise param_error(ValueError, "lrs", WHO, "positive numbers", lr)


def _check_floats(value, name: str, expected: str, *, low_open: bool, high_open: bool, scalar: bool = False) -> tuple[float, ...]:
    """A non-empty tuple of numbers in [0, 1] (ends open as told), or one number when ``scalar``, as floats."""
    values = (value,) if scalar and isinstance(value, Real) and not isinstance(value, bool) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise param_error(TypeError, name, WHO, expected, value)
    inside = lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)  # noqa: E731
    if any(isinstance(v, bool) or not isinstance(v, Real) or not inside(v) for v in values):
        raise param_error(ValueError, name, WHO, expected, value if scalar else tuple(values))
    return tuple(float(v) for v in values)


def _check_scalars(cfg: CompressionConfig) -> None:
    """The int, float, bool and choice fields."""
    for name in ("epochs", "batch_size", "gmp_every", "synflow_rounds", "latency_repeats"):
        check_int(getattr(cfg, name), name, WHO, 1)
    check_int(cfg.finetune_epochs, "finetune_epochs", WHO, 0)
    check_int(cfg.train_size, "train_size", WHO, 2, optional=True)
    check_int(cfg.structured_epochs, "structured_epochs", WHO, 1, optional=True)
    check_int(cfg.structured_finetune_epochs, "structured_finetune_epochs", WHO, 0, optional=True)
    check_int(cfg.round_to, "round_to", WHO, 1, optional=True)
    check_choice(cfg.optimizer, "optimizer", WHO, ("adam", "sgd"))
    for name in ("finetune_lr", "lam", "threshold", "str_lam"):
        check_float(getattr(cfg, name), name, WHO, 0.0, low_open=True)
    check_float(cfg.ramp, "ramp", WHO, 0.0, 1.0, low_open=True)
    check_float(cfg.controller_margin, "controller_margin", WHO, 0.0, 1.0)
    check_float(cfg.gmp_start, "gmp_start", WHO, 0.0, 1.0)
    if cfg.gmp_start >= cfg.ramp:
        raise ValueError(f"The 'gmp_start' parameter of {WHO} must be smaller than 'ramp'={cfg.ramp}. Got {cfg.gmp_start!r} instead.")
    check_float(cfg.str_s_init, "str_s_init", WHO)
    check_float(cfg.l1_lam, "l1_lam", WHO, 0.0, optional=True)
    check_bool(cfg.dense, "dense", WHO)
    check_bool(cfg.structured, "structured", WHO)
    check_choice(cfg.structured_model, "structured_model", WHO, STRUCTURED_MODELS)


def _check_seeds_and_device(cfg: CompressionConfig) -> None:
    if isinstance(cfg.seeds, (str, bytes)) or not isinstance(cfg.seeds, Sequence) or not cfg.seeds:
        raise param_error(TypeError, "seeds", WHO, "a non-empty tuple of ints >= 0", cfg.seeds)
    if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 0 for s in cfg.seeds) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise param_error(ValueError, "seeds", WHO, "distinct ints >= 0", tuple(cfg.seeds))
    expected = "a device string such as 'cpu' or 'cuda'"
    if not isinstance(cfg.device, str):
        raise param_error(TypeError, "device", WHO, expected, cfg.device)
    try:
        torch.device(cfg.device)
    except (RuntimeError, ValueError) as exc:
        raise param_error(ValueError, "device", WHO, expected, cfg.device) from exc


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
        check_choices(cfg.models, "models", WHO, MODELS)
    check_choices(cfg.methods, "methods", WHO, METHODS)
    ratios = _check_ratios(cfg)
    _check_scalars(cfg)
    _check_lrs(cfg)
    _check_floats(cfg.structured_lam_exponents, "structured_lam_exponents", "a non-empty tuple of floats in [0, 1]", low_open=False, high_open=False)
    sparsity = _check_floats(cfg.structured_sparsity, "structured_sparsity", "a float or a non-empty tuple of floats in (0, 1)",
                             low_open=True, high_open=True, scalar=True)  # fmt: skip
    if not cfg.dense and "magnitude" in cfg.methods and cfg.models:
        raise ValueError(f"The 'dense' parameter of {WHO} must be True when 'methods' has 'magnitude': one-shot "
                         "magnitude pruning starts from the dense model. Drop 'magnitude' or keep the dense run.")  # fmt: skip
    _check_seeds_and_device(cfg)
    if "resnet18" in cfg.models and cfg.cifar10 is None:
        raise ValueError("The 'resnet18' model runs on CIFAR-10: pass --cifar10 PATH (the folder of the python batches, "
                         "https://www.cs.toronto.edu/~kriz/cifar.html); a GPU (--device cuda) is recommended.")  # fmt: skip
    return dataclasses.replace(cfg, ratios=ratios, structured_sparsity=sparsity)
