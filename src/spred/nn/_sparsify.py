"""Registering the spred parametrisation on a model, and what the optimizer needs."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred.exceptions import NotSparsifiedError
from spred.nn._parametrizations import GROUPS, INITS, SpredProduct

DEFAULT_INCLUDE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class SparsifiedTensor:
    """One sparsified tensor: where it lives and its parametrisation."""

    name: str  # fully qualified name of the weight, e.g. "features.0.weight"
    module: nn.Module
    tensor_name: str
    spred: SpredProduct

    @property
    def factors(self) -> tuple[torch.Tensor, ...]:
        plist = self.module.parametrizations[self.tensor_name]
        return tuple(getattr(plist, f"original{i}") for i in range(self.spred.depth))


def _spred_of(module: nn.Module, tensor_name: str) -> SpredProduct | None:
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, SpredProduct):
            return p
    return None


def sparsified_tensors(model: nn.Module) -> Iterator[SparsifiedTensor]:
    """Iterate over every tensor of ``model`` carrying the spred parametrisation."""
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in module.parametrizations:
            p = _spred_of(module, tensor_name)
            if p is not None:
                fqn = f"{mod_name}.{tensor_name}" if mod_name else tensor_name
                yield SparsifiedTensor(fqn, module, tensor_name, p)


def _check_lam(value, who: str, name: str = "lam") -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"The '{name}' parameter of {who} must be a float in the range [0, inf). Got {value!r} of type {type(value).__name__} instead.")
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"The '{name}' parameter of {who} must be a float in the range [0, inf). Got {value!r} instead.")
    return float(value)


def _matches(patterns, *names: str) -> str | None:
    for pat in patterns:
        if any(fnmatch.fnmatchcase(n, pat) for n in names):
            return pat
    return None


def sparsify(
    model: nn.Module,
    lam: float | Mapping[str, float],
    *,
    groups: str | None = None,
    depth: int = 2,
    include: tuple[type[nn.Module], ...] = DEFAULT_INCLUDE,
    exclude: tuple[str, ...] | list[str] = (),
    init: str = "preserve",
) -> nn.Module:
    """Reparametrise the weights of ``model`` so that weight decay becomes an L1 penalty.

    Every ``weight`` of a module of a type in ``include`` (and not matched by
    ``exclude``) is written as a product of ``depth`` factors through
    :func:`torch.nn.utils.parametrize.register_parametrization`. Training the factors
    with coupled weight decay ``lam`` (see :func:`param_groups`) minimises::

        loss(v) + lam * ||v||_1                      groups=None, depth=2
        loss(v) + lam * sum_g ||v_g||_2              groups="out" or "in"
        loss(v) + (depth*lam/2) * sum |v|^(2/depth)  depth > 2

    The model is changed in place and returned; build the optimizer *afterwards*.

    Parameters
    ----------
    model : nn.Module
    lam : float or mapping of str to float
        Penalty strength, >= 0. A mapping goes from a parameter's fully qualified name
        (``"fc1.weight"``) or a glob (``"features.*"``) to its strength; the first
        matching key wins and a weight matched by no key is left dense.
    groups : {None, "out", "in"}, default=None
        ``None``: one factor per weight (unstructured sparsity). ``"out"``: one scalar
        per output neuron / filter (removes whole neurons or channels). ``"in"``: one
        scalar per input feature / channel (feature selection on a first layer).
        Groups are not weighted by their size.
    depth : int, default=2
        Number of factors D >= 2. D > 2 gives the non-convex L_{2/D} penalty.
    include : tuple of module types
        Which modules' ``weight`` to sparsify.
    exclude : sequence of str
        Globs on module or parameter names to leave dense (e.g. ``("head.*",)``).
    init : {"preserve", "balanced"}, default="preserve"
        ``"preserve"`` keeps the model's function exactly, with an unbalanced split
        ``u = c, w = v / c`` that lets every weight change sign. ``"balanced"``
        (``u = sign(v) sqrt|v|, w = sqrt|v|``) also keeps the function but, for
        elementwise factors, freezes every sign (the sign trap); use it only to
        polish a solution whose signs have settled.

    Returns
    -------
    model : nn.Module
        The same object, now sparsified.

    Examples
    --------
    >>> import torch, spred
    >>> model = spred.sparsify(torch.nn.Linear(20, 1), lam=0.1)
    >>> opt = torch.optim.SGD(spred.param_groups(model), lr=0.1)
    """
    who = "sparsify"
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify expects a torch.nn.Module; got {type(model).__name__}.")
    if isinstance(lam, Mapping):
        lam_map = {str(k): _check_lam(v, who, f"lam[{k!r}]") for k, v in lam.items()}
        if not lam_map:
            raise ValueError("The 'lam' parameter of sparsify is an empty mapping; give at least one name or glob.")
    else:
        lam_map = {"*": _check_lam(lam, who)}
    if groups not in GROUPS:
        raise ValueError(f"The 'groups' parameter of sparsify must be one of None, 'out', 'in'. Got {groups!r} instead.")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"The 'depth' parameter of sparsify must be an int >= 2. Got {depth!r} instead.")
    if init not in INITS:
        raise ValueError(f"The 'init' parameter of sparsify must be one of {INITS}. Got {init!r} instead.")
    if isinstance(exclude, str):
        exclude = (exclude,)
    include = tuple(include) if isinstance(include, (tuple, list)) else (include,)
    if not include or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in include):
        raise TypeError(f"The 'include' parameter of sparsify must be a tuple of nn.Module subclasses. Got {include!r} instead.")

    targets = []
    used_keys = set()
    for mod_name, module in model.named_modules():
        if not isinstance(module, include):
            continue
        if getattr(module, "weight", None) is None:
            continue
        fqn = f"{mod_name}.weight" if mod_name else "weight"
        if _matches(exclude, mod_name, fqn):
            continue
        key = _matches(lam_map, fqn, mod_name)
        if key is None:
            continue
        used_keys.add(key)
        if _spred_of(module, "weight") is not None:
            raise ValueError(f"'{fqn}' is already sparsified; sparsify a model only once (use spred.collapse first to start over).")
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"'{fqn}' already carries a parametrization ({module.parametrizations['weight']}); spred needs a plain weight.")
        weight = module.weight
        if groups is not None and weight.dim() < 2:
            raise ValueError(
                f"groups={groups!r} needs a weight with ndim >= 2; '{fqn}' has shape {tuple(weight.shape)}. "
                "Use groups=None for elementwise sparsity or exclude this layer."
            )
        out_dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
        targets.append((fqn, module, lam_map[key], out_dim))

    if not targets:
        names = ", ".join(t.__name__ for t in include)
        raise ValueError(f"sparsify found no weight to sparsify: no module of type ({names}) matched lam keys {sorted(lam_map)} and exclude {tuple(exclude)}.")
    unused = [k for k in lam_map if k != "*" and k not in used_keys]
    if unused:
        raise ValueError(f"The 'lam' mapping of sparsify has keys that match no sparsifiable weight: {unused}.")
    for fqn, module, value, out_dim in targets:
        product = SpredProduct(value, groups, depth, init, out_dim)
        product.position = list(module._parameters).index("weight")  # restored by collapse
        parametrize.register_parametrization(module, "weight", product)
    return model


def is_sparsified(model: nn.Module, name: str | None = None) -> bool:
    """Whether ``model`` (or its tensor with fully qualified ``name``) carries spred factors."""
    return any(name is None or t.name == name for t in sparsified_tensors(model))


def factors(module: nn.Module, name: str = "weight") -> tuple[torch.Tensor, ...]:
    """The factors ``(u_1, ..., u_D)`` of ``module.<name>``; their product is the weight."""
    p = _spred_of(module, name)
    if p is None:
        raise NotSparsifiedError(f"{type(module).__name__}.{name} is not sparsified; call spred.sparsify first.")
    plist = module.parametrizations[name]
    return tuple(getattr(plist, f"original{i}") for i in range(p.depth))


def _require(model: nn.Module, who: str) -> list[SparsifiedTensor]:
    tensors = list(sparsified_tensors(model))
    if not tensors:
        raise NotSparsifiedError(f"{who} needs a model sparsified by spred.sparsify; {type(model).__name__} has no spred factors.")
    return tensors


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


def param_groups(model: nn.Module, weight_decay: float = 0.0, *, optimizer=None, penalty_in_loss: bool = False) -> list[dict]:
    """Optimizer parameter groups that turn weight decay into the spred penalty.

    Every spred factor gets its tensor's ``lam`` as weight decay; every other
    parameter gets ``weight_decay``. With an optimizer whose weight decay is
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

    Each group carries the extra keys ``"spred"`` (bool) and, for spred groups,
    ``"lam"``, ``"names"`` and ``"penalty_in_loss"``, which :func:`set_lam` and the
    training loop use.

    Examples
    --------
    >>> import torch, spred
    >>> model = spred.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), lam=1e-3)
    >>> opt = torch.optim.Adam(spred.param_groups(model, weight_decay=0.0), lr=1e-2)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.001, 0.0]
    """
    weight_decay = _check_lam(weight_decay, "param_groups", "weight_decay")
    if optimizer is not None and decays_decoupled(optimizer) and not penalty_in_loss:
        warnings.warn(
            f"{getattr(optimizer, '__name__', type(optimizer).__name__)} decays weights decoupled from the gradient, "
            "so the spred factors would not solve the L1 problem with strength lam. Use SGD, Adam or Adagrad, or "
            "pass penalty_in_loss=True and add spred.penalty(model) to the loss.",
            UserWarning,
            stacklevel=2,
        )
    by_lam: dict[float, dict] = {}
    spred_ids = set()
    for t in _require(model, "param_groups"):
        group = by_lam.setdefault(
            t.spred.lam,
            {"params": [], "weight_decay": 0.0 if penalty_in_loss else t.spred.lam, "lam": t.spred.lam, "names": [], "spred": True, "penalty_in_loss": bool(penalty_in_loss)},
        )
        group["params"].extend(t.factors)
        group["names"].append(t.name)
        spred_ids.update(id(f) for f in t.factors)
    others = [p for p in model.parameters() if id(p) not in spred_ids]
    groups = list(by_lam.values())
    if others:
        groups.append({"params": others, "weight_decay": weight_decay, "spred": False})
    return groups


def check_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Warn (and return False) if ``optimizer`` does not solve the L1 problem for spred groups.

    True when every group holding spred factors uses coupled weight decay equal to
    its ``lam``; decoupled decay (AdamW, ``decoupled_weight_decay=True``) warns.
    """
    ok = True
    for group in optimizer.param_groups:
        if not group.get("spred"):
            continue
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

    Add it to the loss when the optimizer's own weight decay is not coupled (AdamW)
    or when you want the objective's value; at balance it equals ``lam * ||v||_1``
    (group: ``lam * sum_g ||v_g||``; depth D: ``(D*lam/2) * sum |v|^(2/D)``).
    Do not add it *and* use :func:`param_groups`' weight decay: that doubles lam.
    """
    tensors = _require(model, "penalty")
    return sum(t.spred.penalty(t.factors) for t in tensors)


def get_lam(model: nn.Module) -> dict[str, float]:
    """``{fully qualified name: lam}`` of every sparsified tensor."""
    return {t.name: t.spred.lam for t in _require(model, "get_lam")}


def set_lam(model: nn.Module, lam: float | Mapping[str, float], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Change ``lam`` on the model (saved with its state_dict) and, if given, in the optimizer.

    A float sets every tensor; a mapping sets tensors by name or glob. The optimizer's
    spred groups (from :func:`param_groups`) get the new value as weight decay (or
    keep weight decay 0 when built with ``penalty_in_loss=True``); a group holding
    tensors that now differ in lam is an error (rebuild the optimizer).
    """
    tensors = _require(model, "set_lam")
    for t in tensors:
        if isinstance(lam, Mapping):
            key = _matches(lam, t.name)
            if key is None:
                continue
            t.spred.lam = _check_lam(lam[key], "set_lam")
        else:
            t.spred.lam = _check_lam(lam, "set_lam")
    if optimizer is None:
        return
    current = {t.name: t.spred.lam for t in tensors}
    for group in optimizer.param_groups:
        if not group.get("spred"):
            continue
        values = {current[n] for n in group["names"]}
        if len(values) != 1:
            raise ValueError(f"optimizer group with {group['names']} now mixes lam values {sorted(values)}; rebuild it with spred.param_groups.")
        group["lam"] = values.pop()
        if not group.get("penalty_in_loss"):
            group["weight_decay"] = group["lam"]
