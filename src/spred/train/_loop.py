"""The one training loop of spred: ``fit`` and ``evaluate``.

Everything that trains a network in spred goes through :func:`fit`: the
experiments, the baselines (plain models train normally) and the masked
fine-tuning after :func:`spred.collapse`. One call = one run: it builds the
optimizer, trains for ``epochs``, evaluates, checkpoints and returns a
:class:`TrainResult`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spred.nn import check_optimizer, is_sparsified, param_groups, penalty, sparsified_tensors
from spred.nn._rules import zero_fraction
from spred.nn._sparsify import SparsifiedTensor, decays_decoupled
from spred.train._checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from spred.train._controller import SparsityController, TargetSparsity
from spred.train._data import LoaderBatches, as_batches
from spred.train._distributed import Distributed, check_loader, context, default_device, is_wrapped_ddp, loss_scale, rank_seed, unwrap, wrap

logger = logging.getLogger(__name__)  # provisional: the train helper's version replaces this at merge

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One record per epoch (1-based ``epoch``): ``train_loss`` (mean data loss over
        the epoch, without the penalty), ``val_loss`` and ``val_acc`` (None without
        validation data; ``val_acc`` None for non-classification losses), ``lam``
        (mean over sparsified tensors; None for a plain model), ``sparsity`` (fraction
        of sparsified weights with ``|v| <= threshold``; for a plain model, of all
        parameters), ``target`` (the controller's wanted sparsity, or None), ``lr``,
        ``step`` (optimizer steps so far) and ``time_s`` (seconds for the epoch).
    model : nn.Module
        The trained model (the object passed in; with early stopping it holds the best weights).
    best_epoch : int
        The epoch with the lowest validation loss (during the controller's hold phase
        when a target sparsity is set); the last epoch when there is no validation data.
    wall_time_s : float
        Seconds spent in this call.
    """

    history: list[dict]
    model: nn.Module
    best_epoch: int | None
    wall_time_s: float


@dataclass
class TrainState:
    """What a callback sees at the end of each epoch (``history[-1]`` is the new record)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    step: int
    history: list[dict]


@dataclass
class _Progress:
    """Everything of a run that changes while it trains and is saved in the checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict | None = None


# --------------------------------------------------------------------------- validation


def _check_int(value, name: str, minimum: int, who: str = "fit") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"The '{name}' parameter of {who} must be an int >= {minimum}. Got {value!r} of type {type(value).__name__} instead.")
    if value < minimum:
        raise ValueError(f"The '{name}' parameter of {who} must be an int >= {minimum}. Got {value!r} instead.")
    return value


def _check_float(value, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = True, who: str = "fit") -> float:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"The '{name}' parameter of {who} must be a float in the range {interval}. Got {value!r} of type {type(value).__name__} instead.")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok or math.isnan(value):
        raise ValueError(f"The '{name}' parameter of {who} must be a float in the range {interval}. Got {value!r} instead.")
    return float(value)


def _resolve_device(device, model: nn.Module, who: str = "fit") -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"The 'device' parameter of {who} must be a torch.device or a string such as 'cpu' or 'cuda:0'. Got {device!r} instead.") from exc


# --------------------------------------------------------------------------- optimizer


def build_optimizer(
    model: nn.Module,
    optimizer: str | type[torch.optim.Optimizer] | torch.optim.Optimizer = "sgd",
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> tuple[torch.optim.Optimizer, bool]:
    """The optimizer :func:`fit` uses, and whether ``spred.penalty(model)`` must be added to the loss.

    For a sparsified model the parameter groups come from :func:`spred.param_groups`:
    the spred factors get coupled weight decay ``lam`` (exactly ``lam * ||v||_1`` with
    SGD, Adam and Adagrad) and every other parameter gets ``weight_decay``. AdamW
    decays *decoupled* from the gradient, which is not the L1 problem, so for AdamW
    (or any ``torch.optim.AdamW`` subclass) the spred groups get ``weight_decay=0``
    and the returned flag says to add :func:`spred.penalty` to the loss; the other
    parameters keep AdamW's decoupled ``weight_decay``. A plain model gets one group
    with ``weight_decay``.

    Parameters
    ----------
    model : nn.Module
    optimizer : {"sgd", "adam", "adamw", "adagrad"}, optimizer class or optimizer instance
        A class is called as ``cls(groups, lr=lr)`` (plus ``momentum`` for SGD and its
        subclasses). An instance is returned as is, after :func:`spred.check_optimizer`
        (which warns about decoupled decay on spred groups); the penalty is then added
        to the loss only if it is decoupled and all its spred groups have ``weight_decay=0``.
    lr : float, default=0.1
    momentum : float, default=0.9
        SGD only.
    weight_decay : float, default=0.0
        Weight decay of the parameters that are not spred factors.

    Returns
    -------
    optimizer : torch.optim.Optimizer
    add_penalty : bool
    """
    sparsified = is_sparsified(model)
    if isinstance(optimizer, torch.optim.Optimizer):
        spred_groups = [g for g in optimizer.param_groups if g.get("spred")]
        if spred_groups:
            check_optimizer(optimizer)
        add = bool(spred_groups) and all(g.get("penalty_in_loss") or (decays_decoupled(optimizer) and g.get("weight_decay", 0.0) == 0) for g in spred_groups)
        return optimizer, add
    if isinstance(optimizer, str):
        cls = OPTIMIZERS.get(optimizer.lower())
        if cls is None:
            raise ValueError(f"The 'optimizer' parameter of fit must be one of {sorted(OPTIMIZERS)}, a torch.optim.Optimizer class or instance. Got {optimizer!r} instead.")
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
    else:
        raise TypeError(f"The 'optimizer' parameter of fit must be one of {sorted(OPTIMIZERS)}, a torch.optim.Optimizer class or instance. Got {optimizer!r} of type {type(optimizer).__name__} instead.")
    add = sparsified and decays_decoupled(cls)  # decoupled decay is not L1: the penalty goes into the loss
    if sparsified:
        groups = param_groups(model, weight_decay, penalty_in_loss=add)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay, "spred": False}]
    kwargs = {"lr": lr, "momentum": momentum} if issubclass(cls, torch.optim.SGD) else {"lr": lr}
    return cls(groups, **kwargs), add


