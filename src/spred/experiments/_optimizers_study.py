"""``spred run optimizers``, the study: :func:`optimizer_study` and :func:`tune_learning_rates`.

The study validates its arguments, tunes the learning rates it was not given (on a
seeded validation split), then runs every (sparsity type, optimizer, target, seed) and
the dense baselines through :mod:`spred.experiments._optimizers_runs`, in worker
processes when ``n_jobs > 1``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

import spred
from spred._validation import check_float, check_int, param_error
from spred.experiments import _common
from spred.experiments._optimizers_cache import cache_key, library_fingerprint, load_cached, store_cached
from spred.experiments._optimizers_floor import FINETUNE_LR, FINETUNE_OPTIMIZER, FINETUNE_OPTIMIZERS
from spred.experiments._optimizers_checks import (
    _check_groups,
    _check_lr_map,
    _check_names,
    _check_probe,
    _check_study,
    _example_inputs,
    _first_samples,
    _is_tensor_pair,
    _nested_lrs,
    _validation_split,
)
from spred.experiments._optimizers_runs import (
    DENSE_OF,
    KINDS,
    OPTIMIZERS,
    SPARSITY_TYPES,
    _attach_dense,
    _dense_row,
    _diverged_row,
    _evaluate,
    _controller,
    _Setup,
    _sparse_row,
    _sparsify_for,
    _train,
)

logger = logging.getLogger(__name__)

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
# lam at the start of training; the controller moves it by up to 1000x in half of training.
# Start low: zeros made by overshooting do not come back. With 1e-4, Adam (lr 1e-3) zeroed 67% of the weights of
# the MNIST CNN for targets of 20%, 40% and 60% alike: its normalised step drives every weight whose gradient is
# below lam to zero within ~100 steps. A decoupled step shrinks by lr * lam, hence its larger start.
DEFAULT_INITIAL_LAMS = {"sgd": 1e-5, "adam": 1e-5, "adamw": 1e-5, "adamw_decoupled": 1e-2, "adagrad": 1e-5}
TUNING_COLUMNS = ("optimizer", "lr", "val_acc", "weight_sparsity", "reached_target", "chosen", "sparsity_type", "target", "seed", "epochs", "cpu_seconds")


def _run_settings(setup: _Setup, kind: str) -> tuple:
    """What determines a run of ``kind`` besides its own arguments and the study's fingerprint.

    The groups, the controller, the fine-tune and the code the run executes (spred's, and for a
    sparse run the study's fine-tune and floor, ``_optimizers_floor``).
    """
    if kind == "dense":
        return (library_fingerprint("dense"),)
    settings = (setup.finetune_epochs, setup.finetune_optimizer, setup.finetune_lr)
    if kind == "structured" and setup.structured_groups == "channels":
        return *settings, "channels", setup.lam_update_every, library_fingerprint("channels")
    return *settings, setup.structured_groups if kind == "structured" else None, setup.lam_update_every, library_fingerprint("sparse")


# --------------------------------------------------------------------------- learning rates


def _tune_job(shared, job) -> dict:
    """One tuning run (module level, so that worker processes can run it)."""
    setup, val_data, sparsity_type, target, lams, seed, cache = shared
    optimizer, lr = job
    dense, threshold = sparsity_type == "dense", setup.threshold
    key = cache_key(cache[1], "tune", sparsity_type, optimizer, lr, target, seed, lams[optimizer], *_run_settings(setup, sparsity_type)) if cache else ""
    cached, _ = load_cached(cache[0] if cache else None, key)
    if cached is not None:
        return cached
    cpu = time.process_time()
    with _common.torch_seed(seed):
        model = setup.model_factory()
    try:
        if dense:
            _train(setup, model, optimizer, lr, seed, None, threshold)
            model.cpu()
            sparsity, acc = 0.0, _evaluate(setup, model, val_data)
        else:
            _sparsify_for(setup, model, sparsity_type, lams[optimizer])
            _train(setup, model, optimizer, lr, seed, _controller(setup, target), threshold)
            model.cpu()
            sparsity = spred.sparsity_report(model, threshold=threshold).sparsified_sparsity
            acc = _evaluate(setup, spred.collapse(model, threshold=threshold), val_data)
    except FloatingPointError as exc:  # a learning rate that diverges is a result, not an error
        logger.info("tuning %s lr %g diverged: %s", optimizer, lr, exc)
        sparsity, acc = math.nan, math.nan
    row = {"optimizer": optimizer, "lr": lr, "val_acc": acc, "weight_sparsity": sparsity,
           "reached_target": dense or bool(abs(sparsity - target) <= setup.tolerance), "chosen": False,
           "sparsity_type": sparsity_type, "target": 0.0 if dense else target, "seed": seed, "epochs": setup.epochs,
           "cpu_seconds": time.process_time() - cpu}  # fmt: skip
    if cache:
        store_cached(cache[0], key, row)
    return row


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
    cache: tuple[str, str] | None = None,
    structured_groups: str = "channels",
    lam_update_every: int = 10,
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
    ``cache``: ``(folder, fingerprint)`` of the per-run cache (see :func:`optimizer_study`);
    ``structured_groups`` and ``lam_update_every`` as in :func:`optimizer_study`.

    Returns
    -------
    lrs : dict of str to float
        The chosen learning rate per optimizer.
    rows : list of dict
        One row per (optimizer, lr): ``val_acc``, ``weight_sparsity``, ``reached_target``, ``chosen``.
    """
    check_int(n_jobs, "n_jobs", "tune_learning_rates", 1)
    cache = None if cache is None or cache[0] is None else cache
    optimizers = _check_names(optimizers, OPTIMIZERS, "optimizers", "tune_learning_rates")
    if sparsity_type not in KINDS:
        raise param_error(ValueError, "sparsity_type", "tune_learning_rates", f"one of {list(KINDS)}", sparsity_type)
    grid = _check_lr_map(dict(DEFAULT_LR_GRID if lr_grid is None else lr_grid), "lr_grid", "tune_learning_rates", grid=True)
    lams = {**DEFAULT_INITIAL_LAMS, **dict(initial_lams or {})}
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    setup = _Setup(model_factory, train_data, val_data, None, None, epochs, batch_size, threshold, momentum, loss_fn, (1,), 1, tolerance, device, "tuning",
                   structured_groups=_check_groups(structured_groups, "tune_learning_rates"),
                   lam_update_every=check_int(lam_update_every, "lam_update_every", "tune_learning_rates", 1))  # fmt: skip
    rows, chosen = [], {}
    jobs = [(o, lr) for o in optimizers for lr in grid[o]]
    shared = (setup, val_data, sparsity_type, target, lams, seed, cache)
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
    finetune_epochs: int = 0,
    finetune_optimizer: str = FINETUNE_OPTIMIZER,
    finetune_lr: float = FINETUNE_LR,
    model_name: str = "",
    cache: str | None = None,
    fingerprint: str = "",
    structured_groups: str = "channels",
    lam_update_every: int = 10,
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
        ``structured``: group sparsity, as ``structured_groups`` says.
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
    finetune_epochs : int, default=0
        Epochs of masked fine-tuning (zeros frozen, no penalty) after collapse
        (``test_acc_finetuned``), by one recipe for every run: ``finetune_optimizer`` at
        ``finetune_lr``, from the dense model's weight norms in BatchNorm-normalised layers
        (see :mod:`spred.experiments._optimizers_floor`). With ``dense_baseline`` each sparse run also prunes the
        dense model of its optimizer and seed by magnitude to the sparsity it reached,
        and scores it without and with the same fine-tune (``magnitude_acc``,
        ``magnitude_acc_finetuned``): the floor spred has to beat.
    finetune_optimizer : {"adam", "adamw", "sgd", "adagrad"}, default="adam"
        The fine-tune's optimizer (a fresh one; SGD with ``momentum``), whatever trained the model.
    finetune_lr : float, default=1e-4
        The fine-tune's learning rate.
    model_name : str, default=""
        Written into every row (``model``).
    cache : path, optional
        A folder where every finished run is saved as it ends; a study run again with the
        same settings (``fingerprint``) and the same cache reads them back instead of
        training them (see :mod:`spred.experiments._optimizers_cache`).
    fingerprint : str, default=""
        Everything about the study that is not in a run's own settings (dataset, epochs,
        batch size, ...): part of every cache key (with a hash of the spred code the run
        executes, so that a run made by another version of that code is trained again).
    structured_groups : {"channels", "out"}, default="channels"
        The groups of structured runs: ``"channels"``, one gate per channel group of the
        model's dependency graph (``spred.sparsify(model, lam, groups="channels",
        example_inputs=...)``: a filter with its bias, its BatchNorm scale and shift and the
        input slices that read it; the output layer's classes are never a group), or
        ``"out"``, one group per output channel / neuron of every Linear and Conv layer
        except the output layer (per tensor: a BatchNorm after a zero filter still emits its shift).
    lam_update_every : int, default=10
        Optimizer steps between two lam updates of the controller
        (:class:`spred.train.TargetSparsity` ``update_every``). lam can change by at most a
        factor ``exp(gain)`` per update, so short runs need frequent updates to reach high
        targets (96 steps with updates every 10 moved lam by 40x at most).

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
    optimizers, sparsity_types, targets, seeds = _check_study(
        model_factory, train_data, test_data, optimizers=optimizers, sparsity_types=sparsity_types, targets=targets, seeds=seeds,
        ints={"epochs": epochs, "batch_size": batch_size, "kkt_samples": kkt_samples, "latency_repeats": latency_repeats, "n_jobs": n_jobs},
        threshold=threshold, tolerance=tolerance,
    )  # fmt: skip
    lrs = _nested_lrs({} if lrs is None else lrs, who)
    structured_groups = _check_groups(structured_groups, who)
    check_int(lam_update_every, "lam_update_every", who, 1)
    tune_target = min(targets) if tune_target is None else check_float(tune_target, "tune_target", who, 0, 1, low_open=True, high_open=True, optional=True)
    lams = {**DEFAULT_INITIAL_LAMS, **_check_lr_map({} if initial_lams is None else initial_lams, "initial_lams", who)}
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    _check_probe(model_factory(), who)
    example_inputs = _example_inputs(example_inputs, test_data, who)
    wanted = {kind: list(optimizers) for kind in sparsity_types}
    if dense_baseline:
        wanted["dense"] = list(dict.fromkeys(DENSE_OF[o] for o in optimizers))
    common = {"lr_grid": lr_grid, "seed": tune_seed, "epochs": epochs, "batch_size": batch_size, "threshold": threshold, "momentum": momentum,
              "initial_lams": lams, "tolerance": tolerance, "loss_fn": loss_fn, "device": device, "progress": progress,
              "n_jobs": n_jobs, "cache": (cache, fingerprint) if cache is not None else None, "structured_groups": structured_groups,
              "lam_update_every": lam_update_every}  # fmt: skip
    check_int(finetune_epochs, "finetune_epochs", who, 0)
    if finetune_optimizer not in FINETUNE_OPTIMIZERS:
        raise param_error(ValueError, "finetune_optimizer", who, f"one of {list(FINETUNE_OPTIMIZERS)}", finetune_optimizer)
    finetune_lr = check_float(finetune_lr, "finetune_lr", who, 0, low_open=True)
    sources = _tune_missing(model_factory, train_data, val_data, val_fraction, wanted, lrs, tune_target, common, tuning)
    kkt_x, kkt_y = _first_samples(train_data, kkt_samples)
    setup = _Setup(
        model_factory, train_data, test_data, (kkt_x.cpu(), kkt_y.cpu()), example_inputs, epochs, batch_size, threshold, momentum, loss_fn,
        tuple(latency_batch_sizes), latency_repeats, tolerance, device, dataset, model_name, finetune_epochs, finetune_optimizer, finetune_lr, structured_groups,
        lam_update_every,
    )  # fmt: skip
    dense_jobs = [("dense", o, None, s) for o in wanted.get("dense", []) for s in seeds]
    sparse_jobs = [(t, o, target, s) for t in sparsity_types for o in optimizers for target in targets for s in seeds]
    rows, dense_models = [], {}
    for phase, jobs in (("dense", dense_jobs), ("sparse", sparse_jobs)):  # the dense models first: the sparse runs' floor starts from them
        shared = (setup, lrs, sources, lams, dense_models, (cache, fingerprint))
        for (kind, optimizer, target, seed), row in _common.map_jobs(
            _study_job, shared, jobs, n_jobs=n_jobs, threads=torch.get_num_threads(), progress=progress,
            desc=f"optimizers ({dataset}, {phase})", postfix=lambda j: {"type": j[0], "opt": j[1], "target": j[2], "seed": j[3]},
        ):  # fmt: skip
            model = row.pop("_model", None)
            if model is not None:
                dense_models[(optimizer, seed)] = model
            if row["diverged"]:
                logger.warning("%s %s %s target %s seed %d diverged (non-finite loss)", dataset, optimizer, kind, target, seed)
            logger.info(
                "%s %-16s %-12s target %.2f seed %d: sparsity %.3f, test acc %.4f, %.1f s",
                dataset, optimizer, kind, target or 0.0, seed, row["weight_sparsity"], row["test_acc"], row["train_seconds"],
            )
            rows.append(row)
    _attach_dense(rows)
    return rows


