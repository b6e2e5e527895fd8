"""What the optimizer sees of a sparsified model: its parameter groups (weight decay = the penalty), the penalty for
decoupled optimizers, and ``lam`` read and changed during training."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from spred._validation import check_float, param_error
from spred.nn._channels import ChannelGroup
from spred.nn._sparsify import SparsifiedTensor, _first_matches, _matches, _require, sparsified_tensors

def decays_decoupled(optimizer, group: Mapping | None = None) -> bool:
    """Whether ``optimizer`` (an instance or a class) applies weight decay decoupled from the gradient.

    True for ``torch.optim.AdamW``, its subclasses and other classes named ``AdamW``, and for a parameter group (or,
    without ``group``, any group of an instance) with ``decoupled_weight_decay=True``
    (``Adam(decoupled_weight_decay=True)``). The one test spred uses everywhere.
    """
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    if issubclass(cls, torch.optim.AdamW) or any(c.__name__ == "AdamW" for c in cls.__mro__):
        return True
    if group is not None:
        return bool(group.get("decoupled_weight_decay", False))
    return not isinstance(optimizer, type) and any(g.get("decoupled_weight_decay", False) for g in optimizer.param_groups)


def param_groups(
    model: nn.Module, weight_decay: float = 0.0, *, optimizer=None, penalty_in_loss: bool = False, gate_lr: float | None = None
) -> list[dict]:
    """Optimizer parameter groups that turn weight decay into the spred penalty.

    Every spred factor gets its tensor's ``lam`` as weight decay (the gates of
    ``groups="channels"`` get ``lam * cbar^(2/(D-1))``, their group weight: one group
    per distinct decay; see docs/channels.md); every other parameter gets ``weight_decay``. With an optimizer whose weight decay is
    *coupled* (added to the gradient: ``SGD`` with or without momentum, ``Adam``,
    ``Adagrad``, ``RMSprop``) training then solves exactly::

        loss(v) + sum_tensors lam * ||v||_1   (+ weight_decay/2 * ||other||^2)

    With the loss written as ``mean(r**2) / 2`` this is scikit-learn's Lasso with
    ``alpha = lam`` (torch's ``MSELoss`` has no 1/2: use ``lam = 2 * alpha``).

    ``AdamW`` (and ``Adam(decoupled_weight_decay=True)``) decays *decoupled* from the
    gradient: it still sparsifies but is not L1 with strength ``lam``. For such
    optimizers pass ``penalty_in_loss=True`` (the spred groups get weight decay 0)
    and add :func:`penalty` to the loss. Passing ``optimizer=torch.optim.AdamW``
    without it warns; see also :func:`check_optimizer`.

    ``gate_lr``: a learning rate of its own for the gates of ``groups="channels"``
    (each gate group gets ``"lr": gate_lr``; every other group keeps the optimizer's
    ``lr``). A learning rate per parameter changes how training moves, not what it
    solves: the objective and its minimisers (the KKT points of the group lasso for
    D = 2) are the same whatever ``gate_lr``. What it changes is how soon a gate can
    close: Adam moves a parameter by about ``lr`` per step whatever the gradient's
    size, so a gate of size ``g`` needs at least ``g / lr`` steps to reach zero, and a
    short budget at a weight-friendly ``lr`` may close none (docs/channels.md).
    Schedulers scale every group's rate alike (``gate_lr / lr`` is kept).

    Each group carries the extra keys ``"spred"`` (bool) and, for spred groups,
    ``"lam"``, ``"names"``, ``"gate"`` (bool: it holds channel gates) and
    ``"penalty_in_loss"``, which :func:`set_lam` and the training loop use (gates are
    always in groups of their own). Every factor's decay comes from its unit
    (``unit.spred.weight_decays``), the one source :func:`penalty` and :func:`set_lam` use too.

    Examples
    --------
    >>> import torch, spred
    >>> model = spred.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), lam=1e-3)
    >>> opt = torch.optim.Adam(spred.param_groups(model, weight_decay=0.0), lr=1e-2)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.001, 0.0]

    Channel gates ten times faster than the weights (the hidden Linear's four channels
    are one gated group, with its weight rows, bias and the readout's columns):

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> _ = spred.sparsify(net, lam=1e-3, groups="channels", example_inputs=torch.randn(2, 8))
    >>> opt = torch.optim.Adam(spred.param_groups(net, gate_lr=1e-2), lr=1e-3)
    >>> [(g["gate"], g["lr"]) for g in opt.param_groups if g["spred"]]
    [(True, 0.01), (False, 0.001)]
    """
    weight_decay = check_float(weight_decay, "weight_decay", "param_groups", 0.0)
    gate_lr = check_float(gate_lr, "gate_lr", "param_groups", 0.0, low_open=True, optional=True)
    if optimizer is not None and decays_decoupled(optimizer) and not penalty_in_loss:
        warnings.warn(
            f"{getattr(optimizer, '__name__', type(optimizer).__name__)} decays weights decoupled from the gradient, "
            "so the spred factors would not solve the L1 problem with strength lam. Use SGD, Adam or Adagrad, or "
            "pass penalty_in_loss=True and add spred.penalty(model) to the loss.",
            UserWarning,
            stacklevel=2,
        )
    by_decay: dict[tuple[float, float, bool], dict] = {}
    spred_ids = set()
    units = _require(model, "param_groups")
    if gate_lr is not None and not any(isinstance(t, ChannelGroup) for t in units):
        raise ValueError(
            "The 'gate_lr' parameter of param_groups sets the learning rate of the gates of groups='channels', and this "
            "model has none (it was sparsified elementwise or per tensor). Sparsify with groups='channels', or leave gate_lr=None."
        )
    for t in units:
        for k, (factor, decay) in enumerate(zip(t.factors, map(float, t.spred.weight_decays(len(t.factors))), strict=True)):
            gate = isinstance(t, ChannelGroup) and k == 0  # a channel group's factors: its gate, then the tensors it owns
            group = by_decay.setdefault(
                (t.spred.lam, decay, gate),
                {"params": [], "weight_decay": 0.0 if penalty_in_loss else decay, "lam": t.spred.lam, "names": [], "spred": True, "gate": gate,
                 "penalty_in_loss": bool(penalty_in_loss), **({"lr": gate_lr} if gate and gate_lr is not None else {})},
            )  # fmt: skip
            group["params"].append(factor)
            if t.name not in group["names"]:
                group["names"].append(t.name)
            spred_ids.add(id(factor))
    others = [p for p in model.parameters() if id(p) not in spred_ids]
    groups = list(by_decay.values())
    if others:
        groups.append({"params": others, "weight_decay": weight_decay, "spred": False})
    return groups


def _sgd_decay_bound(optimizer, group: Mapping) -> float | None:
    """The largest ``lr * weight_decay`` for which SGD converges on the decay alone, ``None`` for other optimizers.

    Gradient descent on ``(a/2) u^2`` shrinks ``u`` only while ``lr * a < 2``; heavy-ball momentum ``mu`` (with
    dampening ``d``) moves the bound to ``2 (1 + mu) / (1 - d)``, Nesterov momentum to ``2 (1 + mu) / (1 + 2 mu)``.
    The loss adds its own curvature, so this is necessary, not sufficient.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return None
    mu, damp = float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0))
    if mu == 0:
        return 2.0
    if group.get("nesterov"):
        return 2.0 * (1.0 + mu) / (1.0 + 2.0 * mu)
    return 2.0 * (1.0 + mu) / (1.0 - damp) if damp < 1 else math.inf


