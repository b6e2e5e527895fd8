"""The one training loop of spred: ``fit`` and ``evaluate``.

Everything that trains a network in spred goes through :func:`fit`: the
experiments, the baselines (plain models train normally) and the masked
fine-tuning after :func:`spred.collapse`. One call = one run: it builds the
optimizer, trains for ``epochs``, evaluates, checkpoints and returns a
:class:`TrainResult`. Its options come in four groups (``_options.py``); the
optimizer in ``_optim.py``, the non-finite guard in ``_guard.py``, saving and resuming
in ``_resume.py``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spred._validation import check_int
from spred.nn import is_sparsified, penalty
from spred.nn._sparsify import sparsified_units
from spred.nn._rules import zero_fraction
from spred.train._checkpoint import checkpoint_path, release_lock
from spred.train._controller import SparsityController
from spred.train._data import as_batches
from spred.train._distributed import Distributed, check_loader, context, default_device, is_wrapped_ddp, loss_scale, rank_seed, unwrap, wrap
from spred.train._evaluate import _autocast, _evaluate_batches, _resolve_device, evaluate
from spred.train._guard import check_run, loss_error
from spred.train._optim import OPTIMIZERS, build_optimizer, build_scheduler
from spred.train._options import Checkpoints, Optim, Runtime, Sparsity, resolve
from spred.train._resume import open_checkpoint, restore, save, seed_global
from spred.train._state import Progress, Run, TrainResult, TrainState

__all__ = ["OPTIMIZERS", "TrainResult", "TrainState", "build_optimizer", "evaluate", "fit"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- masks (fine-tuning with frozen zeros)


def _keep_masks(model: nn.Module, freeze_zeros: bool, mask: Mapping | None) -> dict[str, torch.Tensor] | None:
    """``{parameter name: bool tensor, True where the entry may change}``, or None (types checked by the options)."""
    if mask is None and not freeze_zeros:
        return None
    if is_sparsified(model):
        raise ValueError("freeze_zeros and mask need a plain model: this one has spred factors. Call spred.collapse(model, threshold=...) first and fine-tune the collapsed model.")
    params = dict(model.named_parameters())
    if mask is None:  # the zeros of every weight matrix / filter bank (not biases or norm scales)
        return {n: p.detach() != 0 for n, p in params.items() if p.dim() >= 2 and bool((p == 0).any())}
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


# --------------------------------------------------------------------------- one step, one epoch


def _forward_loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean data loss of one (local) batch, the forward pass under autocast when asked.

    The penalty is not part of it: it is computed outside autocast, on the float32 factors.
    """
    with _autocast(run.amp, x.device):
        out = run.net(x)
        if len(y) == 0:  # this rank's slice of a batch smaller than the number of ranks: take part in DDP's all-reduce with zero gradients
            return out.sum() * 0.0
        return run.loss_fn(out, y)


def _global_loss(run: Run, loss: torch.Tensor, local: int) -> tuple[torch.Tensor, float, float, int]:
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


def _step(run: Run, prog: Progress, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int) -> tuple[float, int]:
    """One optimizer step on batch ``i`` of ``epoch``; (sum of the losses, samples) of the global batch."""
    model, opt = run.model, run.optimizer
    opt.zero_grad(set_to_none=True)
    loss, value, batch_sum, batch_n = _global_loss(run, _forward_loss(run, x, y), len(y))
    if not math.isfinite(value):  # the same value on every rank: all ranks stop together
        raise loss_error(value, epoch, i, prog.step + 1, run.lr, run.checkpoint, prog.epoch)
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
    return batch_sum, batch_n


def _train_epoch(run: Run, prog: Progress, batches, n_batches: int, epoch: int) -> float:
    run.net.train()
    loss_sum, n = 0.0, 0
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{run.epochs}", leave=False, unit="batch") if run.progress else None
    try:
        for i, (x, y) in enumerate(batches if bar is None else bar, 1):
            batch_sum, batch_n = _step(run, prog, x, y, epoch, i)
            loss_sum += batch_sum
            n += batch_n
            prog.last_inputs = x
            if bar is not None and i % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / n:.4g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return loss_sum / n