def _build_scheduler(scheduler, optimizer, total_steps: int):
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if callable(scheduler) and not isinstance(scheduler, str):
        return scheduler(optimizer, total_steps)
    raise ValueError(f"The 'scheduler' parameter of fit must be None, 'cosine' or a callable (optimizer, total_steps) -> LRScheduler. Got {scheduler!r} instead.")


# --------------------------------------------------------------------------- masks (fine-tuning with frozen zeros)


def _keep_masks(model: nn.Module, freeze_zeros: bool, mask: Mapping | None) -> dict[str, torch.Tensor] | None:
    """``{parameter name: bool tensor, True where the entry may change}``, or None."""
    if not isinstance(freeze_zeros, bool):
        raise TypeError(f"The 'freeze_zeros' parameter of fit must be a bool. Got {freeze_zeros!r} instead.")
    if mask is None and not freeze_zeros:
        return None
    if is_sparsified(model):
        raise ValueError("freeze_zeros and mask need a plain model: this one has spred factors. Call spred.collapse(model, threshold=...) first and fine-tune the collapsed model.")
    params = dict(model.named_parameters())
    if mask is None:  # the zeros of every weight matrix / filter bank (not biases or norm scales)
        return {n: p.detach() != 0 for n, p in params.items() if p.dim() >= 2 and bool((p == 0).any())}
    if not isinstance(mask, Mapping):
        raise TypeError(f"The 'mask' parameter of fit must be a mapping from parameter names to bool tensors (True = trainable). Got {type(mask).__name__} instead.")
    keep = {}
    for name, m in mask.items():
        if name not in params:
            raise ValueError(f"The 'mask' parameter of fit names '{name}', which is not a parameter of the model (parameters: {list(params)[:8]}...).")
        m = torch.as_tensor(m)
        if m.shape != params[name].shape:
            raise ValueError(f"The 'mask' for '{name}' has shape {tuple(m.shape)} but the parameter has shape {tuple(params[name].shape)}.")
        keep[name] = m.to(device=params[name].device, dtype=torch.bool)
    return keep


@torch.no_grad()
def _apply_masks(model: nn.Module, keep: dict[str, torch.Tensor], grads: bool = False) -> None:
    params = dict(model.named_parameters())
    for name, k in keep.items():
        p = params[name]
        target = p.grad if grads else p
        if target is not None:
            target.masked_fill_(~k, 0.0)


# --------------------------------------------------------------------------- evaluation


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
    _check_int(batch_size, "batch_size", 1, "evaluate")
    dev = _resolve_device(device, model, "evaluate")
    batches = as_batches(data, name="data", who="evaluate", batch_size=batch_size, device=dev, shuffle=False)
    return _evaluate_batches(model, batches, loss_fn)


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _Run:
    """The fixed parts of one ``fit`` call, handed to the per-epoch function."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: Callable
    add_penalty: bool
    keep: dict | None
    controller: SparsityController | None
    epochs: int
    progress: bool
    checkpoint: Path | None
    tensors: tuple[SparsifiedTensor, ...]  # the spred tensors (empty for a plain model); fixed during fit
    net: nn.Module  # what the forward pass calls: the model, or its DistributedDataParallel wrapper
    dist: Distributed | None = None  # the process group, or None for one process
    amp: torch.dtype | None = None  # autocast dtype of the forward pass (bfloat16), or None
    history: bool = True  # provisional: the train helper's version replaces this at merge

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows the bar and writes the checkpoint (rank 0, or the only process)."""
        return self.dist is None or self.dist.is_main


