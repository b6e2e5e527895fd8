"""Saving a :func:`spred.train.fit` run after every epoch, and resuming it.

The checkpoint holds the whole run (model, optimizer, scheduler, controller, every
generator, history, best epoch), so a resumed run ends bit for bit like an
uninterrupted one with the same settings. Settings changed on resume apply from there
on: the optimizer's hyper-parameters (:func:`spred.train._optim.apply_hyperparameters`)
and, without a target-sparsity controller, the model's lam are this call's, not the
checkpoint's, and a warning lists what differs.
"""

from __future__ import annotations

import logging
import warnings

import torch

from spred.nn import get_lam, set_lam
from spred.train._checkpoint import acquire_lock, load_checkpoint, release_lock, rng_state, save_checkpoint, set_rng_state
from spred.train._data import LoaderBatches
from spred.train._distributed import rank_seed
from spred.train._guard import check_run
from spred.train._optim import apply_hyperparameters, check_same_optimizer, load_optimizer_state, saved_optimizer_name
from spred.train._state import Progress, Run

logger = logging.getLogger(__name__)


def seed_global(seed: int, device: torch.device) -> None:
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _checkpoint_state(run: Run, prog: Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> dict:
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


def save(run: Run, prog: Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> None:
    """Write the checkpoint, only if everything in it is finite: the only process, or rank 0 with every rank's generator state."""
    # the same weights and optimizer state on every rank: all ranks raise together, before any collective
    check_run(run, prog, epoch=prog.epoch, saved_epoch=prog.epoch - 1, optimizer=True, outputs=True)
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


def _open_main(run: Run, resume: bool):
    """Rank 0's part of :func:`open_checkpoint`: (state or None, lock)."""
    lock = acquire_lock(run.checkpoint)
    try:
        if not run.checkpoint.exists():
            return None, lock
        if not resume:
            raise FileExistsError(
                f"the checkpoint folder {run.checkpoint.parent} already holds a checkpoint ({run.checkpoint.name}) of an "
                "earlier run, which this run would overwrite. Pass resume=True to continue that run, or use another "
                "checkpoint_dir (or delete the file) to start afresh."
            )
        return load_checkpoint(run.checkpoint), lock
    except BaseException:
        release_lock(lock)
        raise


def open_checkpoint(run: Run, resume: bool) -> tuple[dict | None, object]:
    """Take the folder's lock and read the checkpoint to resume from: (state or None, lock or None).

    Refuses a folder that holds a checkpoint when ``resume`` is False (no silent
    overwrite) and a folder another live ``fit`` uses. Data-parallel: rank 0 does it
    and sends the state (or its error) to every rank.
    """
    if run.checkpoint is None:
        return None, None
    if run.dist is None:
        return _open_main(run, resume)
    state, lock, error = None, None, None
    if run.dist.is_main:
        try:
            state, lock = _open_main(run, resume)
        except Exception as exc:  # noqa: BLE001  (re-raised below, after telling the other ranks)
            error = exc
    state, message = run.dist.broadcast_object((state, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"fit stopped: rank 0 could not open the checkpoint {run.checkpoint}: {message}")
    return state, lock


def _restore_rng(state: dict, run: Run, device: torch.device, seed: int) -> None:
    """Each rank's global generator as saved; a rank the interrupted run did not have starts a fresh stream."""
    rank = 0 if run.dist is None else run.dist.rank
    world = 1 if run.dist is None else run.dist.world_size
    saved = state.get("rng_ranks")
    if saved is not None and rank < len(saved):
        set_rng_state(saved[rank], device)
    elif rank == 0:
        set_rng_state(state["rng"], device)
    else:
        seed_global(rank_seed(seed + state["epoch"], rank), device)
    before = state.get("world_size", 1)
    if before != world and run.is_main:
        logger.info(
            "resuming a run of %d process(es) on %d: the batches are the same, the dropout streams of the ranks are not, "
            "and sums are taken in another order (equal up to rounding)", before, world,
        )


def _restore_model_and_optimizer(state: dict, run: Run, device: torch.device) -> list[str]:
    """Load the model, optimizer, scheduler and controller; keep this call's hyper-parameters (and lam). The changes."""
    lam_before = get_lam(run.model) if run.tensors else {}
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"cannot resume from {run.checkpoint}: its model does not fit this one ({str(exc).splitlines()[0]}). Build and sparsify the model as for the interrupted run.") from exc
    fresh = load_optimizer_state(run.optimizer, state["optimizer"], run.checkpoint)
    if run.scheduler is not None and state["scheduler"] is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    if run.controller is not None:
        if state["controller"] is None:
            run.controller.start(run.model, run.optimizer, run.add_penalty)
        else:
            run.controller.load_state_dict(state["controller"], device)
    changes = apply_hyperparameters(run.optimizer, fresh, run.scheduler, keep_lam=run.controller is not None)
    if run.controller is None and lam_before and get_lam(run.model) != lam_before:
        saved = get_lam(run.model)
        changes += [f"lam of {n} {saved[n]:g} -> {lam:g}" for n, lam in lam_before.items() if saved.get(n) != lam]
        set_lam(run.model, lam_before)  # the optimizer's spred groups got it from apply_hyperparameters
    return changes


def restore(state: dict, run: Run, prog: Progress, data_gen: torch.Generator, train, device: torch.device, config: dict) -> None:
    """Continue the run saved in ``state``, with this call's hyper-parameters."""
    saved = state["config"]
    check_same_optimizer(run.optimizer, saved_optimizer_name(saved), run.checkpoint)
    changed = sorted(k for k in set(config) | set(saved) if k != "epochs" and saved.get(k) != config.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed)
        warnings.warn(f"resuming a run with different settings ({diffs}); the new values apply from here on, so the result will not match an uninterrupted run.", UserWarning, stacklevel=4)
    changes = _restore_model_and_optimizer(state, run, device)
    if changes and run.is_main:
        logger.info("resuming with this call's hyper-parameters instead of the checkpoint's: %s", "; ".join(changes))
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