def _tune_missing(model_factory, train_data, val_data, val_fraction: float, wanted: Mapping[str, list], lrs: dict, tune_target: float,
                  common: Mapping, tuning: list | None) -> dict[str, dict[str, str]]:  # fmt: skip
    """Tune (in place into ``lrs``) every learning rate ``wanted`` but not given; returns ``{kind: {optimizer: "given" | "tuned"}}``."""
    sources = {kind: {o: "given" for o in lrs[kind]} for kind in KINDS}
    missing = {kind: [o for o in names if o not in lrs[kind]] for kind, names in wanted.items()}
    missing = {kind: names for kind, names in missing.items() if names}
    if not missing:
        return sources
    if val_data is None:
        if not _is_tensor_pair(train_data):
            raise ValueError(f"tuning the learning rates {missing} needs validation data: pass val_data=..., or lrs={{...}} for every optimizer.")
        tune_train, val_data = _validation_split(train_data, val_fraction)
    else:
        tune_train = train_data
    for kind, names in missing.items():
        chosen, tune_rows = tune_learning_rates(model_factory, tune_train, val_data, optimizers=names, sparsity_type=kind, target=tune_target, **common)
        if tuning is not None:
            tuning.extend(tune_rows)
        lrs[kind].update(chosen)
        sources[kind].update({o: "tuned" for o in chosen})
    return sources


