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
``structured`` (``structured_groups="channels"``, the default: one gate per channel group of
the dependency graph, a filter with its BatchNorm and the slices that read it; ``"out"``: one
scalar per conv filter / hidden neuron of each tensor; the classes of the output layer stay dense).

Datasets: MNIST and Fashion-MNIST (``StudyCNN``), CIFAR-10 (JPEG) with ``CifarCNN`` and ResNet-20 (rows labelled
``cifar10-<model>``). Every sparse run is fine-tuned after collapse with its zeros frozen (one recipe for every
run: Adam at 1e-4) and compared with magnitude pruning of its optimizer's dense model to the same sparsity, given the
same fine-tune (:mod:`._optimizers_floor`); finished runs are kept in ``--out/.spred-runs`` and reused by the same
study run again (:mod:`._optimizers_cache`).

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
the sparsity reached, one line per optimizer), ``summary.md`` and ``config.json``, written
as one set (the ``--out`` folder is checked and locked before any work; see
:func:`spred.experiments._common.output_folder`); :func:`load_results` reads them back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import torch

from spred._validation import check_bool, check_float, check_int, param_error
from spred.experiments import _common
from spred.experiments._data import image_tensors
from spred.experiments._optimizers_cifar import CIFAR_MODELS, cifar_factory, label, load_cifar
from spred.experiments._optimizers_floor import FINETUNE_LR, FINETUNE_OPTIMIZER, FINETUNE_OPTIMIZERS
from spred.experiments._optimizers_plots import plot_panel, summarise, summary_table
from spred.experiments._outdir import RUNS_CACHE
from spred.experiments._optimizers_runs import CSV_COLUMNS, DENSE_OF, KINDS, OPTIMIZERS, SPARSITY_TYPES, STRUCTURED_GROUPS, kkt_statistics
from spred.experiments._optimizers_checks import _check_lr_map, _check_names, _check_seeds, _check_targets, _nested_lrs
from spred.experiments._optimizers_study import DEFAULT_INITIAL_LAMS, DEFAULT_LR_GRID, TUNING_COLUMNS, optimizer_study, tune_learning_rates
from spred.models import StudyCNN

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "DENSE_OF",
    "OPTIMIZERS",
    "OptimizersConfig",
    "QUICK",
    "QUICK_CIFAR",
    "SPARSITY_TYPES",
    "StudyCNN",
    "add_arguments",
    "check_config",
    "config_from_args",
    "kkt_statistics",
    "load_dataset",
    "load_results",
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
DATASETS = ("mnist", "fashion_mnist", "cifar10")
WHO = "OptimizersConfig"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class OptimizersConfig:
    """Settings of ``spred run optimizers``.

    Parameters
    ----------
    datasets : tuple of {"mnist", "fashion_mnist", "cifar10"}
        ``mnist``: the first ``n_train`` images of the MNIST training set (all 60,000
        when None), tested on the 10,000 test images. ``fashion_mnist``: the staged
        subset of 2,000 Fashion-MNIST test images, split once (stratified, seed 0) into
        ``1 - fashion_test_size`` for training and the rest for testing. ``cifar10``:
        CIFAR-10 (JPEG), the first ``cifar_n_train`` training and ``cifar_n_test`` test
        images (class-balanced prefixes; None: all 50,000 / 10,000), once per model of ``models``.
    models : tuple of str
        The CIFAR-10 networks (:func:`spred.models.build` names; MNIST and Fashion-MNIST use ``StudyCNN``).
    cifar_epochs : int
        Epochs per CIFAR-10 run.
    cifar_n_train, cifar_n_test : int or None
    augment : bool
        CIFAR-10: random crop (padding 4) and horizontal flip of every training batch.
    finetune_epochs : int
        Epochs of masked fine-tuning after collapse (and of the magnitude floor), the same
        for every optimizer; 0 skips the fine-tune.
    finetune_optimizer, finetune_lr : str, float
        The fine-tune's recipe, one for every run and its floor (default Adam at 1e-4; see
        :mod:`spred.experiments._optimizers_floor`).
    device : str, optional
        Where to train (e.g. ``"cuda"``); evaluation, pruning and timing stay on the CPU.
    resume : bool
        Keep every finished run in ``.spred-runs`` inside the output folder and reuse it
        when the same study is run again (an interrupted study resumes where it stopped).
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
    structured_groups : {"channels", "out"}
        Groups of the structured runs: channel groups across layers (default) or per-tensor
        output channels (see :func:`optimizer_study`).
    lam_update_every : int
        Optimizer steps between two lam updates of the target-sparsity controller.
    """

    datasets: tuple[str, ...] = ("mnist", "fashion_mnist")  # CIFAR-10 on request (--datasets cifar10): it takes days on a CPU
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
    models: tuple[str, ...] = CIFAR_MODELS
    cifar_epochs: int = 30
    cifar_n_train: int | None = None
    cifar_n_test: int | None = None
    augment: bool = True
    finetune_epochs: int = 2
    finetune_optimizer: str = FINETUNE_OPTIMIZER
    finetune_lr: float = FINETUNE_LR
    resume: bool = True
    device: str | None = None
    structured_groups: str = "channels"
    lam_update_every: int = 10