@torch.no_grad()
def _sparsity(run: Run) -> float:
    """Fraction of the sparsified weights (of all parameters for a plain model) that are zero at the run's threshold.

    The same number as ``spred.sparsity_report(model, threshold=threshold)``'s
    ``sparsified_sparsity`` (``sparsity``), without the per-tensor report.
    """
    if not run.tensors:
        return zero_fraction(run.model.parameters(), run.threshold)
    # grouped tensors: whole groups, as collapse decides
    return zero_fraction([t.value() for t in run.tensors], run.threshold, [t.spred for t in run.tensors])


def _record(run: Run, prog: Progress, epoch: int, train_loss: float, val: dict | None, seconds: float) -> dict:
    lams = [t.spred.lam for t in run.tensors]
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": None if val is None else val["loss"],
        "val_acc": None if val is None else val["acc"],
        "lam": sum(lams) / len(lams) if lams else None,
        "sparsity": _sparsity(run) if run.history else None,  # the one costly field: skipped without history
        "target": None if run.controller is None else run.controller.wanted(prog.step),
        "lr": run.lr,
        "step": prog.step,
        "time_s": seconds,
    }


def _state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in model.state_dict().items()}


def _track_best(run: Run, prog: Progress, record: dict) -> bool:
    """Update the best validation loss; True when early stopping says stop."""
    if record["val_loss"] is None:
        return False
    if run.controller is not None and not run.controller.ramp_done(prog.step):
        return False  # while lam still ramps up, the loss rises by design: only the hold phase counts
    if record["val_loss"] < prog.best_loss:
        prog.best_loss, prog.best_epoch, prog.bad_epochs = record["val_loss"], record["epoch"], 0
        if run.patience is not None:
            prog.best_state = _state_copy(run.model)
    else:
        prog.bad_epochs += 1
    return run.patience is not None and prog.bad_epochs >= run.patience


def _run_epoch(run: Run, prog: Progress, train, val, epoch: int, data_gen: torch.Generator) -> None:
    """Train one epoch, check the weights, evaluate, record, track the best epoch and call the callbacks."""
    t0 = time.perf_counter()
    train_loss = _train_epoch(run, prog, train.epoch(data_gen, epoch), len(train), epoch)
    # the last step's loss was finite, but the step itself may have overflowed. Without history (the tight
    # loops of the selector: one step per epoch) the weights are checked before a checkpoint and on return only.
    if run.history:
        check_run(run, prog, epoch=epoch, saved_epoch=prog.epoch)
    val_metrics = None if val is None else _evaluate_batches(run.model, val, run.loss_fn, run.dist, run.amp)
    prog.epoch = epoch
    record = _record(run, prog, epoch, train_loss, val_metrics, time.perf_counter() - t0)
    if run.history:
        prog.history.append(record)
    else:
        prog.history[:] = [record]
    early = _track_best(run, prog, record)
    state = TrainState(run.model, run.optimizer, epoch, prog.step, prog.history)
    asked = any([bool(cb(state)) for cb in run.callbacks])  # a list: every callback runs
    if run.dist is not None:
        asked = run.dist.any(asked)  # a callback that stops one rank stops all of them
    prog.stopped = early or asked
    if run.is_main:
        _log_epoch(run, record, early if prog.stopped else None)


def _log_epoch(run: Run, record: dict, early: bool | None) -> None:
    """The epoch summary at INFO; ``early`` says why training stops (None: it goes on)."""
    sparsity = "-" if record["sparsity"] is None else f"{100 * record['sparsity']:.2f}%"
    logger.info(
        "epoch %d/%d  train loss %.4g  val loss %s  val acc %s  sparsity %s  lam %s  %.1fs",
        record["epoch"], run.epochs, record["train_loss"], _fmt(record["val_loss"], ".4g"), _fmt(record["val_acc"], ".4f"),
        sparsity, _fmt(record["lam"], ".3g"), record["time_s"],
    )
    if early is not None:
        reason = f"no better validation loss in {run.patience} epochs" if early else "asked by a callback"
        logger.info("stopping after epoch %d: %s", record["epoch"], reason)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# --------------------------------------------------------------------------- setting up a run


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