def check_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Warn (and return False) if ``optimizer`` does not solve the L1 problem for spred groups.

    True when every group holding spred factors uses coupled weight decay (as
    :func:`param_groups` sets it from lam); decoupled decay (AdamW,
    ``decoupled_weight_decay=True``) warns, and so does SGD whose ``lr * weight_decay``
    is past the stability bound of SGD, ``2 (1 + momentum)`` (the gates of channel groups carry
    ``lam * cbar^(2/(D-1))``, see docs/channels.md).
    """
    ok = True
    for group in optimizer.param_groups:
        if not group.get("spred"):
            continue
        bound = _sgd_decay_bound(optimizer, group)
        step = float(group.get("lr", 0.0)) * float(group.get("weight_decay", 0.0))
        if bound is not None and step >= bound:
            warnings.warn(
                f"{type(optimizer).__name__} with lr={group['lr']:g} and weight decay {group['weight_decay']:g} on spred group "
                f"{group.get('names')}: lr * weight_decay = {step:.3g} is not below {bound:.3g}, so these factors oscillate with "
                f"growing size. Use lr < {bound / group['weight_decay']:.3g} for them (a lower lr, or a lower lam) or Adam; the "
                "gates of channel groups carry weight decay lam * cbar^(2/(D-1)) (docs/channels.md).",
                UserWarning,
                stacklevel=2,
            )
            ok = False
        decoupled = decays_decoupled(optimizer, group)
        if group.get("penalty_in_loss"):
            if group.get("weight_decay", 0.0) != 0:
                warnings.warn(
                    f"spred group {group.get('names')} has penalty_in_loss=True but weight_decay={group['weight_decay']}: "
                    "the penalty is applied twice. Set its weight_decay to 0.",
                    UserWarning,
                    stacklevel=2,
                )
                ok = False
            continue
        if decoupled and group.get("weight_decay", 0.0) > 0:
            warnings.warn(
                f"{type(optimizer).__name__} applies weight decay decoupled from the gradient: the spred factors "
                "are sparsified, but not by L1 with strength lam. For the L1 problem use SGD, Adam or Adagrad, or "
                "build the groups with spred.param_groups(model, penalty_in_loss=True) and add spred.penalty(model) to the loss.",
                UserWarning,
                stacklevel=2,
            )
            ok = False
    return ok


def penalty(model: nn.Module) -> torch.Tensor:
    """The spred penalty ``sum_tensors (lam/2) * sum_k ||u_k||^2`` as a differentiable scalar.

    Each factor's term uses the weight decay :func:`param_groups` gives it (``lam``, and
    ``lam * cbar^(2/(D-1))`` for the gates of channel groups, docs/channels.md).

    Add it to the loss when the optimizer's own weight decay is not coupled (AdamW)
    or when you want the objective's value; at balance it equals ``lam * ||v||_1``
    (group: ``lam * sum_g ||v_g||``; depth D: ``(D*lam/2) * sum |v|^(2/D)``).
    Do not add it *and* use :func:`param_groups`' weight decay: that doubles lam.
    """
    tensors = _require(model, "penalty")
    return sum(t.spred.penalty(t.factors) for t in tensors)


def get_lam(model: nn.Module) -> dict[str, float]:
    """``{fully qualified name: lam}`` of every sparsified tensor (a tied weight once, by its first name)."""
    return {t.name: t.spred.lam for t in _require(model, "get_lam")}


def _new_lams(tensors: list[SparsifiedTensor], lam) -> dict[str, float]:
    """``{name: lam}`` after ``set_lam(model, lam)``, every value and every key checked first."""
    who = "set_lam"
    if not isinstance(lam, Mapping):
        value = check_float(lam, "lam", who, 0.0)
        return {t.name: value for t in tensors}
    values = {str(k): check_float(v, f"lam[{k!r}]", who, 0.0) for k, v in lam.items()}
    if not values:
        raise ValueError("The 'lam' parameter of set_lam is an empty mapping; give at least one name or glob.")
    known = [n for t in tensors for n in t.names]
    first = _first_matches(list(values), known)  # name -> the first key matching it (or None)
    matched = set(first.values())
    unknown = [k for k in values if k not in matched and _matches([k], *known) is None]
    if unknown:
        raise ValueError(f"The 'lam' mapping of set_lam has keys that match no sparsified tensor: {unknown}. The sparsified tensors are {known}.")
    new, used = {}, set()
    for t in tensors:
        keys = {first[n] for n in t.names} - {None}
        if len({values[k] for k in keys}) > 1:
            raise ValueError(f"The 'lam' mapping of set_lam gives the tied weights {list(t.names)} different values through {sorted(keys)}; a tied weight has one lam.")
        used |= keys
        new[t.name] = values[keys.pop()] if keys else t.spred.lam
    shadowed = [k for k in values if k not in used]
    if shadowed:
        raise ValueError(f"The 'lam' mapping of set_lam has keys that never apply, because every tensor they match is matched by an earlier key first: {shadowed}.")
    return new


def _optimizer_lams(optimizer, tensors: list[SparsifiedTensor], new: dict[str, float]) -> list[tuple[dict, float, float]]:
    """``[(spred group, its new lam, its new weight decay)]``, refusing a group that would mix values or names another model."""
    if not isinstance(getattr(optimizer, "param_groups", None), list):
        raise param_error(TypeError, "optimizer", "set_lam", "a torch.optim.Optimizer or None", optimizer)
    by_name = {n: new[t.name] for t in tensors for n in t.names}
    decays = {id(f): float(a) for t in tensors for f, a in zip(t.factors, t.spred.weight_decays(len(t.factors), new[t.name]), strict=True)}
    plan = []
    for group in optimizer.param_groups:
        if not group.get("spred"):
            continue
        names = list(group.get("names", ()))
        missing = [n for n in names if n not in by_name]
        if missing or not names or any(id(p) not in decays for p in group["params"]):
            raise ValueError(f"an optimizer group holds {missing or names or 'no names'}, not sparsified tensors of this model; build the optimizer from spred.param_groups(model).")
        values, group_decays = {by_name[n] for n in names}, {decays[id(p)] for p in group["params"]}
        if len(values) != 1 or len(group_decays) != 1:
            raise ValueError(f"optimizer group with {names} now mixes lam values {sorted(values)} (weight decays {sorted(group_decays)}); rebuild it with spred.param_groups.")
        plan.append((group, values.pop(), group_decays.pop()))
    return plan


def set_lam(model: nn.Module, lam: float | Mapping[str, float], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Change ``lam`` on the model (saved with its state_dict) and, if given, in the optimizer.

    A float sets every tensor; a mapping sets tensors by name or glob (the first
    matching key wins; a tensor matched by no key keeps its lam). The optimizer's
    spred groups (from :func:`param_groups`) get the new value as weight decay (the
    gates of channel groups ``lam * cbar^(2/(D-1))``, as :func:`param_groups` gives), or
    keep weight decay 0 when built with ``penalty_in_loss=True``.

    The update is all or nothing: every value, every key and every optimizer group is
    checked before anything changes. A key that matches no sparsified tensor (a typo)
    or never applies (every tensor it matches is matched by an earlier key), a group
    that would hold tensors with different lam (rebuild the optimizer), or two names
    of one tied weight with different values raise ``ValueError`` and leave the model
    and the optimizer as they were.
    """
    tensors = _require(model, "set_lam")
    new = _new_lams(tensors, lam)
    plan = [] if optimizer is None else _optimizer_lams(optimizer, tensors, new)
    for t in tensors:
        t.spred.lam = new[t.name]
    for group, value, decay in plan:
        group["lam"] = value
        if not group.get("penalty_in_loss"):
            group["weight_decay"] = decay