def _non_finite(value: float, epoch: int, step_in_epoch: int, run: _Run, prog: _Progress) -> FloatingPointError:
    lr = run.optimizer.param_groups[0]["lr"]
    saved = f"The last checkpoint ({run.checkpoint}, end of epoch {prog.epoch}) is intact." if run.checkpoint and prog.epoch else "No checkpoint was written for this run yet."
    return FloatingPointError(
        f"fit stopped: the training loss is {value} at epoch {epoch}, step {step_in_epoch} (optimizer step {prog.step + 1}). "
        f"Lower the learning rate (lr={lr:g}) or scale the inputs (standardise features, normalise images). {saved}"
    )


def _autocast(amp: torch.dtype | None, device: torch.device):
    """``torch.autocast`` to ``amp`` on ``device``'s type, or nothing."""
    return contextlib.nullcontext() if amp is None else torch.autocast(device_type=device.type, dtype=amp)


def _forward_loss(run: _Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean data loss of one (local) batch, the forward pass under autocast when asked.

    The penalty is not part of it: it is computed outside autocast, on the float32 factors.
    """
    with _autocast(run.amp, x.device):
        out = run.net(x)
        if len(y) == 0:  # this rank's slice of a batch smaller than the number of ranks: take part in DDP's all-reduce with zero gradients
            return out.sum() * 0.0
        return run.loss_fn(out, y)


def _global_loss(run: _Run, loss: torch.Tensor, local: int) -> tuple[torch.Tensor, float, float, int]:
    """(loss to differentiate, mean loss over the global batch, its sum, global batch size).

    One process: the loss as it is. Data-parallel: one all-reduce of (sum, count); the
    local mean is scaled so that DDP's gradient average is the global mean's gradient.
    """
    value = float(loss.detach())  # one device sync per step
    if run.dist is None:
        return loss, value, value * local, local
    total, count = run.dist.sum([value * local, float(local)])
    count = int(count)
    scale = loss_scale(local, count, run.dist.world_size)
    return (loss if scale == 1.0 else loss * scale), total / count, total, count


def _train_epoch(run: _Run, prog: _Progress, batches, n_batches: int, epoch: int) -> float:
    model, opt = run.model, run.optimizer
    run.net.train()
    loss_sum, n = 0.0, 0
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{run.epochs}", leave=False, unit="batch") if run.progress else None
    try:
        for i, (x, y) in enumerate(batches if bar is None else bar, 1):
            opt.zero_grad(set_to_none=True)
            loss, value, batch_sum, batch_n = _global_loss(run, _forward_loss(run, x, y), len(y))
            if not math.isfinite(value):  # the same value on every rank: all ranks stop together
                raise _non_finite(value, epoch, i, run, prog)
            (loss + penalty(model) if run.add_penalty else loss).backward()
            if run.keep:
                _apply_masks(model, run.keep, grads=True)
            opt.step()
            if run.keep:
                _apply_masks(model, run.keep)
            if run.scheduler is not None:
                run.scheduler.step()
            prog.step += 1
            if run.controller is not None:
                run.controller.step(model, opt, prog.step, run.add_penalty)
            loss_sum += batch_sum
            n += batch_n
            if bar is not None and i % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / n:.4g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return loss_sum / n


@torch.no_grad()
def _sparsity(run: _Run, threshold: float) -> float:
    """Fraction of the sparsified weights (of all parameters for a plain model) that are zero at ``threshold``.

    The same number as ``spred.sparsity_report(model, threshold=threshold)``'s
    ``sparsified_sparsity`` (``sparsity``), without the per-tensor report.
    """
    if not run.tensors:
        return zero_fraction(run.model.parameters(), threshold)
    # grouped tensors: whole groups, as collapse decides
    return zero_fraction([getattr(t.module, t.tensor_name) for t in run.tensors], threshold, [t.spred for t in run.tensors])


def _record(run: _Run, prog: _Progress, epoch: int, train_loss: float, val: dict | None, threshold: float, seconds: float) -> dict:
    lams = [t.spred.lam for t in run.tensors]
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": None if val is None else val["loss"],
        "val_acc": None if val is None else val["acc"],
        "lam": sum(lams) / len(lams) if lams else None,
        "sparsity": _sparsity(run, threshold) if run.history else None,  # provisional: the train helper's version replaces this at merge
        "target": None if run.controller is None else run.controller.wanted(prog.step),
        "lr": run.optimizer.param_groups[0]["lr"],
        "step": prog.step,
        "time_s": seconds,
    }


def _state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in model.state_dict().items()}


def _track_best(run: _Run, prog: _Progress, record: dict, patience: int | None) -> bool:
    """Update the best validation loss; True when early stopping says stop."""
    if record["val_loss"] is None:
        return False
    if run.controller is not None and not run.controller.ramp_done(prog.step):
        return False  # while lam still ramps up, the loss rises by design: only the hold phase counts
    if record["val_loss"] < prog.best_loss:
        prog.best_loss, prog.best_epoch, prog.bad_epochs = record["val_loss"], record["epoch"], 0
        if patience is not None:
            prog.best_state = _state_copy(run.model)
    else:
        prog.bad_epochs += 1
    return patience is not None and prog.bad_epochs >= patience


def _checkpoint_state(run: _Run, prog: _Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> dict:
    from spred import __version__

    loader_gen = train.generator if isinstance(train, LoaderBatches) else None
    return {
        "spred_version": __version__,
        "config": config,
        "epoch": prog.epoch,
        "step": prog.step,
        "history": prog.history,
        "stopped": prog.stopped,
        "best": {"loss": prog.best_loss, "epoch": prog.best_epoch, "bad_epochs": prog.bad_epochs, "state": prog.best_state},
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "controller": None if run.controller is None else run.controller.state_dict(),
        "rng": rng_state(device),
        "data_rng": data_gen.get_state(),
        "loader_rng": None if loader_gen is None else loader_gen.get_state(),
        "mask": run.keep,
    }


def _save(run: _Run, prog: _Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> None:
    """Write the checkpoint: the only process, or rank 0 with every rank's generator state; then all ranks meet."""
    if run.dist is None:
        save_checkpoint(_checkpoint_state(run, prog, data_gen, train, device, config), run.checkpoint)
        return
    rngs = run.dist.gather_object(rng_state(device))  # dropout streams differ by rank: keep them all
    error = None
    if run.dist.is_main:
        try:
            state = _checkpoint_state(run, prog, data_gen, train, device, config)
            state["world_size"], state["rng_ranks"] = run.dist.world_size, rngs
            save_checkpoint(state, run.checkpoint)
        except Exception as exc:  # noqa: BLE001  (re-raised below, after telling the other ranks)
            error = exc
    if run.dist.any(error is not None):  # also the barrier: no rank goes on before the file is complete
        if error is not None:
            raise error
        raise RuntimeError(f"fit stopped: rank 0 could not write the checkpoint {run.checkpoint} (see rank 0's error).")


def _load(run: _Run) -> dict | None:
    """The checkpoint to resume from, or None. Data-parallel: rank 0 reads it and sends it to every rank."""
    if run.dist is None:
        return load_checkpoint(run.checkpoint) if run.checkpoint.exists() else None
    state, error = None, None
    if run.dist.is_main:
        try:
            state = load_checkpoint(run.checkpoint) if run.checkpoint.exists() else None
        except Exception as exc:  # noqa: BLE001  (re-raised below, after telling the other ranks)
            error = exc
    state, message = run.dist.broadcast_object((state, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"fit stopped: rank 0 could not read the checkpoint {run.checkpoint}: {message}")
    return state


def _restore_rng(state: dict, run: _Run, device: torch.device, seed: int) -> None:
    """Each rank's global generator as saved; a rank the interrupted run did not have starts a fresh stream."""
    rank = 0 if run.dist is None else run.dist.rank
    world = 1 if run.dist is None else run.dist.world_size
    saved = state.get("rng_ranks")
    if saved is not None and rank < len(saved):
        set_rng_state(saved[rank], device)
    elif rank == 0:
        set_rng_state(state["rng"], device)
    else:
        _seed_global(rank_seed(seed + state["epoch"], rank), device)
    before = state.get("world_size", 1)
    if before != world and run.is_main:
        logger.info(
            "resuming a run of %d process(es) on %d: the batches are the same, the dropout streams of the ranks are not, "
            "and sums are taken in another order (equal up to rounding)", before, world,
        )


def _restore(state: dict, run: _Run, prog: _Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> None:
    saved = state["config"]
    changed = sorted(k for k in set(config) | set(saved) if k != "epochs" and saved.get(k) != config.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed)
        warnings.warn(f"resuming a run with different settings ({diffs}); the result will not match an uninterrupted run.", UserWarning, stacklevel=3)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    if run.controller is not None:
        if state["controller"] is None:
            run.controller.start(run.model, run.optimizer, run.add_penalty)
        else:
            run.controller.load_state_dict(state["controller"], device)
    if run.keep is not None and state["mask"] is not None:
        run.keep.clear()
        run.keep.update({k: v.to(device) for k, v in state["mask"].items()})
    _restore_rng(state, run, device, config["seed"])
    data_gen.set_state(state["data_rng"])
    loader_gen = train.generator if isinstance(train, LoaderBatches) else None
    if loader_gen is not None and state["loader_rng"] is not None:
        loader_gen.set_state(state["loader_rng"])
    best = state["best"]
    prog.epoch, prog.step, prog.history, prog.stopped = state["epoch"], state["step"], list(state["history"]), state["stopped"]
    prog.best_loss, prog.best_epoch, prog.bad_epochs, prog.best_state = best["loss"], best["epoch"], best["bad_epochs"], best["state"]


def _run_epoch(run: _Run, prog: _Progress, train, val, epoch: int, threshold: float, patience, callbacks, data_gen) -> None:
    """Train one epoch, evaluate, record, track the best epoch and call the callbacks."""
    t0 = time.perf_counter()
    train_loss = _train_epoch(run, prog, train.epoch(data_gen, epoch), len(train), epoch)
    val_metrics = None if val is None else _evaluate_batches(run.model, val, run.loss_fn, run.dist, run.amp)
    prog.epoch = epoch
    record = _record(run, prog, epoch, train_loss, val_metrics, threshold, time.perf_counter() - t0)
    if not run.history:  # provisional: the train helper's version replaces this at merge
        prog.history.clear()
    prog.history.append(record)
    early = _track_best(run, prog, record, patience)
    state = TrainState(run.model, run.optimizer, epoch, prog.step, prog.history)
    asked = any([bool(cb(state)) for cb in callbacks])  # a list: every callback runs
    if run.dist is not None:
        asked = run.dist.any(asked)  # a callback that stops one rank stops all of them
    prog.stopped = early or asked
    if not run.is_main:
        return
    logger.info(
        "epoch %d/%d  train loss %.4g  val loss %s  val acc %s  sparsity %s%%  lam %s  %.1fs",
        epoch, run.epochs, record["train_loss"], _fmt(record["val_loss"], ".4g"), _fmt(record["val_acc"], ".4f"),
        _fmt(record["sparsity"] and 100 * record["sparsity"], ".2f"), _fmt(record["lam"], ".3g"), record["time_s"],
    )
    if prog.stopped:
        reason = f"no better validation loss in {patience} epochs" if early else "asked by a callback"
        logger.info("stopping after epoch %d: %s", epoch, reason)


AUTOCAST = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _check_autocast(autocast) -> torch.dtype | None:
    """``None`` or ``torch.bfloat16`` from fit's ``autocast`` parameter."""
    if autocast is None:
        return None
    if isinstance(autocast, str) and autocast.lower() in AUTOCAST:
        return AUTOCAST[autocast.lower()]
    if autocast is torch.bfloat16:
        return autocast
    if autocast is torch.float16 or (isinstance(autocast, str) and autocast.lower() in ("float16", "fp16", "half")):
        raise ValueError(
            f"The 'autocast' parameter of fit must be None or 'bfloat16'. Got {autocast!r} instead: float16 needs loss "
            "scaling (torch.amp.GradScaler) against gradient underflow, which fit does not do. Use 'bfloat16' (same "
            "exponent range as float32, no scaling needed)."
        )
    if isinstance(autocast, (str, torch.dtype)):
        raise ValueError(f"The 'autocast' parameter of fit must be None or 'bfloat16'. Got {autocast!r} instead.")
    raise TypeError(f"The 'autocast' parameter of fit must be None, 'bfloat16' or torch.bfloat16. Got {autocast!r} of type {type(autocast).__name__} instead.")


def _training_device(device, model: nn.Module, inner: nn.Module) -> torch.device:
    """Where fit trains; the model (not a DDP wrapper, which stays where it was built) is moved there."""
    if is_wrapped_ddp(model):
        here = _resolve_device(None, inner)
        want = None if device is None else _resolve_device(device, inner)
        if want is not None and (want.type != here.type or want.index not in (None, here.index)):
            raise ValueError(
                f"The 'device' parameter of fit is {device!r} but the DistributedDataParallel model was wrapped on {here}: "
                "a wrapped model cannot move. Leave device=None, or pass the plain model and let fit wrap it."
            )
        return here
    device = _resolve_device(device if device is not None else default_device(inner), inner)
    inner.to(device)
    return device


def _count_batches(train, dist: Distributed | None) -> int:
    """Batches per epoch; under DDP it must be the same on every rank (each step all-reduces)."""
    try:
        n_batches = len(train)
    except TypeError as exc:
        raise TypeError("The 'train_data' DataLoader of fit must have a length (a map-style dataset); the schedule and the controller count steps per epoch.") from exc
    counts = [n_batches] if dist is None else dist.gather_object(n_batches)
    if len(set(counts)) > 1:
        raise ValueError(
            f"The 'train_data' of fit gives a different number of batches per epoch on each rank ({counts}); every "
            "optimizer step is a collective operation, so they must agree. Use a DistributedSampler (it pads to equal "
            "shares) or (X, y) tensors."
        )
    if n_batches == 0:
        raise ValueError("The 'train_data' DataLoader of fit yields no batches (len(loader) == 0).")
    return n_batches


def _seed_global(seed: int, device: torch.device) -> None:
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fit(
    model: nn.Module,
    train_data,
    *,
    epochs: int,
    optimizer: str | type[torch.optim.Optimizer] | torch.optim.Optimizer = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    loss_fn: Callable | None = None,
    batch_size: int = 128,
    val_data=None,
    target_sparsity: float | TargetSparsity | None = None,
    threshold: float = 0.0,
    early_stopping: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    freeze_zeros: bool = False,
    mask: Mapping[str, torch.Tensor] | None = None,
    scheduler: str | Callable | None = None,
    eval_batch_size: int = 1024,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    autocast: str | torch.dtype | None = None,
    history: bool = True,  # provisional: the train helper's version replaces this at merge
) -> TrainResult:
    """Train ``model`` on ``train_data``: the one training loop of spred.

    For a model sparsified by :func:`spred.sparsify` the optimizer minimises::

        loss_fn(model(X), y) + sum_tensors lam * ||v||_1   (+ weight_decay/2 ||other||^2)

    (group lasso for ``groups="out"/"in"``), through coupled weight decay on the
    factors (:func:`spred.param_groups`) for SGD, Adam and Adagrad. AdamW's decay is
    decoupled and would not solve this problem, so with ``optimizer="adamw"`` the
    spred groups get ``weight_decay=0`` and :func:`spred.penalty` is added to the
    loss (the other parameters keep AdamW's decoupled ``weight_decay``). A model that
    is not sparsified trains normally (the baselines use the same loop).

    Under ``torchrun`` (an initialised ``torch.distributed`` process group with more
    than one process) ``fit`` trains data-parallel with ``DistributedDataParallel``
    and gives the single-process result on the same global batches (up to the order
    of floating-point sums): see *Data-parallel training* below and
    ``docs/scaling_out.md``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to ``device``). May already be wrapped in
        ``DistributedDataParallel`` (built after :func:`spred.sparsify`); it is then
        used as it is and does not move.
    train_data : (X, y) tuple of tensors or DataLoader
        Tensors are moved to the device once and batched with a seeded
        ``torch.randperm`` per epoch (no DataLoader overhead); data-parallel, every
        rank holds the tensors and computes its slice of each batch. A DataLoader is
        used as it is; it must yield ``(inputs, targets)`` (data-parallel: give it a
        ``DistributedSampler``, or a warning says the work is repeated).
    epochs : int
        Total number of epochs (including those of a resumed checkpoint).
    optimizer : {"sgd", "adam", "adamw", "adagrad"}, optimizer class or instance, default="sgd"
        See :func:`build_optimizer`. An instance is used as is (lr, momentum and
        weight_decay are then ignored); :func:`spred.check_optimizer` warns if it
        does not solve the L1 problem.
    lr : float, default=0.1
    momentum : float, default=0.9
        SGD only.
    weight_decay : float, default=0.0
        Weight decay of the parameters that are *not* spred factors (biases, norms,
        dense layers). The factors' decay is their ``lam``.
    loss_fn : callable(output, target) -> scalar, default=cross-entropy
        Mean loss over the batch. For regression with sklearn's scaling use
        ``lambda out, y: 0.5 * ((out.squeeze(-1) - y) ** 2).mean()`` (then ``lam = alpha``).
    batch_size : int, default=128
        For ``(X, y)`` tensors: the global batch, split across the ranks when
        data-parallel (the same batches as one process).
    val_data : (X, y) tuple or DataLoader, optional
        Evaluated after every epoch (``val_loss``, ``val_acc`` in the history).
    target_sparsity : float in (0, 1) or TargetSparsity, optional
        Adapt lam during training so that this fraction of the sparsified weights is
        zero (``|v| <= threshold``) at the end; a float means ``TargetSparsity(target)``.
        Needs ``threshold > 0``. See :class:`TargetSparsity` for the schedule and the
        update rule, and ``docs/training.md`` for what it achieves.
    threshold : float, default=0.0
        ``|v| <= threshold`` counts as zero for the controller and the history. With
        SGD a zeroed weight underflows to exact 0 only after about
        ``ln(|v| / 1e-45) / (2 lr lam)`` steps, and with Adam it hovers near ``lr**2``,
        so a small positive threshold is the practical choice; end with
        :func:`spred.collapse` at the same threshold and check :func:`spred.kkt_residual`.
    early_stopping : int, optional
        Patience in epochs on the validation loss (needs ``val_data``); the best
        weights are restored at the end. With a target sparsity only epochs of the
        hold phase count.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there after every epoch (atomically): model,
        optimizer, scheduler, controller, generator states, history, epoch.
    resume : bool, default=False
        Continue from ``checkpoint_dir/checkpoint.pt`` if it exists (start afresh if
        not). On CPU a resumed run ends with the same weights, bit for bit, as an
        uninterrupted one with the same seed. Build and sparsify the model the same
        way before resuming.
    seed : int, default=0
        Seeds the shuffling generator and, inside ``fit`` only (the global generator
        is forked and restored afterwards), the global generator used by dropout and
        by DataLoaders without their own generator. The model's initial weights are
        not touched (use ``spred.models.build(name, seed=...)``).
    device : torch.device or str, optional
        Default: where the model's parameters are; under a NCCL process group a
        model still on the CPU goes to ``cuda:$LOCAL_RANK``.
    progress : bool, default=True
        Show a tqdm bar per epoch. Epoch summaries go to ``logging.getLogger("spred")`` at INFO.
    freeze_zeros : bool, default=False
        Masked fine-tuning of a *plain* (collapsed) model: every weight with ndim >= 2
        that is exactly 0 at the start stays exactly 0 (its gradient is masked and it
        is re-zeroed after every step). Biases and norm parameters are not frozen.
        The optimizer must be fresh (built here, so no old momentum or Adam state
        moves the pruned weights): pass a name or class, not an instance built for
        the sparsified model.
    mask : mapping of str to bool tensor, optional
        Explicit masks by parameter name (True = trainable, False = kept at 0);
        implies ``freeze_zeros``.
    scheduler : {None, "cosine"} or callable(optimizer, total_steps) -> LRScheduler
        Stepped after every optimizer step; saved in the checkpoint.
    eval_batch_size : int, default=1024
    callbacks : sequence of callable(TrainState) -> bool or None
        Called after every epoch, after evaluation and before the checkpoint is
        written; returning True stops training. Data-parallel, they run on every
        rank, see the unwrapped model, and True on any rank stops all of them.
    autocast : {None, "bfloat16"} or torch.bfloat16, default=None
        Run the forward pass (and the loss) under ``torch.autocast`` in bfloat16 on
        the training device (CPU or CUDA). The parameters, the spred factors, their
        gradients, the optimizer state, the penalty and ``|v|`` (hence every zero
        decision) stay in the parameters' dtype. float16 is refused: it needs loss
        scaling, which ``fit`` does not do.
    history : bool, default=True
        Keep one record per epoch. False: skip the per-epoch sparsity count and keep
        only the last epoch's record (its ``sparsity`` is None).

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        When the training loss is not finite; the message names the epoch and step,
        and the last checkpoint stays intact.

    Notes
    -----
    *Data-parallel training.* When ``torch.distributed`` is initialised with
    ``world_size > 1``, the model is wrapped in ``DistributedDataParallel`` (rank 0's
    weights are broadcast), each rank computes its share of every global batch, and
    its mean loss is scaled so that DDP's gradient average is the gradient of the
    global mean. The spred penalty is coupled weight decay (or
    :func:`spred.penalty`, identical on every rank), so the L1 problem is unchanged.
    The losses and accuracies in the history are sums over all ranks; lam is
    broadcast from rank 0 after every controller update; rank 0 writes the
    checkpoint (with every rank's generator state) while the others wait, and on
    ``resume`` reads it and sends it to the other ranks, so a run can resume on any
    number of processes. Only rank 0 shows the bar and logs. Rank r seeds dropout
    with its own stream (rank 0 with ``seed``). BatchNorm computes per-rank
    statistics; use ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for global ones.

    Examples
    --------
    >>> import torch, spred
    >>> from spred.train import fit
    >>> X, y = torch.randn(256, 20), torch.randint(0, 2, (256,))
    >>> model = spred.sparsify(torch.nn.Linear(20, 2), lam=1e-3)
    >>> result = fit(model, (X, y), epochs=2, progress=False)
    >>> len(result.history)
    2
    """
    start_time = time.perf_counter()
    who = "fit"
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of fit must be a torch.nn.Module. Got {type(model).__name__} instead.")
    epochs = _check_int(epochs, "epochs", 1)
    lr = _check_float(lr, "lr", 0.0, lo_open=True)
    momentum = _check_float(momentum, "momentum", 0.0, 1.0)
    weight_decay = _check_float(weight_decay, "weight_decay", 0.0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size", 1)
    threshold = _check_float(threshold, "threshold", 0.0)
    seed = _check_int(seed, "seed", 0)
    if early_stopping is not None:
        _check_int(early_stopping, "early_stopping", 1)
        if val_data is None:
            raise ValueError(f"early_stopping={early_stopping} needs validation data: pass val_data=(X_val, y_val) or a DataLoader.")
    if loss_fn is None:
        loss_fn = F.cross_entropy
    elif not callable(loss_fn):
        raise TypeError(f"The 'loss_fn' parameter of fit must be a callable (output, target) -> loss. Got {loss_fn!r} instead.")
    if not isinstance(history, bool):  # provisional: the train helper's version replaces this at merge
        raise TypeError(f"The 'history' parameter of fit must be a bool. Got {history!r} instead.")
    if not isinstance(resume, bool):
        raise TypeError(f"The 'resume' parameter of fit must be a bool. Got {resume!r} instead.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir: the folder where the checkpoint of the interrupted run was written.")
    callbacks = tuple(callbacks)
    if not all(callable(cb) for cb in callbacks):
        raise TypeError(f"The 'callbacks' parameter of fit must be a sequence of callables (TrainState) -> bool | None. Got {callbacks!r} instead.")
    if isinstance(target_sparsity, Real) and not isinstance(target_sparsity, bool):
        target_sparsity = TargetSparsity(float(target_sparsity))
    elif target_sparsity is not None and not isinstance(target_sparsity, TargetSparsity):
        raise TypeError(f"The 'target_sparsity' parameter of fit must be None, a float in (0, 1) or a TargetSparsity. Got {target_sparsity!r} instead.")
    if target_sparsity is not None and not is_sparsified(model):
        raise ValueError("target_sparsity needs a model sparsified by spred.sparsify: lam is what the controller adapts.")

    amp = _check_autocast(autocast)
    inner = unwrap(model)
    device = _training_device(device, model, inner)
    dist = context(device)
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    for data, name in ((train_data, "train_data"), (val_data, "val_data")):
        if dist is not None and isinstance(data, DataLoader):
            check_loader(data, name, world)
    train = as_batches(train_data, name="train_data", who=who, batch_size=batch_size, device=device, shuffle=True, rank=rank, world_size=world)
    val = None if val_data is None else as_batches(val_data, name="val_data", who=who, batch_size=eval_batch_size, device=device, shuffle=False, rank=rank, world_size=world)
    net = wrap(model, dist, device)  # DDP makes every rank start from rank 0's weights
    keep = _keep_masks(inner, freeze_zeros, mask)
    if keep is not None:
        _apply_masks(inner, keep)
    opt, add_penalty = build_optimizer(inner, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n_batches = _count_batches(train, dist)
    controller = None
    if target_sparsity is not None:
        sync = None if dist is None else dist.broadcast_float  # lam: rank 0's value on every rank
        controller = SparsityController(target_sparsity, threshold=threshold, steps_per_epoch=n_batches, total_epochs=epochs, sync=sync)
    run = _Run(
        inner, opt, _build_scheduler(scheduler, opt, epochs * n_batches), loss_fn, add_penalty, keep, controller, epochs,
        progress and (dist is None or dist.is_main), None if checkpoint_dir is None else checkpoint_path(checkpoint_dir),
        tuple(sparsified_tensors(inner)), net=net, dist=dist, amp=amp, history=history,
    )
    config = {
        "epochs": epochs, "optimizer": optimizer if isinstance(optimizer, str) else type(opt).__name__, "lr": lr,
        "batch_size": batch_size, "seed": seed, "threshold": threshold, "n_batches": n_batches,
    }
    if amp is not None:  # absent from the checkpoints of full-precision runs, as before
        config["autocast"] = str(amp).removeprefix("torch.")
    prog = _Progress()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _seed_global(rank_seed(seed, rank), device)  # dropout: a distinct stream per rank; rank 0 = one process
        data_gen = torch.Generator().manual_seed(seed)  # the same permutation on every rank, split by rank
        state = _load(run) if resume else None
        if state is not None:
            _restore(state, run, prog, data_gen, train, device, config)
            if run.is_main:
                logger.info("resumed from %s after epoch %d", run.checkpoint, prog.epoch)
        elif controller is not None:
            controller.start(inner, opt, add_penalty)
        for epoch in range(prog.epoch + 1, epochs + 1):
            if prog.stopped:
                break
            _run_epoch(run, prog, train, val, epoch, threshold, early_stopping, callbacks, data_gen)
            if run.checkpoint is not None:
                _save(run, prog, data_gen, train, device, config)
    if early_stopping is not None and prog.best_state is not None:
        inner.load_state_dict(prog.best_state)
    best_epoch = prog.best_epoch if prog.best_epoch is not None else (prog.history[-1]["epoch"] if prog.history else None)
    return TrainResult(prog.history, model, best_epoch, time.perf_counter() - start_time)