def _study_job(shared, job) -> dict:
    """One run of the study (module level, so that worker processes can run it); read from the cache when it is there.

    A dense run's row carries its trained model under ``"_model"`` (popped by the caller).
    """
    setup, lrs, sources, lams, dense_models, (cache, fingerprint) = shared
    kind, optimizer, target, seed = job
    lr, source = lrs[kind][optimizer], sources[kind][optimizer]
    dense_trained = dense_models.get((DENSE_OF[optimizer], seed)) if kind != "dense" else None
    key = cache_key(fingerprint, kind, optimizer, target, seed, lr, lams[optimizer], dense_trained is not None, *_run_settings(setup, kind))
    row, state = load_cached(cache, key, with_state=kind == "dense")
    if row is not None:
        row["lr_source"] = source
        if state is not None:
            with _common.torch_seed(seed):
                row["_model"] = setup.model_factory()
            row["_model"].load_state_dict(state)
        return row
    cpu = time.process_time()
    model = None
    try:
        if kind == "dense":
            row, model = _dense_row(setup, optimizer, lr, source, seed)
        else:
            row = _sparse_row(setup, optimizer, kind, target, lr, source, seed, lams[optimizer], dense_trained)
    except FloatingPointError as exc:  # a diverged run is a result: recorded, not raised
        logger.info("%s %s target %s seed %d diverged: %s", optimizer, kind, target, seed, exc)
        row = _diverged_row(setup, optimizer, kind, target, lr, source, seed, lams[optimizer])
    row["cpu_seconds"] = time.process_time() - cpu
    store_cached(cache, key, row, None if model is None else model.state_dict())
    if model is not None:
        row = {**row, "_model": model}
    return row
