"""Constant folding: the one place where a dead unit's constant output moves into the next layer's bias.

A unit (a Linear neuron, a conv filter) with no incoming weight still emits a
constant: its bias, mapped by BatchNorm to ``gamma * (b - mean) / sqrt(var + eps) + beta``
and then by the activation, pooling and adds with other constant channels. Rather than
model each of those operations, the constant is *read* where it is consumed:
:func:`input_ranges` records the min and max of every input channel of the consumers
over one forward pass (eval mode, so BatchNorm uses its running statistics), and
:func:`input_constants` calls a channel constant when the two agree. The consumer then
absorbs it, exactly:

* a Linear consumer always: ``bias += W[:, j] * a_j``;
* a convolution consumer when it applies no zero padding (:func:`zero_padding` is
  ``None``): every output position sees a full window of ``a_j``, so
  ``bias += a_j * W[:, j].sum()``. Across zero padding the border positions see zeros
  instead, and the channel cannot be folded.

:func:`fold_inputs` adds the contribution (computed in float64; a layer without bias
gets one when the contribution is nonzero), :func:`silence_inputs` zeroes the weights
that read the channel and :func:`clear_units` zeroes the dead units themselves.
Both :func:`spred.compress.prune_channels` (structured) and the dead-unit removal of
``spred run compression`` (unstructured) fold through these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from spred._inputs import run
from spred.compress._layers import out_rows, producer_types
from spred.nn._graph import is_hf_conv1d

logger = logging.getLogger(__name__)

#: Layers whose output units can be dead and whose inputs can absorb a constant (plus transformers'
#: ``Conv1D`` where that is imported: :func:`spred.compress._layers.producer_types`).
PRODUCER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
#: Relative spread under which an input channel counts as constant.
CONSTANT_RTOL = 1e-6

Ranges = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]


def channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    """The channel dimension of the input ``x`` of ``module`` (features of a Linear / Conv1D / LayerNorm, channels of a convolution)."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or is_hf_conv1d(module):
        return x.dim() - 1
    if isinstance(module, nn.GroupNorm):
        return 1
    return 1 if x.dim() == module.weight.dim() else 0  # batched / unbatched convolution


def input_ranges(model: nn.Module, inputs: tuple[tuple, dict], modules: Iterable[nn.Module] | None = None) -> tuple[Any, Ranges]:
    """Run ``model`` once in eval mode; return its output and ``{consumer: (min, max)}`` per input channel.

    ``inputs`` is ``(args, kwargs)`` (:func:`spred._inputs.split_inputs`);
    ``modules`` the consumers to watch (default: every Linear / convolution). The
    minimum and maximum run over the batch and all positions, in float64. Every
    module's training mode is restored afterwards.
    """
    stats: Ranges = {}

    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0].detach()
        d = channel_dim(module, x)
        flat = x.movedim(d, 0).reshape(x.shape[d], -1).double()
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        if module in stats:
            lo, hi = torch.minimum(stats[module][0], lo), torch.maximum(stats[module][1], hi)
        stats[module] = (lo, hi)

    kinds = (*producer_types(), nn.LayerNorm, nn.GroupNorm)
    watched = [m for m in model.modules() if isinstance(m, kinds)] if modules is None else list(modules)
    handles = [m.register_forward_pre_hook(hook) for m in watched]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = run(model, inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return out, stats


def input_constants(ranges: Ranges, consumer: nn.Module, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The constant value (float64) of each input channel ``index`` of ``consumer``; NaN where it varies.

    A channel is constant when its max and min over :func:`input_ranges` are finite and
    within ``CONSTANT_RTOL * max(1, |min|, |max|)`` of each other; its value is then the
    midpoint (the common value when they are equal).
    """
    idx = torch.as_tensor(index, dtype=torch.long).cpu().reshape(-1)
    if consumer not in ranges:
        return torch.full((idx.numel(),), float("nan"), dtype=torch.float64)
    lo, hi = (t.cpu()[idx] for t in ranges[consumer])
    scale = torch.maximum(torch.ones_like(lo), torch.maximum(lo.abs(), hi.abs()))
    constant = torch.isfinite(lo) & torch.isfinite(hi) & (hi - lo <= CONSTANT_RTOL * scale)
    value = torch.where(lo == hi, lo, 0.5 * (lo + hi))
    return torch.where(constant, value, torch.full_like(value, float("nan")))


def zero_padding(conv: nn.Module) -> tuple[int, ...] | None:
    """The zero padding a convolution applies, or ``None`` when a constant input stays constant (it can fold)."""
    if not isinstance(conv, nn.modules.conv._ConvNd) or conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return None
        pad = tuple(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))  # "same"
    else:
        pad = tuple(conv.padding)
    return pad if any(p > 0 for p in pad) else None


def add_zero_bias(layer: nn.Module) -> bool:
    """Give a Linear / Conv layer without bias a zero bias; return whether one was added."""
    if getattr(layer, "bias", None) is not None:
        return False
    n = out_rows(layer).shape[0]
    layer.bias = nn.Parameter(torch.zeros(n, dtype=layer.weight.dtype, device=layer.weight.device), requires_grad=layer.weight.requires_grad)
    return True


@torch.no_grad()
def fold_inputs(consumer: nn.Module, index: Sequence[int] | torch.Tensor, constants: Sequence[float] | torch.Tensor) -> bool:
    """Add ``sum_j constants[j] * sum(W[:, index[j]])`` to the bias of ``consumer``; return whether a bias was added.

    Exact for a Linear consumer and for a convolution without zero padding
    (:func:`zero_padding`); the caller checks the latter. The sum is formed in float64
    and rounded once into the bias. A consumer without bias gets a zero one only when
    the contribution is nonzero. The weights are not changed (see :func:`silence_inputs`).
    """
    w = out_rows(consumer).detach().double()
    idx = torch.as_tensor(index, dtype=torch.long, device=w.device).reshape(-1)
    a = torch.as_tensor(constants, dtype=torch.float64).to(w.device).reshape(-1)
    cols = w.index_select(1, idx)
    if cols.dim() > 2:  # a convolution: every output position sees the whole kernel window of the constant
        cols = cols.flatten(2).sum(2)
    contribution = cols @ a
    if not bool((contribution != 0).any()):
        return False
    added = add_zero_bias(consumer)
    consumer.bias.add_(contribution.to(consumer.bias.dtype))
    return added


@torch.no_grad()
def silence_inputs(consumer: nn.Module, index: Sequence[int] | torch.Tensor) -> None:
    """Zero the weights of ``consumer`` that read its input channels ``index``."""
    w = out_rows(consumer)
    w.index_fill_(1, torch.as_tensor(index, dtype=torch.long, device=w.device).reshape(-1), 0.0)


@torch.no_grad()
def clear_units(producer: nn.Module, index: Sequence[int] | torch.Tensor) -> None:
    """Zero the incoming weights and the bias of the output units ``index`` of ``producer``."""
    idx = torch.as_tensor(index, dtype=torch.long, device=producer.weight.device).reshape(-1)
    out_rows(producer).index_fill_(0, idx, 0.0)
    if getattr(producer, "bias", None) is not None:
        producer.bias.index_fill_(0, idx, 0.0)
