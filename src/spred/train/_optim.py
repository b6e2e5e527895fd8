"""The optimizer and the schedule of :func:`spred.train.fit`, and what a resume does to them.

On resume, the optimizer's *state* (momentum buffers, Adam moments, step counts) comes
from the checkpoint, but its *hyper-parameters* (lr, momentum, weight decay, betas, ...)
are those of the resuming call: :func:`apply_hyperparameters` puts them back after
``load_state_dict`` (which would otherwise silently restore the old ones), so that
"lower the learning rate and resume" does what it says.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from spred._validation import param_error
from spred.nn import check_optimizer, is_sparsified, param_groups
from spred.nn._optim import decays_decoupled

logger = logging.getLogger(__name__)

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}


def optimizer_class(optimizer, name: str = "optimizer", who: str = "fit") -> type[torch.optim.Optimizer]:
    """The class of an optimizer name, class or instance; the one check of fit's ``optimizer``."""
    expected = f"one of {sorted(OPTIMIZERS)}, a torch.optim.Optimizer class or instance"
    if isinstance(optimizer, torch.optim.Optimizer):
        return type(optimizer)
    if isinstance(optimizer, str):
        cls = OPTIMIZERS.get(optimizer.lower())
        if cls is None:
            raise param_error(ValueError, name, who, expected, optimizer)
        return cls
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer
    raise param_error(TypeError, name, who, expected, optimizer)


def build_optimizer(
    model: nn.Module,
    optimizer: str | type[torch.optim.Optimizer] | torch.optim.Optimizer = "sgd",
    *,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    gate_lr: float | None = None,
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
    gate_lr : float, optional
        Learning rate of the channel gates (``groups="channels"``; :func:`spred.param_groups`);
        None: ``lr``. Ignored for an optimizer instance, like ``lr``.

    Returns
    -------
    optimizer : torch.optim.Optimizer
    add_penalty : bool
    """
    cls = optimizer_class(optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        spred_groups = [g for g in optimizer.param_groups if g.get("spred")]
        if spred_groups:
            check_optimizer(optimizer)
        add = bool(spred_groups) and all(g.get("penalty_in_loss") or (decays_decoupled(optimizer) and g.get("weight_decay", 0.0) == 0) for g in spred_groups)
        return optimizer, add
    sparsified = is_sparsified(model)
    add = sparsified and decays_decoupled(cls)  # decoupled decay is not L1: the penalty goes into the loss
    if sparsified:
        groups = param_groups(model, weight_decay, penalty_in_loss=add, gate_lr=gate_lr)
    else:
        if gate_lr is not None:
            raise ValueError("The 'gate_lr' parameter of fit sets the learning rate of channel gates, and the model is not sparsified; sparsify it with groups='channels' or leave gate_lr=None.")
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay, "spred": False}]
    kwargs = {"lr": lr, "momentum": momentum} if issubclass(cls, torch.optim.SGD) else {"lr": lr}
    built = cls(groups, **kwargs)
    if sparsified:
        check_optimizer(built)  # e.g. SGD whose lr is too large for the decay of channel gates
    return built, add


def build_scheduler(scheduler, optimizer: torch.optim.Optimizer, total_steps: int):
    """None, cosine annealing over ``total_steps``, or ``scheduler(optimizer, total_steps)`` (validated by the options)."""
    if scheduler is None:
        return None
    if scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return scheduler(optimizer, total_steps)


# --------------------------------------------------------------------------- resume

# entries of a param group that are not hyper-parameters (or that spred sets itself)
_NOT_HYPER = {"params", "names", "spred", "gate", "penalty_in_loss", "lam", "initial_lr"}


def saved_optimizer_name(config: dict) -> str | None:
    """The class name of the optimizer a checkpoint was written with (from its ``config``)."""
    name = config.get("optimizer_class") or config.get("optimizer")
    if isinstance(name, str) and name.lower() in OPTIMIZERS:
        return OPTIMIZERS[name.lower()].__name__
    return name


_HINT = "Resume with the optimizer of the interrupted run, or start a fresh run in another checkpoint_dir."


def check_same_optimizer(optimizer: torch.optim.Optimizer, saved_name: str | None, path) -> None:
    """A clear ValueError when the checkpoint was written with another optimizer class (torch would say ``KeyError: 'step'``)."""
    name = type(optimizer).__name__
    if saved_name is not None and saved_name != name:
        raise ValueError(f"cannot resume from {path}: it was written by a run with optimizer {saved_name}, and this call uses {name}. {_HINT}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path) -> list[dict]:
    """Load the checkpoint's optimizer state; return the hyper-parameters this call built (before the load)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"cannot resume from {path}: its optimizer state does not fit this optimizer's parameter groups ({exc}). {_HINT}") from exc
    return fresh


def apply_hyperparameters(optimizer: torch.optim.Optimizer, fresh: list[dict], scheduler, *, keep_lam: bool) -> list[str]:
    """Put this call's hyper-parameters back into ``optimizer`` after ``load_state_dict``; the changes, for the log.

    A changed lr scales the group's (scheduled) lr, its ``initial_lr`` and the
    scheduler's ``base_lrs`` by ``new / old``, so a schedule continues at the new
    scale. The weight decay of spred groups comes from lam (:func:`spred.param_groups`):
    with ``keep_lam`` (the controller owns lam) the checkpoint's value stays.
    """
    changes = []
    for i, (group, new) in enumerate(zip(optimizer.param_groups, fresh)):
        old_lr = group.get("initial_lr", group["lr"]) if scheduler is not None else group["lr"]
        new_lr = new.get("initial_lr", new["lr"])
        if new_lr != old_lr:
            ratio = new_lr / old_lr
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] = new_lr
            if scheduler is not None and i < len(getattr(scheduler, "base_lrs", [])):
                scheduler.base_lrs[i] *= ratio
            changes.append(f"group {i}: lr {old_lr:g} -> {new_lr:g}")
        for key, value in new.items():
            if key in _NOT_HYPER or key == "lr" or (keep_lam and group.get("spred") and key == "weight_decay"):
                continue
            if key in group and group[key] != value:
                changes.append(f"group {i}: {key} {group[key]!r} -> {value!r}")
            group[key] = value
        if group.get("spred") and not keep_lam:
            group["lam"] = new.get("lam", group.get("lam"))
    return changes