QUICK = {"datasets": ("mnist",), "seeds": (0,), "epochs": 8, "n_train": 10_000, "fashion_epochs": 30, "latency_repeats": 20}
# --quick with --datasets cifar10 (docs/optimizers.md): CifarCNN, SGD / Adam / Adagrad, both types, targets 20 and 60%,
# one seed, fixed learning rates, the first 2,000 training and test images, 6 epochs at batch 32 (378 steps, lam
# updated every 2), a 1-epoch fine-tune (Adam at 1e-4, as every run). Sized to finish in about 20 minutes on one shared core.
QUICK_CIFAR = {
    "datasets": ("cifar10",), "models": ("cifarcnn",), "optimizers": ("sgd", "adam", "adagrad"), "targets": (0.2, 0.6), "seeds": (0,),
    "cifar_epochs": 6, "cifar_n_train": 2000, "cifar_n_test": 2000, "batch_size": 32, "augment": False, "finetune_epochs": 1,
    "lam_update_every": 2, "latency_repeats": 5, "kkt_samples": 512,
    "lrs": {"unstructured": {"sgd": 0.1, "adam": 1e-3, "adagrad": 0.01}, "structured": {"sgd": 0.05, "adam": 1e-3, "adagrad": 0.01},
            "dense": {"sgd": 0.05, "adam": 1e-3, "adagrad": 0.01}},
}

def check_config(cfg: OptimizersConfig) -> OptimizersConfig:
    """Validate a config (``lr_grid`` lists become tuples); every message names the field and the value."""
    _check_names(cfg.datasets, DATASETS, "datasets", WHO)
    _check_names(cfg.optimizers, OPTIMIZERS, "optimizers", WHO)
    _check_names(cfg.sparsity_types, SPARSITY_TYPES, "sparsity_types", WHO)
    _check_targets(cfg.targets, WHO)
    _check_seeds(cfg.seeds, WHO)
    if cfg.structured_groups not in STRUCTURED_GROUPS:
        raise param_error(ValueError, "structured_groups", WHO, f"one of {list(STRUCTURED_GROUPS)}", cfg.structured_groups)
    for name in ("epochs", "fashion_epochs", "cifar_epochs", "batch_size", "kkt_samples", "latency_repeats", "lam_update_every"):
        check_int(getattr(cfg, name), name, WHO, 1)
    check_int(cfg.finetune_epochs, "finetune_epochs", WHO, 0)
    if cfg.finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise param_error(ValueError, "finetune_optimizer", WHO, f"one of {list(FINETUNE_OPTIMIZERS)}", cfg.finetune_optimizer)
    check_float(cfg.finetune_lr, "finetune_lr", WHO, 0, low_open=True)
    if cfg.device is not None and not isinstance(cfg.device, str):
        raise param_error(TypeError, "device", WHO, "a device name such as 'cuda', or None", cfg.device)
    for name in ("augment", "resume", "dense_baseline"):
        check_bool(getattr(cfg, name), name, WHO)
    for name in ("n_train", "cifar_n_train", "cifar_n_test"):
        check_int(getattr(cfg, name), name, WHO, 2, optional=True)
    from spred.models import list_models

    _check_names(cfg.models, list_models(), "models", WHO)
    for name in ("fashion_test_size", "val_fraction", "tune_target", "tolerance"):
        check_float(getattr(cfg, name), name, WHO, 0, 1, low_open=True, high_open=True, optional=name == "tune_target")
    check_float(cfg.threshold, "threshold", WHO, 0, low_open=True)
    check_float(cfg.momentum, "momentum", WHO, 0, 1, high_open=True)
    check_int(cfg.tune_seed, "tune_seed", WHO, 0)
    lrs = _nested_lrs(cfg.lrs, WHO)
    grid = _check_lr_map(cfg.lr_grid, "lr_grid", WHO, grid=True)
    missing = [o for o in cfg.optimizers if o not in grid and not all(o in lrs[k] for k in cfg.sparsity_types)]
    if missing:
        raise ValueError(f"The 'lr_grid' parameter of {WHO} has no grid for {missing}, which have no fixed 'lrs' either.")
    _check_lr_map(cfg.initial_lams, "initial_lams", WHO)
    sizes, expected = cfg.latency_batch_sizes, "a non-empty list of ints >= 1"
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not all(isinstance(b, Integral) and not isinstance(b, bool) for b in sizes):
        raise param_error(TypeError, "latency_batch_sizes", WHO, expected, sizes)
    if not sizes or min(sizes) < 1:
        raise param_error(ValueError, "latency_batch_sizes", WHO, expected, sizes)
    if grid != dict(cfg.lr_grid):  # lists from a config.json become tuples, so a config read back compares equal
        cfg = dataclasses.replace(cfg, lr_grid=grid)
    return cfg


