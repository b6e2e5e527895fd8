"""Channel gates: one spred gate per channel group, shared by every tensor slice of the group.

A channel group (found by :mod:`spred.nn._channels`) is a set of slices of several tensors,
e.g. filter ``j`` of a convolution with its bias, entry ``j`` of the following BatchNorm's
scale and shift, and the same channel in every layer tied to it by a residual add. Its gate
is ``D-1`` scalars per channel, ``g_1 ... g_{D-1}``, and every slice of channel ``j`` is
``v = s_j * w`` with::

    s_j = r_j * g_1j * ... * g_{D-1,j},    r_j = cbar / c_j,    cbar = max_j c_j

where ``w`` is the tensor's own (trainable) value, ``c_j`` the channel's group weight and
``cbar`` one scalar per gate (``r_j = 1`` unless a gate mixes group weights, e.g. across a
concatenation). The group weight sits in the gates' weight decay, not in a division:

    weight decay ``a = lam * cbar^(2/(D-1))`` on the gates, ``lam`` on every ``w``.

Penalty at balance. For one channel the D terms ``(a/2) g_k^2`` and ``(lam/2) ||w||^2``
have the product ``(a/2)^(D-1) (lam/2) (||v|| / r)^2``, so by the AM-GM inequality their sum
is at least ``(D/2) (a^(D-1) lam)^(1/D) (||v|| / r)^(2/D)``, with equality when all D terms
are equal. With ``a^(D-1) = lam^(D-1) cbar^2`` and ``1/r = c / cbar`` this bound is, over the
whole group::

    lam * sum_j c_j * ||v_j||_2                      D = 2 (group lasso)
    (D*lam/2) * sum_j (c_j * ||v_j||_2)^(2/D)        depth D

so a zero gate makes the whole channel emit exactly 0 (DESIGN.md section 1). At balance
every gate is ``g_kj = cbar^(-1/(D-1)) (c_j ||v_j||)^(1/D)`` and ``||w_j|| = (c_j ||v_j||)^(1/D)``;
for D = 2 and ``r_j = 1``, ``g_j = sqrt(||v_j|| / c_j)``: with ``c_j`` the square root of the
channel's size, the square root of its RMS entry, the same size as the entries of ``w``.
Adam, whose steps are about ``lr``, closes such a gate in about ``g / lr`` steps. (Dividing by
``c_j`` with decay ``lam`` on the gates gives the same penalty, but gates ``c_j`` times larger.)

Plain SGD sees the gates' curvature ``a``: gradient descent on ``(a/2) g^2`` alone is stable
only for ``lr * a < 2`` (``2 (1 + momentum)`` with heavy-ball momentum); see
:func:`spred.check_optimizer` and docs/channels.md.

:class:`ChannelGate` holds the gate (a module, saved in the ``state_dict`` of the first tensor
of the group that carries it); :class:`GateScale` is the parametrisation of each tensor, which
multiplies its slices by the scales of every gate that covers them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from spred.nn._parametrizations import checkpoint_lam, decay_penalty

GROUP_WEIGHTS = ("size", "flops")
GATE_VERSION = 2  # 2: the group weight in the gates' weight decay (1, unmarked: gates divided by it)


@dataclass
class Member:
    """The slices of one tensor that belong to a gate: positions ``pos`` along ``dim`` are channels ``idx``."""

    name: str  # fully qualified tensor name, e.g. "layer1.0.bn2.weight"
    module: nn.Module
    tensor_name: str
    dim: int
    pos: torch.Tensor  # long, positions along dim
    idx: torch.Tensor  # long, the gate's channel of each position


class ChannelGate(nn.Module):
    """The gate of one channel group: ``gates`` (D-1, n), the group weights ``c`` (n,) and ``lam``.

    ``members`` (not saved: rebuilt by ``sparsify``) are the tensor slices it scales. For the
    zero rule and the KKT conditions a gate presents its group as a matrix with one row per
    channel (:meth:`matrix`), so ``groups = "out"`` applies to that matrix.
    """

    groups = "out"  # the rules see the group as the rows of matrix()
    out_dim = 0

    def __init__(self, name: str, gates: torch.Tensor, weights: torch.Tensor, lam: float):
        super().__init__()
        self.name = name
        self.gates = nn.Parameter(gates)
        self.register_buffer("weights", weights)
        self.lam = float(lam)
        self.members: list[Member] = []

    @property
    def depth(self) -> int:
        return self.gates.shape[0] + 1

    @property
    def n(self) -> int:
        return self.gates.shape[1]

    def cbar(self) -> torch.Tensor:
        """``cbar``: the one group weight of the gate, in its weight decay (the largest ``c_j``: exact when all are equal)."""
        return self.weights.max()

    def scale(self) -> torch.Tensor:
        """``s_j = (cbar / c_j) * prod_k g_kj``, one per channel: the single source of a channel's scale.

        The product over the D-1 rows is written out (``g_1 * g_2 * ...``): for D = 2 it is the row itself, and its
        backward is plain products (``torch.prod``'s backward checks for zeros first, a few times slower on these sizes).
        """
        s = self.gates[0]
        for k in range(1, self.gates.shape[0]):
            s = s * self.gates[k]
        return s * (self.cbar() / self.weights)

    def weight_decays(self, n_factors: int, lam: float | None = None) -> tuple[torch.Tensor | float, ...]:
        """Weight decay of the gate and of the ``n_factors - 1`` tensors it owns: ``(lam * cbar^(2/(D-1)), lam, ...)``.

        The one source of the gates' decay (param groups, :meth:`penalty`, ``set_lam``); ``lam`` defaults to the gate's.
        The gate's is a 0-d tensor on the gate's device (so :meth:`penalty` needs no device sync; ``float()`` it for an
        optimizer).
        """
        lam = self.lam if lam is None else float(lam)
        return (lam * self.cbar().pow(2.0 / (self.depth - 1)), *(lam,) * (n_factors - 1))

    def init_(self, rows: list[torch.Tensor], init: str) -> ChannelGate:
        """Set the gates for the dense values ``rows`` (per channel, its flat slices), keeping ``v``.

        ``"balanced"``: each channel at balance (``g_kj = cbar^(-1/(D-1)) (c_j ||v_j||)^(1/D)``). ``"preserve"``: every
        scale ``s_j = k^(D-1)`` with ``k^D`` the RMS of the group, so every ``w`` is ``v / k^(D-1)``, of the size of the gates.
        """
        depth, c = self.depth, self.weights.double()
        cbar = c.max() if c.numel() else c.new_ones(())
        if init == "balanced":
            norms = torch.stack([r.double().norm() if r.numel() else c.new_zeros(()) for r in rows])
            g = (c * norms).pow(1.0 / depth) * cbar.pow(-1.0 / (depth - 1))
        else:
            flat = torch.cat([r.double() for r in rows]) if rows else c.new_zeros(0)
            rms = float(flat.pow(2).mean().sqrt()) if flat.numel() else 0.0
            k = rms ** (1.0 / depth) if rms > 0 and math.isfinite(rms) else 1.0
            g = (k ** (depth - 1) * c / cbar).pow(1.0 / (depth - 1))  # (cbar / c) * prod of D-1 gates = k^(D-1)
        with torch.no_grad():
            self.gates.copy_(g.expand(depth - 1, -1))
        return self

    def slices(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The group as an (n, entries) matrix, from ``values[member.name]`` (one row per channel).

        Channels with fewer entries than others (a concatenation) are padded with zeros, which change no norm.
        """
        rows: list[list[torch.Tensor]] = [[] for _ in range(self.n)]
        for m in self.members:
            v = values[m.name].movedim(m.dim, 0)
            for p, j in zip(m.pos.tolist(), m.idx.tolist()):
                rows[j].append(v[p].reshape(-1))
        flat = [torch.cat(r) if r else self.gates.new_zeros(0) for r in rows]
        width = max((f.numel() for f in flat), default=0)
        return torch.stack([torch.nn.functional.pad(f, (0, width - f.numel())) for f in flat]) if flat else self.gates.new_zeros(0, 0)

    def effective_lam(self) -> torch.Tensor:
        """Per channel, the slope of the penalty in ``||v_j||`` at balance for D = 2: ``lam * c_j`` (``lam * c_j^(2/D)``)."""
        return self.lam * self.weights.pow(2.0 / self.depth).unsqueeze(1)

    def penalty(self, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``sum_k (a_k/2) ||f_k||^2`` over the gate and the tensors it owns (decays :meth:`weight_decays`): what coupled weight decay adds."""
        return decay_penalty(self.weight_decays(len(factors)), factors)

    def penalty_at_balance(self, matrix: torch.Tensor) -> torch.Tensor:
        """The group penalty of the values ``matrix`` (from :meth:`slices`)."""
        norms = matrix.norm(dim=1) * self.weights
        if self.depth == 2:
            return self.lam * norms.sum()
        return 0.5 * self.depth * self.lam * norms.pow(2.0 / self.depth).sum()

    def get_extra_state(self) -> dict:
        return {"lam": self.lam, "depth": self.depth, "n": self.n, "name": self.name, "version": GATE_VERSION}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, Mapping) or "lam" not in state:
            raise ValueError(f"the spred state of channel group '{self.name}' in the checkpoint must be a dict with a 'lam' entry")
        if state.get("version") != GATE_VERSION:
            raise ValueError(
                f"the checkpoint's channel group '{self.name}' was saved by an older spred, whose gates divided each channel by "
                f"its group weight (v = prod(g) / c * w, decay lam on the gates); this version puts the group weight in the gates' "
                f"weight decay (v = (cbar / c) * prod(g) * w, decay lam * cbar^(2/(D-1))), so those gate values would give another "
                f"model. Sparsify the dense model again, or convert the checkpoint: divide every '...gates' tensor by "
                f"max(weights)^(1/(D-1)) and add 'version': {GATE_VERSION} to its extra state."
            )
        for key in ("depth", "n"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"checkpoint was saved with {key}={state[key]!r} for channel group '{self.name}' but this model has "
                    f"{key}={getattr(self, key)!r}; sparsify the model with the same settings and example_inputs before loading"
                )
        self.lam = checkpoint_lam(state["lam"])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, n={self.n}, depth={self.depth}, lam={self.lam:g}"


class _Pass(threading.local):
    """Per thread: the scales computed during the forward pass of a gated model now running (None outside one)."""

    depth = 0
    scales: dict | None = None


_PASS = _Pass()


def begin_pass(module: nn.Module, args) -> None:
    """Forward pre-hook of a gated model: one pass begins, each gate's scale is computed once in it."""
    if _PASS.depth == 0:
        _PASS.scales = {}
    _PASS.depth += 1


def end_pass(module: nn.Module, args, output) -> None:
    """Forward hook (always called) of a gated model: the pass ends, and with it the reuse of its scales."""
    _PASS.depth = max(0, _PASS.depth - 1)
    if _PASS.depth == 0:
        _PASS.scales = None


def remove_pass_hooks(model: nn.Module) -> None:
    """Remove :func:`begin_pass` / :func:`end_pass` from ``model`` (found by identity: a deep copy has its own)."""
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, h in hooks.items() if h is begin_pass or h is end_pass]:
            del hooks[key]
            model._forward_hooks_always_called.pop(key, None)


def pass_scale(gate: ChannelGate) -> torch.Tensor:
    """``gate.scale()``, computed once per forward pass of the model (one autograd node shared by every tensor the
    gate covers), and afresh outside a pass, so separate passes never share a graph."""
    if _PASS.scales is None:
        return gate.scale()
    key = (id(gate), torch.is_grad_enabled())
    s = _PASS.scales.get(key)
    if s is None:
        s = _PASS.scales[key] = gate.scale()
    return s


def _in_order(part: tuple[ChannelGate, torch.Tensor, torch.Tensor], size: int) -> bool:
    """Whether a gate covers every position of a tensor, position ``j`` taking its channel ``j``."""
    gate, pos, idx = part
    every = torch.arange(size)
    return gate.n == size and pos.shape == idx.shape == every.shape and bool((pos.cpu() == every).all() and (idx.cpu() == every).all())


class GateScale(nn.Module):
    """Parametrisation of one tensor covered by channel gates: ``v = w * s`` along ``dim``.

    ``parts`` are ``(gate, pos, idx)``: the positions ``pos`` of this tensor along ``dim``
    take the scales ``gate.scale()[idx]``; positions no gate covers keep scale 1. The gates
    this tensor carries for the model (``owned``) are registered submodules, so they are
    saved once, in this tensor's parametrisation; the others are plain references.
    """

    def __init__(self, size: int, dim: int, ndim: int, parts: list[tuple[ChannelGate, torch.Tensor, torch.Tensor]], owned: list[ChannelGate]):
        super().__init__()
        self.size, self.dim, self.ndim = int(size), int(dim), int(ndim)
        self.owned = nn.ModuleList(owned)
        self.__dict__["parts"] = parts  # not submodules: a gate is registered once, where it is owned
        self.__dict__["whole"] = parts[0][0] if len(parts) == 1 and _in_order(parts[0], size) else None
        self.position = 0
        self.scale_shape = tuple(self.size if d == self.dim else 1 for d in range(self.ndim))  # of scales(): size along dim

    def scales(self, like: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:  # the common case (a layer's own channels): the gate's scales as they are
            s = pass_scale(self.whole)
            s = s if s.dtype == like.dtype else s.to(like.dtype)
        else:
            s = like.new_ones(self.size)
            for gate, pos, idx in self.parts:
                s = s.index_copy(0, pos.to(s.device), pass_scale(gate)[idx.to(s.device)].to(s.dtype))
        return s if self.ndim == 1 else s.view(self.scale_shape)  # 1-d (a norm's scale and shift): no view, no node for it

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.scales(w)

    def right_inverse(self, v: torch.Tensor) -> torch.Tensor:
        s = self.scales(v)
        return torch.where(s != 0, v / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(v)).contiguous()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, gates={[g.name for g, _, _ in self.parts]}"
