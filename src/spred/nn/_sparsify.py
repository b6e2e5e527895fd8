"""Registering the spred parametrisation on a model, and what the optimizer needs."""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred._validation import check_choice, check_float, check_int, param_error
from spred.exceptions import NotSparsifiedError
from spred.nn import _fastpath
from spred.nn._channels import ChannelGroup, channel_groups, sparsify_channels
from spred.nn._graph import is_hf_conv1d, out_dim_of
from spred.nn._parametrizations import GROUPS, INITS, MAX_DEPTH, SpredProduct

logger = logging.getLogger(__name__)

DEFAULT_INCLUDE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # and Hugging Face's Conv1D (GPT-2), found by name: see _included
CHANNELS = "channels"


def _included(module: nn.Module, include: tuple) -> bool:
    """Whether sparsify takes ``module``: an ``include`` type, or with the default include also ``transformers``' Conv1D."""
    return isinstance(module, include) or (include == DEFAULT_INCLUDE and is_hf_conv1d(module))


@dataclass(frozen=True)
class SparsifiedTensor:
    """One sparsified tensor: where it lives and its parametrisation.

    A tied weight (one Parameter held by several modules, ``b.weight = a.weight``) is
    *one* sparsified tensor: one parametrisation and one set of factors, shared by
    every module that held it. ``name`` / ``module`` are its first place in
    ``model.named_modules()`` order and ``aliases`` the others, as
    ``(name, module, tensor_name)``.
    """

    name: str  # fully qualified name of the weight, e.g. "features.0.weight"
    module: nn.Module
    tensor_name: str
    spred: SpredProduct
    aliases: tuple[tuple[str, nn.Module, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every fully qualified name of this tensor (more than one for a tied weight)."""
        return (self.name, *(a[0] for a in self.aliases))

    @property
    def factors(self) -> tuple[torch.Tensor, ...]:
        plist = self.module.parametrizations[self.tensor_name]
        return tuple(getattr(plist, f"original{i}") for i in range(self.spred.depth))

    def value(self) -> torch.Tensor:
        """The tensor ``v`` the model uses (the product of the factors)."""
        return getattr(self.module, self.tensor_name)


def _fqn(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _spred_of(module: nn.Module, tensor_name: str) -> SpredProduct | None:
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, SpredProduct):
            return p
    return None


def sparsified_tensors(model: nn.Module) -> Iterator[SparsifiedTensor]:
    """Iterate over every tensor of ``model`` carrying the spred parametrisation, each once.

    A tied weight comes once, with its other places in :attr:`SparsifiedTensor.aliases`.
    """
    places: dict[int, list] = {}  # id(ParametrizationList) -> [(fqn, module, tensor_name, product)]
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            p = _spred_of(module, tensor_name)
            if p is not None:
                places.setdefault(id(plist), []).append((_fqn(mod_name, tensor_name), module, tensor_name, p))
    for (name, module, tensor_name, p), *others in places.values():
        yield SparsifiedTensor(name, module, tensor_name, p, tuple((n, m, tn) for n, m, tn, _ in others))


def _matches(patterns, *names: str) -> str | None:
    for pat in patterns:
        if any(fnmatch.fnmatchcase(n, pat) for n in names):
            return pat
    return None


def _first_matches(keys: list[str], names: list[str]) -> dict[str, str | None]:
    """``{name: the first of keys matching it}``, as :func:`_matches` gives, with plain names looked up directly."""
    globs = [(i, k) for i, k in enumerate(keys) if any(c in k for c in "*?[")]
    plain = {k: i for i, k in reversed(list(enumerate(keys))) if not any(c in k for c in "*?[")}
    out = {}
    for name in names:
        best = plain.get(name)
        hit = next((k for i, k in globs if (best is None or i < best) and fnmatch.fnmatchcase(name, k)), None)
        out[name] = hit if hit is not None else (None if best is None else keys[best])
    return out


@dataclass
class _Target:
    fqn: str
    module: nn.Module
    lam: float
    out_dim: int


def _check_sparsify_args(model, lam, groups, depth, include, exclude, init) -> tuple[dict, int, tuple, tuple]:
    """Validate sparsify's arguments; returns ``(lam_map, depth, include, exclude)``."""
    who = "sparsify"
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify expects a torch.nn.Module; got {type(model).__name__}.")
    if isinstance(lam, Mapping):
        lam_map = {str(k): check_float(v, f"lam[{k!r}]", who, 0.0) for k, v in lam.items()}
        if not lam_map:
            raise ValueError("The 'lam' parameter of sparsify is an empty mapping; give at least one name or glob.")
    else:
        lam_map = {"*": check_float(lam, "lam", who, 0.0)}
    check_choice(groups, "groups", who, (*GROUPS, CHANNELS))
    depth = check_int(depth, "depth", who, 2, MAX_DEPTH)
    check_choice(init, "init", who, INITS)
    exclude = (exclude,) if isinstance(exclude, str) else exclude
    if not isinstance(exclude, (tuple, list)) or not all(isinstance(e, str) for e in exclude):
        raise param_error(TypeError, "exclude", who, "a sequence of str (globs)", exclude)
    include = tuple(include) if isinstance(include, (tuple, list)) else (include,)
    if not include or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in include):
        raise param_error(TypeError, "include", who, "a tuple of nn.Module subclasses", include)
    return lam_map, depth, include, tuple(exclude)


def _find_targets(model, lam_map, groups, include, exclude) -> list[_Target]:
    """The weights sparsify will reparametrise, each with its lam; refuses what it cannot do."""
    targets, used_keys = [], set()
    for mod_name, module in model.named_modules():
        if not _included(module, include) or getattr(module, "weight", None) is None:
            continue
        fqn = _fqn(mod_name, "weight")
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
        out_dim = out_dim_of(module)
        targets.append(_Target(fqn, module, lam_map[key], out_dim))
    if not targets:
        names = ", ".join(t.__name__ for t in include)
        raise ValueError(f"sparsify found no weight to sparsify: no module of type ({names}) matched lam keys {sorted(lam_map)} and exclude {tuple(exclude)}.")
    unused = [k for k in lam_map if k != "*" and k not in used_keys]
    if unused:
        raise ValueError(f"The 'lam' mapping of sparsify has keys that match no sparsifiable weight: {unused}.")
    return targets


def _tie_groups(model: nn.Module, targets: list[_Target]) -> list[list[_Target]]:
    """``targets`` grouped by Parameter: a tied weight is sparsified once, for all its places.

    Refuses a tie that sparsify would break: a place of the same Parameter that would
    stay dense (excluded, another module type, another attribute), or places that
    would get different settings.
    """
    holders: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules():
        for pname, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append(_fqn(mod_name, pname))
    by_param: dict[int, list[_Target]] = {}
    for t in targets:
        by_param.setdefault(id(t.module.weight), []).append(t)
    for pid, ties in by_param.items():
        names = [t.fqn for t in ties]
        dense = [n for n in holders.get(pid, ()) if n not in names]
        if dense:
            raise ValueError(
                f"'{names[0]}' is tied to {dense} (the same Parameter), which sparsify would leave dense, so the tie would "
                "break. Sparsify every place of a tied weight (include its module type and give it a lam) or exclude them all."
            )
        settings = {(t.lam, t.out_dim) for t in ties}
        if len(settings) > 1:
            raise ValueError(f"tied weights {names} (the same Parameter) would get different settings (lam, out_dim) {sorted(settings)}; give them one lam.")
    return list(by_param.values())


def _register(ties: list[_Target], groups: str | None, depth: int, init: str) -> None:
    """One parametrisation for a (possibly tied) weight: registered on the first place, shared by the others."""
    first = ties[0]
    product = SpredProduct(first.lam, groups, depth, init, first.out_dim)
    for t in ties:  # restored by collapse, so parameters and state_dict keys keep the dense order
        t.module._spred_position = list(t.module._parameters).index("weight")
    product.position = first.module._spred_position
    parametrize.register_parametrization(first.module, "weight", product)
    shared = first.module.parametrizations["weight"]
    for t in ties[1:]:
        # Make the module parametrized (an identity keeps its Parameter as is), then hand it the
        # first place's ParametrizationList: one set of factors, one product, one lam.
        parametrize.register_parametrization(t.module, "weight", nn.Identity(), unsafe=True)
        t.module.parametrizations["weight"] = shared
    for t in ties:  # grouped factors in activation space where exact (_fastpath.py)
        _fastpath.install(t.module, groups, first.out_dim)
    if len(ties) > 1:
        logger.debug("sparsify: %s share one parametrisation (tied weights)", [t.fqn for t in ties])


def sparsify(
    model: nn.Module,
    lam: float | Mapping[str, float],
    *,
    groups: str | None = None,
    depth: int = 2,
    include: tuple[type[nn.Module], ...] = DEFAULT_INCLUDE,
    exclude: tuple[str, ...] | list[str] = (),
    init: str = "preserve",
    example_inputs=None,
    heads: bool | int = False,
    group_weight: str | None = "size",
) -> nn.Module:
    """Reparametrise the weights of ``model`` so that weight decay becomes an L1 penalty.

    Every ``weight`` of a module of a type in ``include`` (and not matched by
    ``exclude``) is written as a product of ``depth`` factors through
    :func:`torch.nn.utils.parametrize.register_parametrization`. Training the factors
    with coupled weight decay ``lam`` (see :func:`param_groups`) minimises::

        loss(v) + lam * ||v||_1                      groups=None, depth=2
        loss(v) + lam * sum_g ||v_g||_2              groups="out" or "in"
        loss(v) + lam * sum_g c_g ||v_g||_2          groups="channels" (v_g: a channel across layers)
        loss(v) + (depth*lam/2) * sum |v|^(2/depth)  depth > 2

    The model is changed in place and returned; build the optimizer *afterwards*.

    Tied weights (one Parameter held by several modules, e.g. ``b.weight = a.weight``)
    stay tied: they get one parametrisation with one set of factors, shared by every
    module, and :func:`collapse` gives back one Parameter. Every place of a tied weight
    must be sparsified with the same settings; a tie that would break (one place
    excluded or of a type not in ``include``) is refused.

    Parameters
    ----------
    model : nn.Module
    lam : float or mapping of str to float
        Penalty strength, >= 0. A mapping goes from a parameter's fully qualified name
        (``"fc1.weight"``) or a glob (``"features.*"``) to its strength; the first
        matching key wins and a weight matched by no key is left dense.
    groups : {None, "out", "in", "channels"}, default=None
        ``None``: one factor per weight (unstructured sparsity). ``"out"``: one scalar
        per output neuron / filter of each tensor (removes whole neurons or channels).
        ``"in"``: one scalar per input feature / channel (feature selection on a first
        layer). These per-tensor groups are not weighted by their size.
        ``"channels"``: one gate per channel of the model's dependency graph (needs
        ``example_inputs`` and Torch-Pruning), shared by every slice that produces it:
        a conv filter with its bias, the BatchNorm / LayerNorm / GroupNorm scale and
        shift after it, every layer tied to it by a residual add, a concatenation or a
        depthwise convolution. A zero gate makes the channel emit exactly 0, so
        :func:`spred.compress.prune_channels` can remove it with the input slices that
        read it. ``lam`` keys then match group names (the name of the group's first
        layer, ``"<attention>:heads"`` for heads); see :func:`channel_groups` and
        docs/channels.md.
    depth : int in [2, 16], default=2
        Number of factors D. D > 2 gives the non-convex L_{2/D} penalty. Each factor
        is a trainable tensor (elementwise: a full copy of the weight, with its own
        optimizer state), and the penalty is already close to L0 at D = 16
        (``|v|^(1/8)``) while the gradient of a deep product vanishes near zero, so
        deeper products only cost memory and slow training; larger D is refused.
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
    example_inputs : Tensor, tuple or dict, optional
        ``groups="channels"`` only: a batch the model takes (``model(x)``,
        ``model(*inputs)`` or ``model(**inputs)``), used once to trace the graph.
    heads : bool or int, default=False
        ``groups="channels"`` only: also gate whole attention heads (Q, K and V rows of a
        head) of ``nn.MultiheadAttention``, timm-style ``qkv`` attention, BERT and GPT-2;
        an int gives the head count where the module does not store it. Without it
        attention projections stay dense.
    group_weight : {"size", "flops", None}, default="size"
        ``groups="channels"`` only: the weight ``c_g`` of each channel in the penalty:
        the square root of its number of entries (the usual group-lasso weight), its
        multiply-adds on ``example_inputs`` (scaled to the same mean), or 1.

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
    lam_map, depth, include, exclude = _check_sparsify_args(model, lam, groups, depth, include, exclude, init)
    if groups == CHANNELS:
        return sparsify_channels(model, lam_map, depth=depth, included=lambda m: _included(m, include), exclude=exclude, init=init,
                                 example_inputs=example_inputs, heads=heads, group_weight=group_weight)  # fmt: skip
    for name, value, default in (("example_inputs", example_inputs, None), ("heads", heads, False), ("group_weight", group_weight, "size")):
        if value is not default and value != default:
            raise ValueError(f"The '{name}' parameter of sparsify applies to groups='channels' only. Got groups={groups!r}.")
    targets = _find_targets(model, lam_map, groups, include, exclude)
    for ties in _tie_groups(model, targets):  # everything is checked before anything is registered
        _register(ties, groups, depth, init)
    return model


def is_sparsified(model: nn.Module, name: str | None = None) -> bool:
    """Whether ``model`` (or its tensor with fully qualified ``name``) carries spred factors.

    Every name of a tied weight counts (see :attr:`SparsifiedTensor.aliases`), and so do the
    name of a channel group and the names of the tensors it gates."""
    units = sparsified_units(model)
    if name is None:
        return bool(units)
    return any(name in t.names or (isinstance(t, ChannelGroup) and any(m.name == name for m in t.members)) for t in units)


def factors(module: nn.Module, name: str = "weight") -> tuple[torch.Tensor, ...]:
    """The factors ``(u_1, ..., u_D)`` of ``module.<name>``; their product is the weight."""
    p = _spred_of(module, name)
    if p is None:
        raise NotSparsifiedError(f"{type(module).__name__}.{name} is not sparsified; call spred.sparsify first.")
    plist = module.parametrizations[name]
    return tuple(getattr(plist, f"original{i}") for i in range(p.depth))


def sparsified_units(model: nn.Module) -> list[SparsifiedTensor | ChannelGroup]:
    """Every unit of ``model`` that carries a spred penalty: its sparsified tensors, then its channel groups.

    Both kinds have ``name``, ``names``, ``spred`` (with ``lam``, ``depth``, ``groups``, ``out_dim`` and
    ``penalty``), ``factors`` (what weight decay ``lam`` applies to) and ``value()``, the tensor the zero
    rule reads (a channel group's is its (channels, entries) matrix, whose rows are its groups).
    """
    return [*sparsified_tensors(model), *channel_groups(model)]


def _require(model: nn.Module, who: str) -> list[SparsifiedTensor | ChannelGroup]:
    """Every sparsified unit of ``model`` (:func:`sparsified_units`); NotSparsifiedError if there is none."""
    tensors = sparsified_units(model)
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

    Each group carries the extra keys ``"spred"`` (bool) and, for spred groups,
    ``"lam"``, ``"names"`` and ``"penalty_in_loss"``, which :func:`set_lam` and the
    training loop use. Every factor's decay comes from its unit
    (``unit.spred.weight_decays``), the one source :func:`penalty` and :func:`set_lam` use too.

    Examples
    --------
    >>> import torch, spred
    >>> model = spred.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)), lam=1e-3)
    >>> opt = torch.optim.Adam(spred.param_groups(model, weight_decay=0.0), lr=1e-2)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.001, 0.0]
    """
    weight_decay = check_float(weight_decay, "weight_decay", "param_groups", 0.0)
    if optimizer is not None and decays_decoupled(optimizer) and not penalty_in_loss:
        warnings.warn(
            f"{getattr(optimizer, '__name__', type(optimizer).__name__)} decays weights decoupled from the gradient, "
            "so the spred factors would not solve the L1 problem with strength lam. Use SGD, Adam or Adagrad, or "
            "pass penalty_in_loss=True and add spred.penalty(model) to the loss.",
            UserWarning,
            stacklevel=2,
        )
    by_decay: dict[tuple[float, float], dict] = {}
    spred_ids = set()
    for t in _require(model, "param_groups"):
        for factor, decay in zip(t.factors, map(float, t.spred.weight_decays(len(t.factors))), strict=True):
            group = by_decay.setdefault(
                (t.spred.lam, decay),
                {"params": [], "weight_decay": 0.0 if penalty_in_loss else decay, "lam": t.spred.lam, "names": [], "spred": True, "penalty_in_loss": bool(penalty_in_loss)},
            )
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
