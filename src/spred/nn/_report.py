"""How sparse is a model, and are its zeros real (the L1 optimality check)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from spred._validation import check_float
from spred.nn._channels import ChannelGroup, channel_groups
from spred.nn._rules import kkt_residuals, unit_dim, zero_mask, zero_units
from spred.nn._sparsify import _require, sparsified_tensors


@dataclass(frozen=True)
class TensorSparsity:
    """One row of a :class:`SparsityReport`."""

    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    groups: str | None  # the penalty groups ("out"/"in"/"channels"), None when elementwise or not sparsified
    n_groups: int  # output neurons/filters (or input features for groups="in"); 0 for 1-d tensors
    zero_groups: int  # groups whose entries are all zero
    lam: float | None  # None: not sparsified

    @property
    def nonzero(self) -> int:
        return self.numel - self.zeros

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class GroupSparsity:
    """One channel group of a :class:`SparsityReport` (``sparsify(..., groups="channels")``)."""

    name: str
    n: int  # channels
    zero: int  # channels whose whole group counts as zero
    lam: float


@dataclass(frozen=True)
class SparsityReport:
    """Zeros per parameter tensor of a model (buffers such as BatchNorm statistics never count).

    ``total`` counts every parameter of the model (weights and biases), ``nonzero``
    those that are not exactly zero (or ``<= threshold`` in absolute value), and
    ``compression_ratio = total / nonzero``.
    """

    rows: tuple[TensorSparsity, ...]
    threshold: float = 0.0
    groups: tuple[GroupSparsity, ...] = ()  # channel groups, one row each

    @property
    def total(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def nonzero(self) -> int:
        return sum(r.nonzero for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters that are zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    @property
    def sparsified_sparsity(self) -> float:
        """Fraction of zeros among the sparsified tensors only."""
        rows = [r for r in self.rows if r.lam is not None]
        n = sum(r.numel for r in rows)
        return sum(r.zeros for r in rows) / n if n else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.total / self.nonzero if self.nonzero else math.inf

    def __getitem__(self, name: str) -> TensorSparsity:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        head = ("tensor", "shape", "numel", "zeros", "sparsity", "zero groups", "lam")
        lines = [
            (
                r.name,
                "x".join(map(str, r.shape)),
                str(r.numel),
                str(r.zeros),
                f"{100 * r.sparsity:.1f}%",
                f"{r.zero_groups}/{r.n_groups}" + (f" ({r.groups})" if r.groups else "") if r.n_groups else "-",
                "-" if r.lam is None else f"{r.lam:.3g}",
            )
            for r in self.rows
        ]
        lines.append(("total", "", str(self.total), str(self.total - self.nonzero), f"{100 * self.sparsity:.1f}%", "", ""))
        widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        rule = "-" * len(fmt(head))
        out = [fmt(head), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])]
        out.append(f"nonzero {self.nonzero} of {self.total} parameters: compression ratio {self.compression_ratio:.2f}x")
        if self.groups:
            out.append(f"channel groups: {sum(g.zero for g in self.groups)} of {sum(g.n for g in self.groups)} channels zero in {len(self.groups)} groups")
            out += [f"  {g.name:<40} {g.zero:>6}/{g.n:<6} lam {g.lam:.3g}" for g in self.groups]
        return "\n".join(out)


def _effective_tensors(model: nn.Module):
    """(name, tensor, spred-or-None) for every parameter as the model sees it, each once."""
    spred_of = {}  # id(module) -> {tensor name: SpredProduct}, every place of a tied weight
    for t in sparsified_tensors(model):
        for _, module, tname in ((t.name, t.module, t.tensor_name), *t.aliases):
            spred_of.setdefault(id(module), {})[tname] = t.spred
    seen = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations" in f".{mod_name}":
            continue
        names = list(module.parametrizations) if parametrize.is_parametrized(module) else []
        names += [n for n in module._parameters if n not in names]
        for tname in names:
            value = getattr(module, tname)
            if value is None:
                continue
            key = id(module.parametrizations[tname]) if parametrize.is_parametrized(module, tname) else id(value)
            if key in seen:
                continue
            seen.add(key)
            fqn = f"{mod_name}.{tname}" if mod_name else tname
            yield fqn, module, value, spred_of.get(id(module), {}).get(tname)


@torch.no_grad()
def sparsity_report(model: nn.Module, *, threshold: float = 0.0) -> SparsityReport:
    """Count zeros in every parameter tensor of ``model`` (sparsified or collapsed).

    Entries count as zero where ``collapse(model, threshold=threshold)`` would write
    a zero (``|v| <= threshold``; for grouped tensors, a whole group whose norm is
    ``<= threshold``) or where they are exactly zero already, so the report of a
    sparsified model predicts the collapsed one. For sparsified tensors the product
    ``v`` is what is counted. Zero
    groups are whole output neurons/filters (input features for ``groups="in"``)
    that are entirely zero, the unit that structured pruning removes.

    Examples
    --------
    >>> import torch, spred
    >>> net = spred.sparsify(torch.nn.Linear(4, 2), lam=0.1)
    >>> spred.sparsity_report(net).total
    10
    """
    threshold = check_float(threshold, "threshold", "sparsity_report", 0.0)
    gated, groups_rows = _gated_zeros(channel_groups(model), threshold)
    rows = []
    for name, module, value, spred in _effective_tensors(model):
        v = value.detach()
        if name in gated:  # a tensor of channel groups: its slices in zero groups, or already 0
            dim, zero_pos, lam = gated[name]
            zero = (v == 0) | _along(zero_pos.to(v.device), dim, v.dim())
            n_groups, zero_groups = v.shape[dim], int(zero.all(dim=tuple(d for d in range(v.dim()) if d != dim)).sum()) if v.dim() > 1 else int(zero.sum())
            rows.append(TensorSparsity(name, tuple(v.shape), v.numel(), int(zero.sum()), "channels", n_groups, zero_groups, lam))
            continue
        groups = spred.groups if spred is not None else None
        out_dim = spred.out_dim if spred is not None else int(isinstance(module, nn.modules.conv._ConvTransposeNd))
        # Zero where collapse(threshold) would write a zero (whole groups for grouped tensors), or already 0.
        zero = zero_mask(v, groups, out_dim, threshold)
        n_groups, zero_groups = 0, 0
        if v.dim() >= 2:  # whole output neurons / filters (input features for groups="in")
            keep = unit_dim(groups or "out", out_dim)
            n_groups, zero_groups = v.shape[keep], int(zero_units(v, keep, threshold, groups=groups, out_dim=out_dim).sum())
        rows.append(
            TensorSparsity(name, tuple(v.shape), v.numel(), int(zero.sum()), groups, n_groups, zero_groups, None if spred is None else spred.lam)
        )
    return SparsityReport(tuple(rows), threshold, groups_rows)


def _along(mask: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return mask.view(shape)


def _gated_zeros(groups: list[ChannelGroup], threshold: float) -> tuple[dict, tuple[GroupSparsity, ...]]:
    """``{tensor name: (dim, positions in zero groups, lam)}`` and one row per group, as collapse would decide."""
    gated: dict[str, tuple] = {}
    rows = []
    for g in groups:
        zero = g.zero_channels(threshold)
        rows.append(GroupSparsity(g.name, g.n, int(zero.sum()), g.lam))
        for m in g.members:
            size = getattr(m.module, m.tensor_name).shape[m.dim]
            dim, pos, lam = gated.setdefault(m.name, (m.dim, torch.zeros(size, dtype=torch.bool), g.lam))
            pos[m.pos[zero.cpu()[m.idx]]] = True
    return gated, tuple(rows)


@dataclass(frozen=True)
class KKTReport:
    """L1 optimality residuals of a sparsified model on one batch.

    For each sparsified tensor with gradient ``g = dL/dv`` (depth 2; groups use norms):

    * nonzero entries: ``|g + lam * sign(v)|`` (should be 0);
    * zero entries: ``max(|g| - lam, 0)`` (should be 0: a zero is optimal iff ``|g| <= lam``).

    ``max`` is the largest residual over all tensors, ``relative`` the same divided
    by lam. ``other`` is the largest ``|dL/dp|`` over the parameters that are not
    sparsified (0 at a stationary point if they carry no weight decay).
    """

    per_tensor: dict[str, dict] = field(default_factory=dict)
    other: float = 0.0
    threshold: float = 0.0

    @property
    def max(self) -> float:
        return max((r["max"] for r in self.per_tensor.values()), default=0.0)

    @property
    def relative(self) -> float:
        return max((r["max"] / r["lam"] if r["lam"] > 0 else math.inf * (r["max"] > 0) for r in self.per_tensor.values()), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'tensor':<28}{'lam':>10}{'zeros':>9}{'max resid':>12}{'zero viol':>11}{'nonzero resid':>15}"]
        for name, r in self.per_tensor.items():
            lines.append(f"{name:<28}{r['lam']:>10.3g}{r['zeros']:>9}{r['max']:>12.2e}{r['max_zero']:>11.2e}{r['max_nonzero']:>15.2e}")
        lines.append(f"max residual {self.max:.3e} (relative to lam {self.relative:.3e}); other parameters' max |grad| {self.other:.3e}")
        return "\n".join(lines)


def kkt_residual(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    batch,
    *,
    threshold: float = 0.0,
) -> KKTReport:
    """The L1 optimality gap of a sparsified model on ``batch`` (DESIGN.md section 2).

    The loss is ``loss_fn(model(inputs), targets)`` with ``inputs, targets = batch``
    (``inputs`` may be a tuple of positional inputs). Its gradient with respect to
    every effective weight ``v`` is compared with the subdifferential of the
    penalty: a point is an L1 minimiser iff every residual is 0. Weights with
    ``|v| <= threshold`` (group norm for grouped tensors) count as zero; with SGD
    use 0, with Adam a threshold around ``lr**2`` or above. The model's mode and
    buffers (BatchNorm statistics) are left as they were.

    For depth D > 2 the nonzero residual uses the L_{2/D} gradient
    ``lam * |v|^(2/D-1) sign(v)`` and zero entries always count as optimal.
    """
    threshold = check_float(threshold, "threshold", "kkt_residual", 0.0)
    tensors = _require(model, "kkt_residual")
    inputs, targets = batch
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    spred_ids = {id(f) for t in tensors for f in t.factors}
    others = {n: p for n, p in model.named_parameters() if id(p) not in spred_ids and p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    groups = [t for t in tensors if isinstance(t, ChannelGroup)]
    tensors = [t for t in tensors if not isinstance(t, ChannelGroup)]
    places = [(i, m, tn) for i, t in enumerate(tensors) for _, m, tn in ((t.name, t.module, t.tensor_name), *t.aliases)]
    members = list({m.name: (m.name, m.module, m.tensor_name) for g in groups for m in g.members}.values())
    places += [(name, m, tn) for name, m, tn in members]  # gated tensors: keyed by name
    try:
        # Inside cached() every weight is computed once per module, so the forward pass uses exactly
        # these tensors and autograd can differentiate the loss with respect to them.
        with torch.enable_grad(), parametrize.cached():
            used = [getattr(m, tn) for _, m, tn in places]
            loss = loss_fn(model(*inputs), targets)
            grads = torch.autograd.grad(loss, [*used, *others.values()], allow_unused=True)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    # dL/dv of a tied weight is the sum over the modules that use it
    values, total = [None] * len(tensors), [None] * len(tensors)
    gated_v, gated_g = {}, {}
    for (i, _, _), v, g in zip(places, used, grads):
        if isinstance(i, str):
            gated_v[i], gated_g[i] = v.detach(), (torch.zeros_like(v) if g is None else g)
            continue
        values[i] = v.detach()
        if g is not None:
            total[i] = g if total[i] is None else total[i] + g
    per_tensor = {}
    with torch.no_grad():
        for t, v, g in zip(tensors, values, total):
            g = torch.zeros_like(v) if g is None else g
            sp = t.spred
            zero, resid_nz, resid_zero = kkt_residuals(v, g, sp.lam, groups=sp.groups, out_dim=sp.out_dim, depth=sp.depth, threshold=threshold)
            max_nz, max_z = float(resid_nz.max()) if resid_nz.numel() else 0.0, float(resid_zero.max()) if resid_zero.numel() else 0.0
            per_tensor[t.name] = {
                "lam": sp.lam,
                "zeros": int(zero.expand_as(v).sum()),
                "max": max(max_nz, max_z),
                "max_zero": max_z,
                "max_nonzero": max_nz,
            }
        for grp in groups:  # the group as a (channels, entries) matrix; lam weighted per channel
            gate = grp.spred
            zero, resid_nz, resid_zero = kkt_residuals(gate.slices(gated_v), gate.slices(gated_g), gate.effective_lam(), groups="out", depth=gate.depth, threshold=threshold)
            max_nz, max_z = float(resid_nz.max()) if resid_nz.numel() else 0.0, float(resid_zero.max()) if resid_zero.numel() else 0.0
            per_tensor[grp.name] = {"lam": gate.lam, "zeros": int(zero.sum()), "max": max(max_nz, max_z), "max_zero": max_z, "max_nonzero": max_nz}
        other = max((float(g.abs().max()) for g in grads[len(places) :] if g is not None and g.numel()), default=0.0)
    return KKTReport(per_tensor, other, threshold)
