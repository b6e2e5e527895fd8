"""The spred parametrisation: a weight written as a product of D factors.

Elementwise (``groups=None``): ``v = u_1 * ... * u_D``, every factor of the weight's
shape. Grouped (``groups="out"`` / ``"in"``): the first D-1 factors hold one scalar per
group (an output neuron/filter, or an input feature/channel) and broadcast; the last
factor has the weight's shape.

With weight decay ``lam`` on every factor, the penalty ``(lam/2) * sum_k ||u_k||^2``
equals, at its minimum over all factorisations of the same ``v`` ("balance"):

* ``lam * ||v||_1``                       for D = 2, elementwise (lasso);
* ``lam * sum_g ||v_g||_2``               for D = 2, grouped (group lasso);
* ``(D*lam/2) * sum |v|^(2/D)``           for depth D (elementwise; the L_{2/D} penalty);
* ``(D*lam/2) * sum_g ||v_g||_2^(2/D)``   for depth D, grouped.

Everything here is pure tensor maths; registration lives in ``_sparsify.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from spred._validation import check_float
from spred.nn._fastpath import product
from spred.nn._rules import GROUPS, group_norms, group_shape  # noqa: F401  (GROUPS re-exported)

INITS = ("preserve", "balanced")
MAX_DEPTH = 16  # why: see sparsify's docstring (each factor is a trainable copy; the penalty is near L0 by then)


def balanced_split(v: torch.Tensor, groups: str | None = None, depth: int = 2, out_dim: int = 0) -> tuple[torch.Tensor, ...]:
    """Factors of ``v`` at balance: every factor has the same (group) norm ``|v_g|^(1/D)``.

    The penalty is then minimal for this ``v``: ``(lam/2) sum_k ||u_k||^2`` equals the
    L1 / group-L1 / L_{2/D} penalty of ``v``. The sign (or direction) is carried by the
    last factor. Zero weights give all-zero factors, a stationary point that gradient
    methods never leave. Do not *start* training elementwise factors here: the line
    ``u = -w`` is invariant, so signs can never change (the "sign trap", DESIGN.md
    section 1); use it for tests and for polishing once signs have settled.
    """
    norms = group_norms(v, groups, out_dim)
    root = norms.pow(1.0 / depth)
    scalars = [root.clone() for _ in range(depth - 1)]
    if groups is None:
        return (*scalars, torch.sign(v) * root)  # exactly on the line u_k = +-last
    denom = root.pow(depth - 1)
    last = torch.where(denom > 0, v / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(v))
    return (*scalars, last)


def preserving_split(v: torch.Tensor, groups: str | None = None, depth: int = 2, out_dim: int = 0) -> tuple[torch.Tensor, ...]:
    """Function-preserving, deliberately unbalanced split (the default init).

    The first D-1 factors are one positive constant ``c`` per tensor (``c^D`` is the
    RMS of ``v``) and the last is ``v / c^(D-1)``. The product is ``v`` exactly up to
    rounding, every weight can still change sign, and the imbalance decays at rate
    ``2*lam`` under gradient flow, so training reaches balance by itself.
    """
    shape = group_shape(v.shape, groups, out_dim)
    rms = float(v.detach().double().pow(2).mean().sqrt()) if v.numel() else 0.0
    c = rms ** (1.0 / depth) if rms > 0 and math.isfinite(rms) else 1.0
    scalars = [torch.full(shape, c, dtype=v.dtype, device=v.device) for _ in range(depth - 1)]
    return (*scalars, v / c ** (depth - 1))


def decay_penalty(decays: tuple[torch.Tensor | float, ...], factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``sum_k (a_k/2) * ||f_k||^2``: what coupled weight decay ``a_k`` on each factor ``f_k`` adds to the loss."""
    return 0.5 * sum(a * f.pow(2).sum() for a, f in zip(decays, factors, strict=True))


def checkpoint_lam(lam) -> float:
    """``lam`` as read from a checkpoint's spred state, checked (a corrupt file is a ValueError, whatever its type)."""
    if isinstance(lam, torch.Tensor) and lam.numel() == 1:
        lam = lam.item()
    try:
        return check_float(lam, "lam", "the checkpoint's spred state", 0.0)
    except TypeError as e:
        raise ValueError(str(e)) from None


class SpredProduct(nn.Module):
    """Parametrisation ``weight = u_1 * ... * u_D`` with spred's settings attached.

    ``lam`` (the coupled weight decay on every factor), ``groups``, ``depth`` and
    ``init`` are stored here and saved with the model's ``state_dict`` (as extra
    state), so a checkpoint restores an adapted ``lam``.
    """

    def __init__(self, lam: float, groups: str | None = None, depth: int = 2, init: str = "preserve", out_dim: int = 0):
        super().__init__()
        self.lam = float(lam)
        self.groups = groups
        self.depth = int(depth)
        self.init = init
        self.out_dim = int(out_dim)

    def forward(self, *factors: torch.Tensor) -> torch.Tensor:
        return product(factors)

    def right_inverse(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        split = preserving_split if self.init == "preserve" else balanced_split
        return tuple(f.contiguous() for f in split(v, self.groups, self.depth, self.out_dim))

    def weight_decays(self, n_factors: int, lam: float | None = None) -> tuple[float, ...]:
        """Weight decay of each factor: ``lam`` (the model's, by default) on all of them."""
        return (self.lam if lam is None else float(lam),) * n_factors

    def penalty(self, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``(lam/2) * sum_k ||u_k||^2``: what coupled weight decay ``lam`` adds to the loss."""
        return decay_penalty(self.weight_decays(len(factors)), factors)

    def penalty_at_balance(self, v: torch.Tensor) -> torch.Tensor:
        """The sparsity penalty of ``v`` itself (L1, group L1 or L_{2/D})."""
        norms = group_norms(v, self.groups, self.out_dim)
        if self.groups is not None:
            norms = norms.flatten()
        if self.depth == 2:
            return self.lam * norms.sum()
        return 0.5 * self.depth * self.lam * norms.pow(2.0 / self.depth).sum()

    def get_extra_state(self) -> dict:
        return {"lam": self.lam, "groups": self.groups, "depth": self.depth, "out_dim": self.out_dim}

    def set_extra_state(self, state: dict) -> None:
        """Restore ``lam`` from a checkpoint, refusing settings that differ from this model's and a bad ``lam``."""
        if not isinstance(state, Mapping) or "lam" not in state:
            found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"the spred state in the checkpoint must be a dict with a 'lam' entry (as saved by spred); got {found}")
        for key in ("groups", "depth", "out_dim"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"checkpoint was saved with {key}={state[key]!r} but this model was sparsified with "
                    f"{key}={getattr(self, key)!r}; sparsify the model with the same settings before loading"
                )
        self.lam = checkpoint_lam(state["lam"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Name the tensor in a refused checkpoint: prefix is "<module>.parametrizations.<tensor>.<index>."
        parts = prefix.rstrip(".").split(".")
        name = ".".join([*parts[:-3], parts[-2]]) if len(parts) >= 3 and parts[-3] == "parametrizations" else prefix.rstrip(".")
        try:
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        except ValueError as e:
            if not name:
                raise
            raise ValueError(f"cannot load the spred state of '{name}': {e}") from None

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}, groups={self.groups!r}, depth={self.depth}"