# --------------------------------------------------------------------------- data


def load_dataset(name: str, cfg: OptimizersConfig, data_home=None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((X_train, y_train), (X_test, y_test))`` as float32 ``(n, c, h, w)`` tensors and int64 labels."""
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
    elif name == "cifar10":
        return load_cifar(cfg.cifar_n_train, cfg.cifar_n_test, data_home)
    else:
        raise param_error(ValueError, "datasets", WHO, f"among {list(DATASETS)}", name)
    return image_tensors(X, y), image_tensors(Xt, yt)


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


def _factories(dataset: str, cfg: OptimizersConfig) -> list[tuple[str, object]]:
    """``[(model name, factory)]`` of one dataset: every CIFAR-10 model of ``cfg.models``, ``StudyCNN`` otherwise."""
    if dataset == "cifar10":
        return [(m, cifar_factory(m, cfg.augment)) for m in cfg.models]
    return [("studycnn", StudyCNN)]


def _epochs(dataset: str, cfg: OptimizersConfig) -> int:
    return {"mnist": cfg.epochs, "fashion_mnist": cfg.fashion_epochs, "cifar10": cfg.cifar_epochs}[dataset]


def _fingerprint(cfg: OptimizersConfig, dataset: str, model: str) -> str:
    """The settings of ``cfg`` that change a run's result without being part of its own key (see ``_optimizers_cache``)."""
    import json

    data = {"mnist": cfg.n_train, "fashion_mnist": cfg.fashion_test_size, "cifar10": (cfg.cifar_n_train, cfg.cifar_n_test, cfg.augment)}[dataset]
    keys = ("batch_size", "threshold", "momentum", "kkt_samples", "latency_batch_sizes", "latency_repeats", "tolerance", "val_fraction", "dense_baseline",
            "device")  # fmt: skip
    return json.dumps([dataset, model, data, _epochs(dataset, cfg), [getattr(cfg, k) for k in keys]], default=str)


def labels(cfg: OptimizersConfig) -> list[str]:
    """The ``dataset`` labels of a config's rows, in order (``cifar10-<model>`` per CIFAR-10 model)."""
    return [label(d, m) for d in cfg.datasets for m, _ in _factories(d, cfg)]


def run_experiment(cfg: OptimizersConfig, out: str | Path | None = None, *, plot_figure: bool = True, progress: bool | None = None,
                   data_home=None, n_jobs: int = 1) -> OptimizersResults:  # fmt: skip
    """Run the study on every dataset of ``cfg`` and write the outputs (see the module docstring).

    ``n_jobs`` worker processes run the independent runs side by side (see :func:`optimizer_study`).
    ``out`` (``results/optimizers`` when None) must be a new or empty folder, or one that
    spred run wrote; it is checked and locked before anything is computed, and the outputs
    replace the previous set only once all of them are written (see
    :func:`spred.experiments._common.output_folder`). :func:`load_results` reads them back.
    """
    cfg = check_config(cfg)
    with _common.output_folder(out, NAME) as folder:
        start, cpu_start = time.perf_counter(), time.process_time()
        rows: list[dict] = []
        tuning: list[dict] = []
        chosen: dict[str, dict[str, float]] = {}
        cache = folder.path / RUNS_CACHE if cfg.resume else None
        for dataset in cfg.datasets:
            train, test = load_dataset(dataset, cfg, data_home)
            for model_name, factory in _factories(dataset, cfg):
                tag = label(dataset, model_name)
                tune_rows: list[dict] = []
                ds_rows = optimizer_study(
                    factory, train, test, optimizers=cfg.optimizers, sparsity_types=cfg.sparsity_types, targets=cfg.targets,
                    seeds=cfg.seeds, epochs=_epochs(dataset, cfg), lrs=cfg.lrs, lr_grid=cfg.lr_grid, val_fraction=cfg.val_fraction,
                    batch_size=cfg.batch_size, threshold=cfg.threshold, momentum=cfg.momentum, initial_lams=cfg.initial_lams,
                    tolerance=cfg.tolerance, kkt_samples=cfg.kkt_samples, latency_batch_sizes=cfg.latency_batch_sizes,
                    latency_repeats=cfg.latency_repeats, dense_baseline=cfg.dense_baseline, tune_target=cfg.tune_target,
                    tune_seed=cfg.tune_seed, dataset=tag, progress=progress is not False, tuning=tune_rows, n_jobs=n_jobs,
                    finetune_epochs=cfg.finetune_epochs, finetune_optimizer=cfg.finetune_optimizer, finetune_lr=cfg.finetune_lr,
                    model_name=model_name, cache=cache, fingerprint=_fingerprint(cfg, dataset, model_name),
                    device=cfg.device, structured_groups=cfg.structured_groups, lam_update_every=cfg.lam_update_every,
                )  # fmt: skip
                for r in tune_rows:
                    r["dataset"] = tag
                tuning += tune_rows
                chosen[tag] = {kind: {r["optimizer"]: r["lr"] for r in ds_rows if r["sparsity_type"] == kind} for kind in KINDS}
                rows += ds_rows
                folder.write_csv(rows, "optimizers.csv", CSV_COLUMNS)  # an interrupted run keeps its finished datasets (staged)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        if n_jobs > 1:  # the runs' CPU time was spent in the workers
            cpu_seconds += sum(r["cpu_seconds"] for r in [*rows, *tuning] if math.isfinite(r.get("cpu_seconds", math.nan)))
        results = OptimizersResults(rows, summarise(rows), tuning, chosen, {}, seconds, cpu_seconds)
        _write_outputs(folder, results, cfg, plot_figure, n_jobs)
    return results


def _write_outputs(folder: _common.ResultsFolder, results: OptimizersResults, cfg: OptimizersConfig, plot_figure: bool, n_jobs: int) -> None:
    """The tables, figures, summary and config of a finished run, staged in ``folder``; their final paths in ``results.files``."""
    files = results.files
    files["runs"] = folder.write_csv(results.rows, "optimizers.csv", CSV_COLUMNS)
    files["summary"] = folder.write_csv(results.summary, "optimizers_summary.csv")
    if results.tuning:
        files["tuning"] = folder.write_csv(results.tuning, "optimizers_lr_tuning.csv", ("dataset", *TUNING_COLUMNS))
    if plot_figure:
        for dataset in labels(cfg):
            for kind in cfg.sparsity_types:
                name = f"optimizers_{dataset}_{kind}.png"
                plot_panel(results.summary, dataset, kind, folder.file(name))
                files[f"figure_{dataset}_{kind}"] = folder.final(name)
    files["markdown"] = folder.write_text("summary.md", report(results, cfg) + "\n")
    extra = {"learning_rates": results.lrs, "lr_tuning": results.tuning, "wall_seconds": results.seconds, "cpu_seconds": results.cpu_seconds,
             "torch_threads": torch.get_num_threads(), "n_jobs": n_jobs}  # fmt: skip
    files["config"] = folder.write_config(cfg, extra=extra)


def load_results(out: str | Path) -> tuple[OptimizersConfig, list[dict], list[dict]]:
    """Read back what :func:`run_experiment` wrote under ``out``: (config, rows, learning-rate tuning rows).

    The files are checked against the manifest of the run that wrote them: the results
    of an interrupted run, of two runs mixed, or edited by hand are refused
    (``OutputFolderError``, a ``ValueError``). ``summarise(rows)`` gives the summary
    again, ``plot_panel`` the figures.
    """
    saved = _common.open_results(out, NAME)
    cfg = check_config(_common.config_from_text(OptimizersConfig, saved.text("config.json"), str(Path(out) / "config.json")))
    tuning = _common.read_csv_text(saved.text("optimizers_lr_tuning.csv")) if "optimizers_lr_tuning.csv" in saved else []
    return cfg, _common.read_csv_text(saved.text("optimizers.csv")), tuning


def report(results: OptimizersResults, cfg: OptimizersConfig) -> str:
    """The markdown printed at the end: learning rates, one table per dataset and type, the runs that missed their target."""
    parts = []
    for dataset, by_kind in results.lrs.items():
        for kind, lrs in by_kind.items():
            tuned = {r["optimizer"] for r in results.tuning if r.get("dataset") == dataset and r["chosen"] and r["sparsity_type"] == kind}
            desc = ", ".join(f"{o} {lr:g}" + (" (tuned)" if o in tuned else " (given)") for o, lr in lrs.items())
            if desc:
                parts.append(f"Learning rates on {dataset} ({kind}): {desc}.")
    for dataset in labels(cfg):
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
    _common.add_common_arguments(parser, NAME, "MNIST only, 10,000 images, 8 epochs, one seed (about 10 minutes on 2 cores with --jobs 2); "
                                 "with --datasets cifar10: CifarCNN, SGD / Adam / Adagrad, both types, targets 20 and 60%%, 2,000 images, 6 epochs, "
                                 "fixed learning rates (about 20 minutes on one shared core)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help="datasets (default: mnist fashion_mnist)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None, help="optimizers (default: all)")
    parser.add_argument("--types", dest="sparsity_types", nargs="+", choices=SPARSITY_TYPES, default=None, help="sparsity types (default: both)")
    parser.add_argument("--targets", type=float, nargs="+", default=None, metavar="T", help="target sparsities in (0, 1) (default 0.2 0.4 0.6 0.8)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per MNIST run (default 15; --quick: 8)")
    parser.add_argument("--fashion-epochs", dest="fashion_epochs", type=int, default=None, help="epochs per Fashion-MNIST run (default 40)")
    parser.add_argument("--models", nargs="+", default=None, help="CIFAR-10 networks (default: cifarcnn resnet20)")
    parser.add_argument("--cifar-epochs", dest="cifar_epochs", type=int, default=None, help="epochs per CIFAR-10 run (default 30; --quick: 3)")
    parser.add_argument("--cifar-n-train", dest="cifar_n_train", type=int, default=None, help="CIFAR-10 training images (default: all 50000)")
    parser.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, default=None, help="masked fine-tune after collapse (default 2)")
    parser.add_argument("--finetune-optimizer", dest="finetune_optimizer", choices=FINETUNE_OPTIMIZERS, default=None,
                        help="the fine-tune's optimizer, the same for every run and its floor (default adam)")
    parser.add_argument("--finetune-lr", dest="finetune_lr", type=float, default=None, help="the fine-tune's learning rate (default 1e-4)")
    parser.add_argument("--device", default=None, help="train on this device, e.g. cuda (evaluation and timing stay on the CPU)")
    parser.add_argument("--no-resume", dest="resume", action="store_const", const=False, default=None,
                        help="retrain every run (default: reuse the finished runs of the same study kept in --out)")
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
        "lrs": _parse_lrs(args.lrs), "threshold": args.threshold, "models": args.models, "cifar_epochs": args.cifar_epochs,
        "cifar_n_train": args.cifar_n_train, "finetune_epochs": args.finetune_epochs, "resume": args.resume,
        "finetune_optimizer": args.finetune_optimizer, "finetune_lr": args.finetune_lr,
        "device": args.device,
    }  # fmt: skip
    quick = QUICK_CIFAR if args.datasets == ["cifar10"] else QUICK
    cfg = _common.resolve_config(OptimizersConfig, quick=args.quick, quick_values=quick, config_file=args.config, cli_values=cli)
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
