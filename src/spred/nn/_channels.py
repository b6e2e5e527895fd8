"""Channel groups across layers: ``sparsify(model, lam, groups="channels", example_inputs=x)``.

The groups come from Torch-Pruning's dependency graph (:mod:`spred.nn._graph`): for every
layer of an ``include`` type whose output channels are not yet in a group, the graph gives
every slice coupled with them. spred gates the *producing* slices (the layer's filters and
bias, the norms' scale and shift, every producer tied by residual adds, concatenation or
depthwise convolutions), so a zero gate makes the channel emit exactly 0 and the input
slices of the layers that read it can be removed (:func:`spred.compress.prune_channels`).
Those input slices are not gated: each belongs to the output channel of its own layer.

A group is left dense, with the reason logged and kept in :func:`skipped_channel_groups`,
when its channels are outputs of the model, when a producer is excluded or of a type spred
cannot gate (an Embedding, a free ``nn.Parameter`` such as a position embedding), or when
it runs through attention projections (``heads=True`` gates those by whole heads).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred._inputs import split_inputs
from spred._validation import check_choice, param_error
from spred.nn._gates import GROUP_WEIGHTS, ChannelGate, GateScale, Member
from spred.nn._graph import Attention, build_graph, dependency_groups, find_attention, producer_slices

logger = logging.getLogger(__name__)
WHO = "sparsify"


@dataclass
class _Spec:
    """A channel group before registration: its slices as ``{(module, param): (fqn, dim, [(pos, channel)])}``."""

    name: str
    n: int
    slices: dict = field(default_factory=dict)
    macs: list[float] | None = None

    def add(self, module: nn.Module, fqn: str, pname: str, dim: int, pos: int, channel: int) -> None:
        entry = self.slices.setdefault((module, pname), (f"{fqn}.{pname}" if fqn else pname, dim, []))
        if (pos, channel) not in entry[2]:
            entry[2].append((pos, channel))


@dataclass(frozen=True)
class ChannelGroup:
    """One channel group of a sparsified model, as :func:`channel_groups` lists it.

    ``spred`` is its :class:`ChannelGate` (``lam``, ``depth``, ``weights``), ``factors`` the
    trainable tensors whose weight decay (``spred.weight_decays``) makes its penalty (the gate, then the tensors it owns),
    ``members`` the tensor slices it scales.
    """

    name: str
    spred: ChannelGate
    factors: tuple[torch.Tensor, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def n(self) -> int:
        return self.spred.n

    @property
    def members(self) -> list[Member]:
        return self.spred.members

    @property
    def lam(self) -> float:
        return self.spred.lam

    def value(self) -> torch.Tensor:
        """The group's current values as an (n, entries) matrix, one row per channel."""
        return self.spred.slices({m.name: getattr(m.module, m.tensor_name) for m in self.members})

    def zero_channels(self, threshold: float = 0.0) -> torch.Tensor:
        """Boolean (n,): channels whose whole group counts as zero (:func:`spred.nn._rules.zero_mask` on the rows)."""
        from spred.nn._rules import zero_mask

        with torch.no_grad():
            v = self.value()
        return zero_mask(v, "out", 0, threshold).all(dim=1) if v.numel() else torch.ones(self.n, dtype=torch.bool)


def _gate_scales(model: nn.Module):
    """``(module, tensor name, GateScale)`` for every tensor carrying channel gates."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, GateScale):
                    yield module, tname, p


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every channel group of ``model`` (``sparsify(..., groups="channels")``), in the order they were found."""
    owner: dict[int, list[torch.Tensor]] = {}
    gates: list[ChannelGate] = []
    for module, tname, scale in _gate_scales(model):
        gates.extend(scale.owned)
        if scale.parts:  # the tensor's own value is decayed with the first gate that covers it
            owner.setdefault(id(scale.parts[0][0]), []).append(module.parametrizations[tname].original)
    return [ChannelGroup(g.name, g, (g.gates, *owner.get(id(g), ()))) for g in gates]


def skipped_channel_groups(model: nn.Module) -> list[dict]:
    """The dependency groups ``sparsify(groups="channels")`` left dense, each with its reason."""
    return list(getattr(model, "_spred_skipped_groups", []))


# ---------------------------------------------------------------------------
# Finding the groups
# ---------------------------------------------------------------------------


def _group_problem(DG, tp, group, out_fns, names, exclude, projections) -> str | None:
    """Why a dependency group cannot be gated, or ``None``."""
    for item in group:
        node, handler = item.dep.target, item.dep.handler
        pad = getattr(node.grad_fn, "_saved_pad", None) if node.grad_fn is not None else None
        if pad is not None and any(pad[4:]):
            return "a zero padding over channels (e.g. the option-A shortcut of a ResNet) couples them in a way Torch-Pruning cannot follow"
        if not DG.is_out_channel_pruning_fn(handler):
            continue
        if node.type == tp.ops.OPTYPE.OUTPUT or node.grad_fn in out_fns:
            return "its channels are outputs of the model"
        module = node.module
        if not isinstance(module, nn.Module):
            if isinstance(module, torch.Tensor):
                return "a free parameter (e.g. a position embedding) produces these channels, and spred cannot gate it"
            continue
        name = names.get(module, type(module).__name__)
        if module in projections:
            return f"it runs through the attention projection '{name}' (pass heads=True to gate whole heads)"
        if any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(f"{name}.weight", pat) for pat in exclude):
            return f"'{name}' is excluded"
        slices = producer_slices(module)
        if slices is None:
            return f"'{name}' ({type(module).__name__}) produces these channels, and spred cannot gate that layer type"
        if any(int(i) >= getattr(module, p).shape[d] for p, d in slices for i in item.idxs):
            return f"Torch-Pruning maps these channels outside '{name}' (an operation on the way it does not follow)"
    return None


