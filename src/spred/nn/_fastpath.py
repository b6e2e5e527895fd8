"""The fast path: the same spred maths with less memory traffic per training step.

Two mechanisms, both exact (the same function and gradients up to rounding):

* **Group factors without the weight-sized product kept.** For ``groups="out"`` / ``"in"``
  on ``Linear`` / ``Conv1d`` / ``Conv2d`` (grouped and depthwise too) one autograd node
  (:class:`_ScaledLayer`) runs the layer on ``v = s * W`` and saves only its input, the
  scale ``s`` and the last factor ``W``: the memory of the dense layer. Per call it
  forms the smaller of the two: ``s * W``, or the activation scaled per channel
  (``(s * W) x + b = s * (W x) + b`` for ``"out"``, ``(s * W) x = W (s * x)`` for
  ``"in"``). Installed by :func:`install` as a ``forward`` on the class that
  ``parametrize`` already gives each parametrised module, so ``module.weight`` is still
  ``v`` and the factors, the penalty, ``state_dict`` keys, deep copies and
  :func:`spred.collapse` see nothing new.
* **A fused elementwise product** (:func:`product`): one autograd node for
  ``u_1 * ... * u_D`` that keeps only the factors for backward (no intermediate
  products for D > 2) and computes every factor's gradient in one backward call.

The fast forward falls back to the module's own ``forward`` whenever it cannot be
sure of exactness: other parametrisations stacked on the weight, inside
``parametrize.cached()`` (the cached ``v`` is reused there), a module class whose
``forward`` / ``_conv_forward`` is not torch's, under autocast, with a string
``padding`` (``"same"``), or transposed convolutions (never installed). :data:`ENABLED`
(initialised from the environment variable ``SPRED_FASTPATH``; ``0`` turns it off)
switches both mechanisms off, so both paths can be compared.
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


class _Layer:
    """A torch ``Linear`` / ``Conv1d`` / ``Conv2d`` call, its backward, and its output size, with the settings of one module."""

    def __init__(self, module: nn.Module, base: type, spatial: int):
        self.spatial = spatial
        self.conv = base is not nn.Linear
        if self.conv:
            self.args = (module.stride, module.padding if module.padding_mode == "zeros" else (0,) * spatial, module.dilation, module.groups)
            self.fn = nn.functional.conv1d if spatial == 1 else nn.functional.conv2d
            self.kernel = module.kernel_size

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return self.fn(x, w, b, *self.args) if self.conv else nn.functional.linear(x, w, b)

    def backward(self, g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, mask: tuple[bool, bool, bool]):
        """``(dx, dw, db)`` of ``self(x, w, b)`` for the output gradient ``g`` (None where ``mask`` is False)."""
        if self.conv:
            stride, padding, dilation, groups = self.args
            bias = [w.shape[0]] if mask[2] else None
            return torch.ops.aten.convolution_backward(g, x, w, bias, stride, padding, dilation, False, (0,) * self.spatial, groups, list(mask))
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        dx = (g2 @ w).reshape(x.shape) if mask[0] else None
        return dx, g2.t() @ x2 if mask[1] else None, g2.sum(0) if mask[2] else None

    def channel_scale(self, s: torch.Tensor, groups: str) -> torch.Tensor:
        """The group scale ``s`` (shaped like a group factor) as a per-channel scale of the output (``"out"``) or input."""
        s = s.reshape(-1)
        if groups == "in" and self.conv and self.args[3] > 1:
            s = s.repeat(self.args[3])  # the "in" factor indexes the channel within each conv group
        return s.reshape((-1,) + (1,) * self.spatial)  # against (N, C, *spatial); (C,) for Linear

    def out_numel(self, x: torch.Tensor, w: torch.Tensor) -> int:
        if not self.conv:
            return x.numel() // x.shape[-1] * w.shape[0]
        stride, padding, dilation, _ = self.args
        n = x.shape[0] * w.shape[0]
        for i in range(self.spatial):
            n *= (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (self.kernel[i] - 1) - 1) // stride[i] + 1
        return n


class _ScaledLayer(torch.autograd.Function):
    """``layer(x, s * w, b)`` for a group scale ``s`` (broadcast against ``w``), saving only ``x``, ``s`` and ``w``.

    Its value and gradients are those of the weight-space product (up to rounding); only
    the order of the work changes, chosen per call by which tensor is smaller (``act``):

    * weight space (``act=False``): ``v = s * w`` is formed for the call and again in the
      backward pass (for the input's gradient), never kept;
    * activation space (``act=True``): ``"out"`` scales the layer's output per channel
      (``(s*W) x + b = s*(W x) + b``), ``"in"`` its input (``(s*W) x = W (s*x)``); no
      weight-sized product is formed and the scaled activation is not kept either.

    Either way the backward pass computes ``dv = dL/dv`` from the unscaled ``x`` and the
    output gradient, then ``dL/dw = s * dv`` and ``dL/ds = sum(dv * w)`` over each group,
    so nothing activation-sized is saved beyond the input the dense layer saves too.
    """

    @staticmethod
    def forward(ctx, x, s, w, bias, layer, groups, act):
        ctx.layer, ctx.groups, ctx.act = layer, groups, act
        ctx.save_for_backward(x, s, w)
        if not act:
            return layer(x, s * w, bias)
        scale = layer.channel_scale(s, groups)
        if groups == "in":
            return layer(x * scale, w, bias)
        y = layer(x, w, None).mul_(scale)
        return y if bias is None else y.add_(bias.reshape(scale.shape))

    @staticmethod
    def backward(ctx, g):
        x, s, w = ctx.saved_tensors
        layer, groups = ctx.layer, ctx.groups
        need_x, need_s, need_w, need_b = ctx.needs_input_grad[:4]
        if not ctx.act:
            dx, dv, db = layer.backward(g, x, s * w if need_x else w, (need_x, need_s or need_w, need_b))
        else:
            scale = layer.channel_scale(s, groups)
            split = need_x and groups == "out"  # the input's gradient comes from s * g there
            dx, dv, db = layer.backward(g, x, w, (need_x and not split, need_s or need_w, need_b))
            if split:
                dx = layer.backward(g * scale, x, w, (True, False, False))[0]
            elif dx is not None:
                dx = dx.mul_(scale)
        ds, dw = _group_grads(dv, w, s, need_s, need_w) if need_s or need_w else (None, None)
        return dx, ds, dw, db, None, None, None


_SLICE = 1 << 18  # entries of dv handled at a time by _group_grads (1 MiB in float32: stays in cache)


def _group_grads(dv: torch.Tensor, w: torch.Tensor, s: torch.Tensor, need_s: bool, need_w: bool):
    """``ds = (dv * w).sum_to_size(s.shape)`` and ``dw = s * dv`` (in place of ``dv``), slice by slice of dim 0.

    Each slice is read once for both while it is in cache, and no weight-sized temporary is allocated.
    """
    n = dv.shape[0]
    rows = max(1, _SLICE // max(1, dv[0].numel()))
    per_row = s.shape[0] == n > 1  # "out": every slice of dim 0 is its own group
    parts = []
    for i in range(0, n, rows):
        d = dv[i : i + rows]
        if need_s:
            parts.append((d * w[i : i + rows]).sum_to_size((d.shape[0], *s.shape[1:]) if per_row else s.shape))
        if need_w:
            d.mul_(s[i : i + rows] if per_row else s)
    ds = None if not need_s else parts[0] if len(parts) == 1 else torch.cat(parts) if per_row else torch.stack(parts).sum(0)
    return ds, dv if need_w else None


def _activation_space(activation: int, weight: int) -> bool:
    """Whether to scale the activation (``activation`` entries) rather than form ``s * w`` (``weight`` entries)."""
    return activation < weight


def _fast_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    base, spatial, groups = type(self)._spred_fast
    plist = self.parametrizations["weight"]
    conv = base is not nn.Linear
    if (
        not ENABLED
        or len(plist) != 1
        or parametrize._cache_enabled
        or torch.is_autocast_enabled(x.device.type)
        or (conv and isinstance(self.padding, str))
    ):
        return base.forward(self, x)
    factors = [getattr(plist, f"original{i}") for i in range(plist[0].depth)]
    s, w = factors[0], factors[-1]
    for f in factors[1:-1]:
        s = s * f
    layer = _Layer(self, base, spatial)
    unbatched = conv and x.dim() == spatial + 1
    if unbatched:
        x = x.unsqueeze(0)
    if conv and self.padding_mode != "zeros":
        x = nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
    scaled = layer.out_numel(x, w) if groups == "out" else x.numel()
    y = _ScaledLayer.apply(x, s, w, self.bias, layer, groups, _activation_space(scaled, w.numel()))
    return y.squeeze(0) if unbatched else y
