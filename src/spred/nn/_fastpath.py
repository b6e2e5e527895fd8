"""The fast path: the same spred maths with less memory traffic per training step.

Two mechanisms, both exact (the same function and gradients up to rounding):

* **Group factors in activation space.** For ``groups="out"`` on ``Linear`` / ``Conv1d``
  / ``Conv2d``, ``(s * W) x + b = s * (W x) + b``: the layer runs on the last factor ``W``
  and its output is scaled per channel (bias added after), so the product ``s * W`` and
  its two weight-sized gradients are never formed. For ``groups="in"``,
  ``(s * W) x = W (s * x)``: the input is scaled instead. Installed by
  :func:`install` as a ``forward`` on the class that ``parametrize`` already gives each
  parametrised module, so ``module.weight`` is still ``v`` and the factors, the
  penalty, ``state_dict`` keys, deep copies and :func:`spred.collapse` see nothing new.
* **A fused elementwise product** (:func:`product`): one autograd node for
  ``u_1 * ... * u_D`` that keeps only the factors for backward (no intermediate
  products for D > 2) and computes every factor's gradient in one backward call.

The fast forward falls back to the module's own ``forward`` whenever it cannot be
sure of exactness: other parametrisations stacked on the weight, inside
``parametrize.cached()`` (the cached ``v`` is reused there), a module class whose
``forward`` / ``_conv_forward`` is not torch's, or transposed convolutions (never
installed). :data:`ENABLED` (initialised from the environment variable
``SPRED_FASTPATH``; ``0`` turns it off) switches both mechanisms off, so both paths
can be compared.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.utils import parametrize

ENABLED = os.environ.get("SPRED_FASTPATH", "1").strip().lower() not in ("0", "false", "no", "off")

_SPATIAL = {nn.Linear: 0, nn.Conv1d: 1, nn.Conv2d: 2}  # torch class -> number of spatial dims


class _Product(torch.autograd.Function):
    """``u_1 * ... * u_D`` with every factor's gradient from one backward call; saves only the factors."""

    @staticmethod
    def forward(ctx, *factors: torch.Tensor) -> torch.Tensor:
        v = factors[0] * factors[1]
        for f in factors[2:]:
            v = v * f
        ctx.save_for_backward(*factors)
        return v

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        factors = ctx.saved_tensors
        if len(factors) == 2:
            grads = [grad * factors[1] if ctx.needs_input_grad[0] else None, grad * factors[0] if ctx.needs_input_grad[1] else None]
        else:
            suffix = [None] * len(factors)  # suffix[k] = grad * u_{k+1} * ... * u_D
            acc = grad
            for k in range(len(factors) - 1, -1, -1):
                suffix[k] = acc
                acc = acc * factors[k]
            grads, prefix = [], None  # prefix = u_1 * ... * u_{k-1}
            for k, f in enumerate(factors):
                grads.append((suffix[k] if prefix is None else suffix[k] * prefix) if ctx.needs_input_grad[k] else None)
                prefix = f if prefix is None else prefix * f
        return tuple(g if g is None or g.shape == f.shape else g.sum_to_size(f.shape) for g, f in zip(grads, factors))


def product(factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``u_1 * ... * u_D``: fused for same-shape factors when :data:`ENABLED`, plain products otherwise."""
    if ENABLED and torch.is_grad_enabled() and all(f.shape == factors[-1].shape for f in factors):
        return _Product.apply(*factors)
    v = factors[0] * factors[1]
    for f in factors[2:]:
        v = v * f
    return v


def _torch_class(cls: type) -> type | None:
    """The torch layer class whose ``forward`` ``cls`` runs unchanged, or None."""
    for base in _SPATIAL:
        if issubclass(cls, base) and cls.forward is base.forward:
            if base is nn.Linear or cls._conv_forward is base._conv_forward:
                return base
    return None


def install(module: nn.Module, groups: str | None, out_dim: int) -> bool:
    """Give a freshly parametrised ``module`` the activation-space forward, where it is exact.

    Returns whether it was installed (grouped factors on a torch ``Linear`` / ``Conv1d`` /
    ``Conv2d``; never for transposed convolutions or other classes).
    """
    cls = type(module)
    if groups not in ("out", "in") or out_dim != 0 or not parametrize.is_parametrized(module, "weight"):
        return False
    base = _torch_class(cls.__bases__[0])
    if base is None:
        return False
    cls.forward = _fast_forward
    cls._spred_fast = (base, _SPATIAL[base], groups)
    return True


def _fast_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    base, spatial, groups = type(self)._spred_fast
    plist = self.parametrizations["weight"]
    if not ENABLED or len(plist) != 1 or parametrize._cache_enabled:
        return base.forward(self, x)
    factors = [getattr(plist, f"original{i}") for i in range(plist[0].depth)]
    w = factors[-1]
    s = factors[0]
    for f in factors[1:-1]:
        s = s * f
    shape = (-1,) + (1,) * spatial  # a channel vector against (N, C, *spatial) or (C, *spatial); (C,) for Linear
    if groups == "out":
        y = nn.functional.linear(x, w) if base is nn.Linear else self._conv_forward(x, w, None)
        s = s.reshape(shape)
        return y * s if self.bias is None else torch.addcmul(self.bias.reshape(shape), y, s)
    s = s.reshape(-1)
    if base is not nn.Linear and self.groups > 1:
        s = s.repeat(self.groups)  # the "in" factor indexes the channel within each conv group
    x = x * s.reshape(shape)
    return nn.functional.linear(x, w, self.bias) if base is nn.Linear else self._conv_forward(x, w, self.bias)
