"""Channel gates: one spred gate per channel group, shared by every tensor slice of the group.

A channel group (found by :mod:`spred.nn._channels`) is a set of slices of several tensors,
e.g. filter ``j`` of a convolution with its bias, entry ``j`` of the following BatchNorm's
scale and shift, and the same channel in every layer tied to it by a residual add. Its gate
is ``D-1`` scalars per channel, ``g_1 ... g_{D-1}``, and every slice of channel ``j`` is
``v = s_j * w`` with ``s_j = g_1j ... g_{D-1,j} / c_j``, where ``w`` is the tensor's own
(trainable) value and ``c_j`` the group's weight. With weight decay ``lam`` on the gates and
on every ``w``, the penalty at balance is, over the whole group::

    lam * sum_j c_j * ||v_j||_2                      D = 2 (group lasso)
    (D*lam/2) * sum_j (c_j * ||v_j||_2)^(2/D)        depth D

so a zero gate makes the whole channel emit exactly 0 (DESIGN.md section 1).

:class:`ChannelGate` holds the gate (a module, saved in the ``state_dict`` of the first tensor
of the group that carries it); :class:`GateScale` is the parametrisation of each tensor, which
multiplies its slices by the scales of every gate that covers them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from spred.nn._parametrizations import checkpoint_lam

GROUP_WEIGHTS = ("size", "flops")


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

    def scale(self) -> torch.Tensor:
        """``s_j = prod_k g_kj / c_j``, one per channel."""
        return self.gates.prod(dim=0) / self.weights

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
        """``(lam/2) * sum ||f||^2`` over the gate and the tensors it owns: what coupled weight decay adds."""
        return 0.5 * self.lam * sum(f.pow(2).sum() for f in factors)

    def penalty_at_balance(self, matrix: torch.Tensor) -> torch.Tensor:
        """The group penalty of the values ``matrix`` (from :meth:`slices`)."""
        norms = matrix.norm(dim=1) * self.weights
        if self.depth == 2:
            return self.lam * norms.sum()
        return 0.5 * self.depth * self.lam * norms.pow(2.0 / self.depth).sum()

    def get_extra_state(self) -> dict:
        return {"lam": self.lam, "depth": self.depth, "n": self.n, "name": self.name}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, Mapping) or "lam" not in state:
            raise ValueError(f"the spred state of channel group '{self.name}' in the checkpoint must be a dict with a 'lam' entry")
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

    def scales(self, like: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:  # the common case (a layer's own channels): the gate's scales as they are
            s = pass_scale(self.whole)
            s = s if s.dtype == like.dtype else s.to(like.dtype)
        else:
            s = like.new_ones(self.size)
            for gate, pos, idx in self.parts:
                s = s.index_copy(0, pos.to(s.device), pass_scale(gate)[idx.to(s.device)].to(s.dtype))
        shape = [1] * self.ndim
        shape[self.dim] = self.size
        return s.view(shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.scales(w)

    def right_inverse(self, v: torch.Tensor) -> torch.Tensor:
        s = self.scales(v)
        return torch.where(s != 0, v / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(v)).contiguous()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, gates={[g.name for g, _, _ in self.parts]}"