def _check_call(model, epochs, loss_fn, batch_size, val_data, callbacks, sparsity: Sparsity, runtime: Runtime) -> tuple[Callable, tuple]:
    """Validate fit's own arguments (the groups are checked by ``resolve``); (loss_fn, callbacks)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of fit must be a torch.nn.Module. Got {type(model).__name__} instead.")
    check_int(epochs, "epochs", "fit", 1)
    check_int(batch_size, "batch_size", "fit", 1)
    if runtime.early_stopping is not None and val_data is None:
        raise ValueError(f"early_stopping={runtime.early_stopping} needs validation data: pass val_data=(X_val, y_val) or a DataLoader.")
    if loss_fn is None:
        loss_fn = F.cross_entropy
    elif not callable(loss_fn):
        raise TypeError(f"The 'loss_fn' parameter of fit must be a callable (output, target) -> loss. Got {loss_fn!r} instead.")
    callbacks = tuple(callbacks)
    if not all(callable(cb) for cb in callbacks):
        raise TypeError(f"The 'callbacks' parameter of fit must be a sequence of callables (TrainState) -> bool | None. Got {callbacks!r} instead.")
    if sparsity.target is not None and not is_sparsified(model):
        raise ValueError("target_sparsity needs a model sparsified by spred.sparsify: lam is what the controller adapts.")
    return loss_fn, callbacks


def _data(model, train_data, val_data, batch_size: int, runtime: Runtime):
    """(inner model, device, process group, training batches, validation batches or None)."""
    inner = unwrap(model)
    device = _training_device(runtime.device, model, inner)
    dist = context(device)
    rank, world = (0, 1) if dist is None else (dist.rank, dist.world_size)
    for data, name in ((train_data, "train_data"), (val_data, "val_data")):
        if dist is not None and isinstance(data, DataLoader):
            check_loader(data, name, world)
    train = as_batches(train_data, name="train_data", who="fit", batch_size=batch_size, device=device, shuffle=True, rank=rank, world_size=world)
    val = None if val_data is None else as_batches(val_data, name="val_data", who="fit", batch_size=runtime.eval_batch_size, device=device, shuffle=False, rank=rank, world_size=world)
    return inner, device, dist, train, val


def _setup(model, train, epochs: int, batch_size: int, loss_fn, callbacks, optim: Optim, sparsity: Sparsity, checkpoints: Checkpoints, runtime: Runtime, inner, device, dist) -> tuple[Run, dict]:
    """The fixed parts of the run (optimizer, schedule, masks, controller) and the config saved with its checkpoints."""
    net = wrap(model, dist, device)  # DDP makes every rank start from rank 0's weights
    keep = _keep_masks(inner, sparsity.freeze_zeros, sparsity.mask)
    if keep is not None:
        _apply_masks(inner, keep)
    opt, add_penalty = build_optimizer(inner, optim.optimizer, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, gate_lr=optim.gate_lr)
    n_batches = _count_batches(train, dist)
    controller = None
    if sparsity.target is not None:
        sync = None if dist is None else dist.broadcast_float  # lam: rank 0's value on every rank
        controller = SparsityController(sparsity.target, threshold=sparsity.threshold, steps_per_epoch=n_batches, total_epochs=epochs, sync=sync)
    run = Run(
        inner, opt, build_scheduler(optim.scheduler, opt, epochs * n_batches), loss_fn, add_penalty, keep, controller, epochs,
        runtime.progress and (dist is None or dist.is_main), None if checkpoints.dir is None else checkpoint_path(checkpoints.dir),
        tuple(sparsified_units(inner)), net=net, dist=dist, amp=runtime.autocast, threshold=sparsity.threshold,
        patience=runtime.early_stopping, callbacks=callbacks, history=runtime.history,
    )
    config = {
        "epochs": epochs, "optimizer": optim.optimizer if isinstance(optim.optimizer, str) else type(opt).__name__, "lr": optim.lr,
        "batch_size": batch_size, "seed": runtime.seed, "threshold": sparsity.threshold, "n_batches": n_batches,
    }
    if runtime.autocast is not None:  # absent from the checkpoints of full-precision runs, as before
        config["autocast"] = str(runtime.autocast).removeprefix("torch.")
    if optim.gate_lr is not None:  # absent when the gates train at lr, as before
        config["gate_lr"] = optim.gate_lr
    return run, config


def _train(run: Run, train, val, device: torch.device, seed: int, resume: bool, config: dict) -> Progress:
    """The epochs of the run (resumed from its checkpoint when asked), inside a forked global generator."""
    prog = Progress()
    rank = 0 if run.dist is None else run.dist.rank
    lock = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            seed_global(rank_seed(seed, rank), device)  # dropout: a distinct stream per rank; rank 0 = one process
            data_gen = torch.Generator().manual_seed(seed)  # the same permutation on every rank, split by rank
            state, lock = open_checkpoint(run, resume)
            if state is not None:
                restore(state, run, prog, data_gen, train, device, config)
                if run.is_main:
                    logger.info("resumed from %s after epoch %d", run.checkpoint, prog.epoch)
            elif run.controller is not None:
                run.controller.start(run.model, run.optimizer, run.add_penalty)
            for epoch in range(prog.epoch + 1, run.epochs + 1):
                if prog.stopped:
                    break
                _run_epoch(run, prog, train, val, epoch, data_gen)
                if run.checkpoint is not None:
                    save(run, prog, data_gen, train, device, config)  # checks the weights, optimizer state and outputs first
            if run.checkpoint is None and prog.last_inputs is not None:  # before returning: the outputs too
                check_run(run, prog, epoch=prog.epoch, saved_epoch=0, outputs=True)
    finally:
        release_lock(lock)
    return prog



# --------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    train_data,
    *,
    epochs: int,
    loss_fn: Callable | None = None,
    batch_size: int = 128,
    val_data=None,
    optim: Optim | str | type[torch.optim.Optimizer] | torch.optim.Optimizer | None = None,
    sparsity: Sparsity | None = None,
    checkpoints: Checkpoints | None = None,
    runtime: Runtime | None = None,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    **legacy,
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

    The options come in four groups, each a frozen dataclass of ``spred.train``::

        fit(model, (X, y), epochs=10,
            optim=Optim("adam", lr=1e-3),
            sparsity=Sparsity(target=0.9, threshold=1e-3),
            checkpoints=Checkpoints("runs/a", resume=True),
            runtime=Runtime(seed=1, progress=False))

    Parameters
    ----------
    model : nn.Module
        Trained in place (moved to the device). May already be wrapped in
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
    loss_fn : callable(output, target) -> scalar, default=cross-entropy
        Mean loss over the batch. For regression with sklearn's scaling use
        ``lambda out, y: 0.5 * ((out.squeeze(-1) - y) ** 2).mean()`` (then ``lam = alpha``).
    batch_size : int, default=128
        For ``(X, y)`` tensors: the global batch, split across the ranks when
        data-parallel (the same batches as one process).
    val_data : (X, y) tuple or DataLoader, optional
        Evaluated after every epoch (``val_loss``, ``val_acc`` in the history).
    optim : Optim, or an optimizer name, class or instance, optional
        The optimizer (``"sgd"``, ``"adam"``, ``"adamw"``, ``"adagrad"``, a class or an
        instance; see :func:`build_optimizer`), ``lr``, ``momentum`` (SGD only),
        ``weight_decay`` (of the parameters that are *not* spred factors: their decay is
        lam), ``scheduler`` (None, ``"cosine"`` or ``callable(optimizer,
        total_steps)``, stepped after every optimizer step) and ``gate_lr`` (the
        learning rate of the gates of ``groups="channels"``, see
        :func:`spred.param_groups`; None: ``lr``). A plain name, class or
        instance means ``Optim(optimizer=that)``. An instance is used as is (lr,
        momentum and weight_decay are then ignored); :func:`spred.check_optimizer`
        warns if it does not solve the L1 problem. Default: ``Optim()`` (SGD, lr 0.1,
        momentum 0.9).
    sparsity : Sparsity, optional
        ``threshold`` (``|v| <= threshold`` counts as zero for the controller and the
        history; with SGD a zeroed weight reaches exact 0 only after about
        ``ln(|v| / 1e-45) / (2 lr lam)`` steps, and with Adam it hovers near
        ``lr**2``, so a small positive threshold is the practical choice; end with
        :func:`spred.collapse` at the same threshold), ``target`` (a float in (0, 1) or
        a :class:`TargetSparsity`: adapt lam so that this fraction of the sparsified
        weights is zero at the end; needs ``threshold > 0``; see ``docs/training.md``),
        ``freeze_zeros`` (masked fine-tuning of a *plain*, collapsed model: every weight
        with ndim >= 2 that is exactly 0 at the start stays exactly 0; the optimizer
        must be fresh, a name or class) and ``mask`` (explicit masks by parameter name,
        True = trainable; implies ``freeze_zeros``).
    checkpoints : Checkpoints, optional
        ``dir``: write ``checkpoint.pt`` there after every epoch (atomically, and only
        when every value in it is finite): model, optimizer, scheduler, controller,
        generator states, history, epoch. ``resume``: continue from it if it exists
        (start afresh if not); on CPU a resumed run ends bit for bit like an
        uninterrupted one with the same settings. Build and sparsify the model the
        same way before resuming. Settings changed on resume apply from there on: lr,
        momentum, weight decay and the other hyper-parameters of the optimizer, and,
        without a target sparsity, the model's lam, are this call's (a warning and an
        INFO log say what changed); another optimizer class is refused. A folder that
        holds a checkpoint is refused without ``resume=True`` (no silent overwrite), and
        so is a folder in use by another running ``fit`` (a ``checkpoint.pt.lock`` file
        while it runs).
    runtime : Runtime, optional
        ``seed`` (the shuffling generator and, inside ``fit`` only, the global
        generator used by dropout and by DataLoaders without their own generator; the
        global generator is forked and restored afterwards; the model's initial weights
        are not touched), ``device`` (default: where the model's parameters are; under a
        NCCL process group a model still on the CPU goes to ``cuda:$LOCAL_RANK``),
        ``progress`` (a tqdm bar per epoch; epoch summaries go to the
        ``spred.train`` loggers at INFO), ``autocast`` (None or ``"bfloat16"``: the
        forward pass and the loss under ``torch.autocast`` in bfloat16; parameters,
        factors, gradients, optimizer state, penalty and every zero decision stay in
        the parameters' dtype; float16 is refused: it needs loss scaling),
        ``eval_batch_size``, ``early_stopping`` (patience in epochs on the validation
        loss, needs ``val_data``; the best weights are restored at the end; with a
        target sparsity only epochs of the hold phase count) and ``history`` (False:
        skip the per-epoch sparsity count and keep only the last epoch's record, with
        ``sparsity`` None, for callers that run many short fits).
    callbacks : sequence of callable(TrainState) -> bool or None
        Called after every epoch, after evaluation and before the checkpoint is
        written; returning True stops training. Data-parallel, they run on every
        rank, see the unwrapped model, and True on any rank stops all of them.
    legacy : flat keywords of earlier releases
        ``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``scheduler``, ``gate_lr`` (the
        fields of :class:`Optim`), ``target_sparsity``, ``threshold``,
        ``freeze_zeros``, ``mask`` (:class:`Sparsity`; ``target_sparsity`` is its
        ``target``), ``checkpoint_dir``, ``resume`` (:class:`Checkpoints`;
        ``checkpoint_dir`` is its ``dir``), ``seed``, ``device``, ``progress``,
        ``autocast``, ``eval_batch_size``, ``early_stopping``, ``history``
        (:class:`Runtime`). They still work and mean the same; the groups are the
        documented spelling. Giving a group and one of its flat keywords together is a
        TypeError, and so is an unknown keyword.

    Returns
    -------
    TrainResult

    Raises
    ------
    FloatingPointError
        When the training loss, or after an epoch the weights (or, before a
        checkpoint, the optimizer state), are not finite; the message names the epoch
        and step, and the last checkpoint, whose values are all finite, stays intact:
        lower the learning rate and resume.
    FileExistsError
        When ``checkpoints.dir`` holds a checkpoint and ``resume`` is False, or
        another running ``fit`` uses the folder.

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
    >>> from spred.train import Runtime, fit
    >>> X, y = torch.randn(256, 20), torch.randint(0, 2, (256,))
    >>> model = spred.sparsify(torch.nn.Linear(20, 2), lam=1e-3)
    >>> result = fit(model, (X, y), epochs=2, runtime=Runtime(progress=False))
    >>> len(result.history)
    2
    """
    start_time = time.perf_counter()
    optim, sparsity, checkpoints, runtime = resolve(optim, sparsity, checkpoints, runtime, legacy)
    loss_fn, callbacks = _check_call(model, epochs, loss_fn, batch_size, val_data, callbacks, sparsity, runtime)
    inner, device, dist, train, val = _data(model, train_data, val_data, batch_size, runtime)
    run, config = _setup(model, train, epochs, batch_size, loss_fn, callbacks, optim, sparsity, checkpoints, runtime, inner, device, dist)
    prog = _train(run, train, val, device, runtime.seed, checkpoints.resume, config)
    if runtime.early_stopping is not None and prog.best_state is not None:
        inner.load_state_dict(prog.best_state)
    best_epoch = prog.best_epoch if prog.best_epoch is not None else (prog.history[-1]["epoch"] if prog.history else None)
    return TrainResult(prog.history, model, best_epoch, time.perf_counter() - start_time)
