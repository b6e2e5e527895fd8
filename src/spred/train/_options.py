"""The option groups of :func:`spred.train.fit` and their validation (the one place for each group).

``fit`` takes its options in four frozen dataclasses: :class:`Optim` (what steps),
:class:`Sparsity` (what counts as zero, the target-sparsity controller, masks),
:class:`Checkpoints` (where the run is saved and whether it resumes) and
:class:`Runtime` (seed, device, progress, precision, evaluation, early stopping,
history). The flat keywords of earlier releases (``lr=``, ``target_sparsity=``,
``checkpoint_dir=``, ...) are the legacy spelling: :func:`resolve` maps them onto the
same groups, so both spellings run the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real

import torch

from spred._validation import check_bool, check_float, check_int, param_error
from spred.train._controller import TargetSparsity
from spred.train._optim import optimizer_class


@dataclass(frozen=True)
class Optim:
    """How :func:`~spred.train.fit` steps: the optimizer and its hyper-parameters.

    Parameters
    ----------
    optimizer : {"sgd", "adam", "adamw", "adagrad"}, optimizer class or instance, default="sgd"
        See :func:`~spred.train.build_optimizer`. An instance is used as is (``lr``,
        ``momentum`` and ``weight_decay`` are then ignored).
    lr : float, default=0.1
    momentum : float, default=0.9
        SGD only.
    weight_decay : float, default=0.0
        Weight decay of the parameters that are *not* spred factors (their decay is lam).
    scheduler : {None, "cosine"} or callable(optimizer, total_steps) -> LRScheduler
        Stepped after every optimizer step; saved in the checkpoint.
    gate_lr : float, optional
        Learning rate of the gates of ``groups="channels"`` (:func:`spred.param_groups`'
        ``gate_lr``); every other parameter gets ``lr``. It changes how fast gates close,
        not the minimisers. None: ``lr`` for all.
    """

    optimizer: str | type[torch.optim.Optimizer] | torch.optim.Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str | Callable | None = None
    gate_lr: float | None = None


@dataclass(frozen=True)
class Sparsity:
    """What counts as zero, the target-sparsity controller and masked fine-tuning.

    Parameters
    ----------
    target : float in (0, 1) or TargetSparsity, optional
        Adapt lam so that this fraction of the sparsified weights is zero at the end
        (a float means ``TargetSparsity(target)``); needs ``threshold > 0``.
    threshold : float, default=0.0
        ``|v| <= threshold`` counts as zero for the controller and the history.
    freeze_zeros : bool, default=False
        Masked fine-tuning of a *plain* (collapsed) model: weights (ndim >= 2) that are
        exactly 0 at the start stay 0.
    mask : mapping of str to bool tensor, optional
        Explicit masks by parameter name (True = trainable); implies ``freeze_zeros``.
    """

    target: float | TargetSparsity | None = None
    threshold: float = 0.0
    freeze_zeros: bool = False
    mask: Mapping[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Checkpoints:
    """Where :func:`~spred.train.fit` saves the run after every epoch, and whether it resumes.

    Parameters
    ----------
    dir : path, optional
        Folder of ``checkpoint.pt``. A folder that already holds a checkpoint is
        refused unless ``resume=True`` (no silent overwrite), and so is a folder that
        another running ``fit`` uses.
    resume : bool, default=False
        Continue from the checkpoint in ``dir`` if there is one (start afresh if not).
    """

    dir: str | os.PathLike | None = None
    resume: bool = False


@dataclass(frozen=True)
class Runtime:
    """How :func:`~spred.train.fit` runs: seed, device, bar, precision, evaluation, early stopping, history.

    Parameters
    ----------
    seed : int, default=0
        Seeds the shuffling and, inside ``fit`` only, the global generator (dropout).
    device : torch.device or str, optional
        Default: where the model's parameters are (under NCCL: ``cuda:$LOCAL_RANK``).
    progress : bool, default=True
        Show a tqdm bar per epoch.
    autocast : {None, "bfloat16"} or torch.bfloat16, default=None
        Forward pass under ``torch.autocast`` in bfloat16 (float16 is refused).
    eval_batch_size : int, default=1024
    early_stopping : int, optional
        Patience in epochs on the validation loss (needs ``val_data``).
    history : bool, default=True
        Keep one record per epoch. False: skip the per-epoch sparsity count and keep
        only the last epoch's record (its ``sparsity`` is None), for callers that run
        many short fits and read only the weights.
    """

    seed: int = 0
    device: torch.device | str | None = None
    progress: bool = True
    autocast: str | torch.dtype | None = None
    eval_batch_size: int = 1024
    early_stopping: int | None = None
    history: bool = True


GROUPS = {"optim": Optim, "sparsity": Sparsity, "checkpoints": Checkpoints, "runtime": Runtime}
# the legacy flat keywords of fit: keyword -> (group, field)
FLAT = {
    **{k: ("optim", k) for k in ("optimizer", "lr", "momentum", "weight_decay", "scheduler", "gate_lr")},
    "target_sparsity": ("sparsity", "target"), "threshold": ("sparsity", "threshold"),
    "freeze_zeros": ("sparsity", "freeze_zeros"), "mask": ("sparsity", "mask"),
    "checkpoint_dir": ("checkpoints", "dir"), "resume": ("checkpoints", "resume"),
    **{k: ("runtime", k) for k in ("seed", "device", "progress", "autocast", "eval_batch_size", "early_stopping", "history")},
}
_FLAT_NAME = {(group, name): flat for flat, (group, name) in FLAT.items()}


def resolve(optim, sparsity, checkpoints, runtime, legacy: dict) -> tuple[Optim, Sparsity, Checkpoints, Runtime]:
    """The four validated groups from fit's group arguments and its legacy flat keywords.

    A group given as an object and one of its flat keywords together is a TypeError, and
    so is an unknown keyword. Errors name the flat keyword and ``fit`` for the legacy
    spelling, the field and the class for the grouped one.
    """
    unknown = sorted(set(legacy) - set(FLAT))
    if unknown:
        raise TypeError(f"fit got unexpected keyword argument(s) {', '.join(map(repr, unknown))}. Options go in the groups optim=Optim(...), sparsity=Sparsity(...), checkpoints=Checkpoints(...) and runtime=Runtime(...).")
    plain = optim is not None and not isinstance(optim, Optim)
    if plain:
        optim = Optim(optimizer=optim)  # a plain name, class or instance: its errors name fit's 'optimizer'
    given = {"optim": optim, "sparsity": sparsity, "checkpoints": checkpoints, "runtime": runtime}
    out = []
    for group, cls in GROUPS.items():
        flat = {FLAT[k][1]: v for k, v in legacy.items() if FLAT[k][0] == group}
        obj = given[group]
        if obj is not None and flat:
            names = ", ".join(_FLAT_NAME[group, f] for f in flat)
            raise TypeError(f"fit got both {group}={cls.__name__}(...) and the flat keyword(s) {names} of the same group: put them into {cls.__name__}(...), or use only the flat keywords.")
        if obj is not None and not isinstance(obj, cls):
            raise param_error(TypeError, group, "fit", f"a spred.train.{cls.__name__} or None", obj)
        out.append(_CHECKS[group](cls(**flat) if obj is None else obj, obj is None or (group == "optim" and plain)))
    return tuple(out)


def _who(obj, legacy: bool) -> Callable[[str], tuple[str, str]]:
    """``name -> (parameter name, caller)`` for the messages: the flat keyword of fit, or the field of the group."""
    group = next(g for g, cls in GROUPS.items() if isinstance(obj, cls))
    return lambda field: (_FLAT_NAME[group, field], "fit") if legacy else (field, type(obj).__name__)


def check_optim(o: Optim, legacy: bool = False) -> Optim:
    """``o`` with its numbers as floats, or the error of its first bad field."""
    w = _who(o, legacy)
    optimizer_class(o.optimizer, *w("optimizer"))
    lr = check_float(o.lr, *w("lr"), 0.0, low_open=True)
    momentum = check_float(o.momentum, *w("momentum"), 0.0, 1.0, high_open=True)
    weight_decay = check_float(o.weight_decay, *w("weight_decay"), 0.0)
    gate_lr = check_float(o.gate_lr, *w("gate_lr"), 0.0, low_open=True, optional=True)
    s = o.scheduler
    if not (s is None or s == "cosine" or (callable(s) and not isinstance(s, str))):
        raise param_error(ValueError, *w("scheduler"), "None, 'cosine' or a callable (optimizer, total_steps) -> LRScheduler", s)
    return dataclasses.replace(o, lr=lr, momentum=momentum, weight_decay=weight_decay, gate_lr=gate_lr)


def check_sparsity(s: Sparsity, legacy: bool = False) -> Sparsity:
    """``s`` with ``target`` as a :class:`TargetSparsity` (or None), or the error of its first bad field."""
    w = _who(s, legacy)
    target = s.target
    if isinstance(target, Real) and not isinstance(target, bool):
        target = TargetSparsity(float(target))
    elif target is not None and not isinstance(target, TargetSparsity):
        raise param_error(TypeError, *w("target"), "None, a float in (0, 1) or a TargetSparsity", target)
    threshold = check_float(s.threshold, *w("threshold"), 0.0)
    check_bool(s.freeze_zeros, *w("freeze_zeros"))
    if s.mask is not None and not isinstance(s.mask, Mapping):
        raise TypeError(f"The '{w('mask')[0]}' parameter of {w('mask')[1]} must be a mapping from parameter names to bool tensors (True = trainable). Got {type(s.mask).__name__} instead.")
    return dataclasses.replace(s, target=target, threshold=threshold)


def check_checkpoints(c: Checkpoints, legacy: bool = False) -> Checkpoints:
    """``c`` as given, or the error of its first bad field."""
    w = _who(c, legacy)
    if c.dir is not None and not isinstance(c.dir, (str, os.PathLike)):
        raise param_error(TypeError, *w("dir"), "a path (str or os.PathLike) or None", c.dir)
    check_bool(c.resume, *w("resume"))
    if c.resume and c.dir is None:
        raise ValueError(f"resume=True needs {w('dir')[0]}: the folder where the checkpoint of the interrupted run was written.")
    return c


def check_runtime(r: Runtime, legacy: bool = False) -> Runtime:
    """``r`` with ``autocast`` as a dtype (or None) and ``progress`` as a bool."""
    w = _who(r, legacy)
    check_int(r.seed, *w("seed"), 0)
    check_int(r.eval_batch_size, *w("eval_batch_size"), 1)
    if r.early_stopping is not None:
        check_int(r.early_stopping, *w("early_stopping"), 1)
    check_bool(r.history, *w("history"))
    if r.device is not None:
        parse_device(r.device, *w("device"))  # checked here, kept as given (the messages show it so)
    return dataclasses.replace(r, autocast=check_autocast(r.autocast, *w("autocast")), progress=bool(r.progress))


_CHECKS = {"optim": check_optim, "sparsity": check_sparsity, "checkpoints": check_checkpoints, "runtime": check_runtime}


def parse_device(device, name: str = "device", who: str = "fit") -> torch.device:
    """``torch.device(device)``, or a ValueError in the house format."""
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"The '{name}' parameter of {who} must be a torch.device or a string such as 'cpu' or 'cuda:0'. Got {device!r} instead.") from exc


AUTOCAST = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def check_autocast(autocast, name: str = "autocast", who: str = "fit") -> torch.dtype | None:
    """``None`` or ``torch.bfloat16`` from the ``autocast`` option."""
    if autocast is None:
        return None
    if isinstance(autocast, str) and autocast.lower() in AUTOCAST:
        return AUTOCAST[autocast.lower()]
    if autocast is torch.bfloat16:
        return autocast
    expected = "None or 'bfloat16'"
    if autocast is torch.float16 or (isinstance(autocast, str) and autocast.lower() in ("float16", "fp16", "half")):
        raise ValueError(
            f"The '{name}' parameter of {who} must be {expected}. Got {autocast!r} instead: float16 needs loss "
            "scaling (torch.amp.GradScaler) against gradient underflow, which fit does not do. Use 'bfloat16' (same "
            "exponent range as float32, no scaling needed)."
        )
    if isinstance(autocast, (str, torch.dtype)):
        raise param_error(ValueError, name, who, expected, autocast)
    raise param_error(TypeError, name, who, "None, 'bfloat16' or torch.bfloat16", autocast)