def _spec_of(DG, group, name: str, n: int, names: dict) -> _Spec:
    spec = _Spec(name, n)
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not DG.is_out_channel_pruning_fn(item.dep.handler):
            continue
        for pname, dim in producer_slices(module) or []:
            for pos, root in zip(item.idxs, item.root_idxs):
                spec.add(module, names[module], pname, dim, int(pos), int(root))
    return spec


def _dependency_groups(model, DG, tp, out_fns, included, exclude, projections) -> tuple[list[_Spec], list[dict]]:
    """One spec per dependency group rooted at a layer of an ``include`` type, and the skipped groups."""
    names = {m: n for n, m in model.named_modules()}
    specs, skipped = [], []
    for name, module, remaining, group in dependency_groups(model, DG, lambda m: included(m) and m not in projections):
        problem = _group_problem(DG, tp, group, out_fns, names, exclude, projections)
        if problem is not None:
            skipped.append({"group": name, "channels": len(remaining), "reason": problem})
            continue
        spec = _spec_of(DG, group, name, len(remaining), names)  # channels are numbered in the order of `remaining`
        position = {r: j for j, r in enumerate(remaining)}
        for fqn, dim, pairs in spec.slices.values():
            pairs[:] = [(p, position[r]) for p, r in pairs if r in position]
        specs.append(spec)
    return specs, skipped


def _head_specs(model: nn.Module, attention: list[Attention]) -> list[_Spec]:
    names = {m: n for n, m in model.named_modules()}
    specs = []
    for att in attention:
        spec = _Spec(f"{att.name}:heads", att.num_heads)
        for module, pname, dim, rows in att.head_rows():
            for pos, head in rows:
                spec.add(module, names[module], pname, dim, pos, head)
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------
# Weights, initial values and registration
# ---------------------------------------------------------------------------


def _matrix(spec: _Spec) -> list[torch.Tensor]:
    """Per channel, the flat values of all its slices (the dense weights, before registration)."""
    rows: list[list[torch.Tensor]] = [[] for _ in range(spec.n)]
    for (module, pname), (_, dim, pairs) in spec.slices.items():
        v = getattr(module, pname).detach().movedim(dim, 0)
        for pos, j in pairs:
            rows[j].append(v[pos].reshape(-1))
    return [torch.cat(r) if r else torch.zeros(0) for r in rows]


def _weights(spec: _Spec, rows: list[torch.Tensor], group_weight: str | None) -> torch.Tensor:
    sizes = torch.tensor([float(r.numel()) for r in rows], dtype=torch.float64)
    if group_weight is None:
        return torch.ones(spec.n, dtype=torch.float64)
    root = sizes.clamp_min(1.0).sqrt()
    if group_weight == "size" or spec.macs is None:
        return root
    macs = torch.tensor(spec.macs, dtype=torch.float64)
    return macs / macs.mean().clamp_min(1.0) * root.mean() if float(macs.sum()) > 0 else root


def _register(specs: list[_Spec], gates: list[ChannelGate]) -> None:
    """One GateScale per tensor, holding the parts of every gate that covers it; each gate owned by its first tensor."""
    per_tensor: dict[tuple[int, str], list] = {}
    order: list[tuple[nn.Module, str]] = []
    for spec, gate in zip(specs, gates):
        for (module, pname), (fqn, dim, pairs) in spec.slices.items():
            pos = torch.tensor([p for p, _ in pairs], dtype=torch.long)
            idx = torch.tensor([j for _, j in pairs], dtype=torch.long)
            gate.members.append(Member(fqn, module, pname, dim, pos, idx))
            key = (id(module), pname)
            if key not in per_tensor:
                per_tensor[key] = []
                order.append((module, pname))
            per_tensor[key].append((gate, pos, idx, dim))
    owned_by: dict[int, tuple[int, str]] = {}
    for module, pname in order:
        for gate, *_ in per_tensor[(id(module), pname)]:
            owned_by.setdefault(id(gate), (id(module), pname))
    positions = {(id(m), p): list(m._parameters).index(p) for m, p in order}  # before any registration moves them
    for module, pname in order:
        parts = per_tensor[(id(module), pname)]
        dims = {d for *_, d in parts}
        tensor = getattr(module, pname)
        owned = [g for g, *_ in parts if owned_by[id(g)] == (id(module), pname)]
        owned = list({id(g): g for g in owned}.values())
        scale = GateScale(tensor.shape[dims.pop()], parts[0][3], tensor.dim(), [(g, p, i) for g, p, i, _ in parts], owned)
        scale.position = positions[(id(module), pname)]
        parametrize.register_parametrization(module, pname, scale)


