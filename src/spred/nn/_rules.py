"""The rules that decide what is zero and whether a zero is optimal: the one place.

Everything in spred that asks "is this weight (or this neuron, filter, feature) zero?"
or "is this point an L1 / group-L1 minimiser?" calls one of these functions:
``collapse``, ``sparsity_report``, ``kkt_residual``, ``fit``'s history, the
target-sparsity controller, ``prune_channels``, the linear models' zero decision and
the selector. The functions are pure tensor maths (torch only). NumPy callers pass
``torch.from_numpy(a)`` (no copy) and read ``.numpy()`` back.

Units. A *unit* is what a penalty group or a pruning step acts on: a single entry
(``groups=None``), an output neuron / filter (``"out"``: a slice along ``out_dim``) or an
input feature / channel (``"in"``: a slice along the other of the first two dims).

The zero rule. An entry counts as zero when ``|v| <= threshold``; a grouped entry when
the L2 norm of its whole group is ``<= threshold``; an exact 0 always counts. A unit
is zero when every entry of it counts as zero.

The KKT rule (DESIGN.md section 2). At a minimiser of ``L(v) + lam * sum_g ||v_g||``
every zero group has ``||dL/dv_g|| <= lam`` and every nonzero one has
``dL/dv_g = -lam * v_g / ||v_g||``. A magnitude threshold alone misclassifies near the
KKT boundary, so a zero is *decided* by both: small and optimal at zero.
"""

from __future__ import annotations

import torch

GROUPS = (None, "out", "in")


def unit_dim(groups: str | None, out_dim: int = 0) -> int | None:
    """The dimension a group factor keeps: ``out_dim`` for ``"out"``, the other one for ``"in"``."""
    if groups is None:
        return None
    return out_dim if groups == "out" else 1 - out_dim


def reduce_dims(ndim: int, keep: int) -> tuple[int, ...]:
    """Every dimension of an ``ndim``-tensor except ``keep``."""
    return tuple(d for d in range(ndim) if d != keep)


def group_shape(shape: torch.Size | tuple[int, ...], groups: str | None, out_dim: int = 0) -> tuple[int, ...]:
    """Shape of one group factor for a weight of ``shape`` (the full shape when elementwise)."""
    keep = unit_dim(groups, out_dim)
    return tuple(shape) if keep is None else tuple(n if d == keep else 1 for d, n in enumerate(shape))


def group_norms(v: torch.Tensor, groups: str | None, out_dim: int = 0) -> torch.Tensor:
    """``|v|`` elementwise, or the L2 norm of each group, kept broadcastable against ``v``."""
    keep = unit_dim(groups, out_dim)
    if keep is None:
        return v.abs()
    return torch.linalg.vector_norm(v, dim=reduce_dims(v.dim(), keep), keepdim=True)


def zero_mask(v: torch.Tensor, groups: str | None, out_dim: int, threshold: float) -> torch.Tensor:
    """Where ``v`` counts as zero (the zero rule): ``|v| <= threshold`` elementwise, or
    every entry of a group whose norm is ``<= threshold``; an exact 0 always counts."""
    return (group_norms(v, groups, out_dim) <= threshold).expand_as(v) | (v == 0)


def zero_units(v: torch.Tensor, dim: int, threshold: float = 0.0, *, groups: str | None = None, out_dim: int = 0) -> torch.Tensor:
    """Boolean vector over the slices of ``v`` along ``dim``: True where every entry of the
    slice counts as zero under :func:`zero_mask` (the unit structured pruning removes)."""
    zero = zero_mask(v, groups, out_dim, threshold)
    return zero.all(dim=reduce_dims(v.dim(), dim)) if v.dim() > 1 else zero.reshape(-1)


def zero_fraction(values, threshold: float, spreds=None) -> float:
    """Fraction of entries of the tensors ``values`` that count as zero.

    ``spreds`` (parallel to ``values``) gives each tensor's ``groups`` / ``out_dim``
    through objects with those attributes (``SpredProduct``); without it the rule is
    elementwise. This is what ``fit``'s history and the controller report.
    """
    values = list(values)
    numel = sum(v.numel() for v in values)
    if not numel:
        return 0.0
    zeros = 0
    for i, v in enumerate(values):
        sp = spreds[i] if spreds is not None else None
        zeros += int(zero_mask(v, getattr(sp, "groups", None), getattr(sp, "out_dim", 0), threshold).sum())
    return zeros / numel


def kkt_zero(norms: torch.Tensor, grad_norms: torch.Tensor, lam, threshold: float) -> torch.Tensor:
    """The decided zeros of an approximate solution: small *and* optimal at zero.

    ``norms`` are the units' norms (``|v_j|`` or ``||v_g||``), ``grad_norms`` the norms of
    the loss gradient on the same units, ``lam`` the (per-unit) penalty strength. A
    small unit whose gradient is still outside the ball of radius ``lam`` is kept: it
    sits at the KKT boundary or is still growing.
    """
    return (norms <= threshold) & (grad_norms <= lam)


def relative_threshold(norms: torch.Tensor, rel: float) -> float:
    """``rel`` times the largest unit norm (0 for an empty or all-zero tensor): a scale-free threshold."""
    top = float(norms.max()) if norms.numel() else 0.0
    return rel * top if top > 0 else 0.0


def kkt_residuals(
    v: torch.Tensor,
    g: torch.Tensor,
    lam: float,
    *,
    groups: str | None = None,
    out_dim: int = 0,
    depth: int = 2,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-unit L1 / group-L1 optimality residuals of ``v`` given ``g = dL/dv``.

    Returns ``(zero, resid_nonzero, resid_zero)``, broadcastable against ``v`` (one
    value per unit): ``zero`` marks units with norm ``<= threshold``; on the others
    ``resid_nonzero = ||g_u + lam * |v_u|^(2/D-1) v_u/|v_u| ||`` (should be 0); on the
    zero units ``resid_zero = max(||g_u|| - lam, 0)`` (should be 0: a zero is optimal iff
    ``||g_u|| <= lam``). For depth D > 2 a zero is always optimal (the L_{2/D} penalty has
    an infinite slope at 0), so ``resid_zero`` is 0 there.
    """
    nv, ng = group_norms(v, groups, out_dim), group_norms(g, groups, out_dim)
    zero = nv <= threshold
    safe = torch.where(zero, torch.ones_like(nv), nv)
    # lam * |v|^(2/D-1) * v/|v| (D=2: lam * sign v), in an order that cannot overflow for subnormal v
    grad_pen = lam * (v / safe) * safe.pow(2.0 / depth - 1.0)
    resid_nz = group_norms(g + grad_pen, groups, out_dim)
    resid_zero = (ng - lam).clamp_min(0) if depth == 2 else torch.zeros_like(ng)
    resid_nz = torch.where(zero, torch.zeros_like(resid_nz), resid_nz)
    resid_zero = torch.where(zero, resid_zero, torch.zeros_like(resid_zero))
    return zero, resid_nz, resid_zero