def _flops(model, inputs, specs: list[_Spec], DG) -> None:
    """``spec.macs``: per channel, the multiply-adds its producing slices cost on one example (for group_weight='flops')."""
    spatial: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: spatial.__setitem__(m, o[0, 0].numel() if o.dim() > 2 else 1))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]  # fmt: skip
    try:
        with torch.no_grad():
            args, kwargs = inputs
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    for spec in specs:
        macs = [0.0] * spec.n
        for (module, pname), (_, dim, pairs) in spec.slices.items():
            if pname != "weight" or module not in spatial:
                continue
            per = getattr(module, pname)[0].numel() if dim == 0 else getattr(module, pname).select(dim, 0).numel()
            for _, j in pairs:
                macs[j] += per * spatial[module]
        spec.macs = macs


def _check_lams(specs: list[_Spec], lam_map: Mapping[str, float]) -> list[float]:
    """lam of each group (first matching glob on its name); a tensor shared by groups must get one lam."""
    lams = []
    for spec in specs:
        key = next((k for k in lam_map if fnmatch.fnmatchcase(spec.name, k)), None)
        lams.append(None if key is None else lam_map[key])
    by_tensor: dict[tuple[int, str], set] = {}
    for spec, lam in zip(specs, lams):
        for (module, pname), (fqn, *_) in spec.slices.items():
            by_tensor.setdefault((id(module), fqn), set()).add(lam)
    for (_, fqn), values in by_tensor.items():
        if len(values) > 1:
            raise ValueError(f"'{fqn}' belongs to channel groups that would get different lam values {sorted(values, key=str)}; give them one lam.")
    return lams


def sparsify_channels(model: nn.Module, lam_map: Mapping[str, float], *, depth: int, included, exclude, init: str, example_inputs, heads, group_weight) -> nn.Module:
    """The ``groups="channels"`` branch of :func:`spred.sparsify` (arguments already checked there)."""
    if example_inputs is None:
        raise ValueError("groups='channels' needs example_inputs: a batch the model takes (e.g. example_inputs=torch.randn(2, 3, 32, 32)), "
                         "to trace which channels are coupled across layers.")  # fmt: skip
    if not (isinstance(heads, bool) or (isinstance(heads, int) and heads > 0)):
        raise param_error(TypeError if not isinstance(heads, int) else ValueError, "heads", WHO, "a bool or a positive int (the head count)", heads)
    check_choice(group_weight, "group_weight", WHO, (*GROUP_WEIGHTS, None))
    inputs = split_inputs(example_inputs, WHO)
    attention = find_attention(model, heads)
    if heads is not False and not any(a.num_heads for a in attention):
        raise ValueError(f"heads={heads!r}, but spred found no attention module whose heads it can map in {type(model).__name__} "
                         "(it knows nn.MultiheadAttention, a 'qkv' Linear with num_heads as in timm's ViT, GPT-2's 'c_attn' and "
                         "BERT's query/key/value).")  # fmt: skip
    projections = {p for a in attention for p in a.projections}
    for module in model.modules():
        if parametrize.is_parametrized(module):
            raise ValueError(f"groups='channels' needs a model without parametrizations; {type(module).__name__} already carries "
                             f"{list(module.parametrizations)} (use spred.collapse first to start over).")  # fmt: skip
    training = model.training
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        model.eval()
        tp, DG, out_fns = build_graph(model, inputs, WHO)
        specs, skipped = _dependency_groups(model, DG, tp, out_fns, included, exclude, projections)
        if heads is not False:
            specs += _head_specs(model, [a for a in attention if a.num_heads])
        if group_weight == "flops":
            _flops(model, inputs, specs, DG)
    finally:
        model.train(training)
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad[n])
    lams = _check_lams(specs, lam_map)
    keep = [(s, lam) for s, lam in zip(specs, lams) if lam is not None and s.slices]
    if not keep:
        reasons = "; ".join(f"{s['group']}: {s['reason']}" for s in skipped[:5])
        raise ValueError(f"sparsify(groups='channels') found no channel group to gate in {type(model).__name__}" + (f" ({reasons})" if reasons else "") + ".")
    gates = []
    for spec, lam in keep:
        rows = _matrix(spec)
        weights = _weights(spec, rows, group_weight)
        first = getattr(*next(iter(spec.slices)))
        dtype, device = first.dtype, first.device
        ones = torch.ones(depth - 1, spec.n, device=device, dtype=dtype)
        gates.append(ChannelGate(spec.name, ones, weights.to(device=device, dtype=dtype), lam).init_(rows, init))
    _register([s for s, _ in keep], gates)
    model._spred_skipped_groups = skipped
    for s in skipped:
        logger.info("sparsify: channel group of '%s' (%d channels) left dense: %s", s["group"], s["channels"], s["reason"])
    logger.info("sparsify: %d channel groups gated (%d channels), %d left dense", len(gates), sum(g.n for g in gates), len(skipped))
    return model
