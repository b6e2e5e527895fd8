"""Layer types that ``spred.compress`` handles beyond plain torch: transformers' ``Conv1D`` and exact LayerNorms.

* Hugging Face ``transformers``' ``Conv1D`` (GPT-2) is a Linear layer stored
  transposed: ``weight`` is ``(in, out)``. :func:`spred.nn._graph.is_hf_conv1d` recognises it
  without importing ``transformers``; :func:`out_rows` gives any producer's weight as an
  ``(out, in, ...)`` view (writes go through); Torch-Pruning's pruner for it (Torch-Pruning
  1.6 has none) is :func:`spred.nn._graph.customized_pruners`.
* :class:`ZeroChannelLayerNorm` is a LayerNorm over the channels that remain after
  channels that were exactly 0 at its input were removed. Its mean and variance
  still count the removed zeros (``full_size`` channels in all), so the outputs of
  the remaining channels are those of the original LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from spred.nn._graph import hf_conv1d_type, is_hf_conv1d


def producer_types() -> tuple[type, ...]:
    """Layers whose output units can be dead and whose inputs can absorb a constant (Linear, convolutions, Conv1D)."""
    base = (nn.Linear, nn.modules.conv._ConvNd)
    cls = hf_conv1d_type()
    return base if cls is None else (*base, cls)


def out_rows(layer: nn.Module) -> torch.Tensor:
    """``layer.weight`` as ``(out, in, ...)`` (a transposed view for ``Conv1D``)."""
    return layer.weight.t() if is_hf_conv1d(layer) else layer.weight


def is_depthwise(conv: nn.Module) -> bool:
    """A convolution with one filter per input channel (``groups == in_channels == out_channels``)."""
    return (
        isinstance(conv, nn.modules.conv._ConvNd)
        and conv.groups > 1
        and conv.groups == conv.in_channels == conv.out_channels
    )


class ZeroChannelLayerNorm(nn.LayerNorm):
    """A LayerNorm over the last dim whose statistics also count ``full_size - n`` removed channels that were exactly 0.

    With ``n`` channels left of ``full_size``: ``mean = sum(x) / full_size`` and
    ``var = (sum((x - mean)**2) + (full_size - n) * mean**2) / full_size``; the output
    of every remaining channel equals the original LayerNorm's. The parameters and
    state_dict are those of an ``nn.LayerNorm(n)``.
    """

    full_size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if self.full_size == n:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        mean = x.sum(-1, keepdim=True) / self.full_size
        var = ((x - mean).pow(2).sum(-1, keepdim=True) + (self.full_size - n) * mean.pow(2)) / self.full_size
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_size={self.full_size}"


def make_zero_channel_layernorm(layer: nn.LayerNorm, full_size: int) -> None:
    """Turn ``layer`` (already sliced) into a :class:`ZeroChannelLayerNorm` counting ``full_size`` channels, in place."""
    full = getattr(layer, "full_size", full_size)
    layer.__class__ = ZeroChannelLayerNorm
    layer.full_size = int(full)


class ZeroChannelGroupNorm(nn.GroupNorm):
    """A GroupNorm whose groups lost channels that were exactly 0 at its input; the statistics still count them.

    ``group_of[i]`` is the group of the ``i``-th remaining channel and every group had
    ``full_group_size`` channels: ``mean_g = sum / (full_group_size * positions)`` and the
    removed zeros add ``mean_g**2`` each to the variance, so the remaining channels'
    outputs are the original GroupNorm's. Parameters and state_dict are those of a
    GroupNorm over the remaining channels.
    """

    group_of: list[int]
    full_group_size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        xs = x.reshape(n, c, -1)
        idx = torch.as_tensor(self.group_of, dtype=torch.long, device=x.device)
        count = self.full_group_size * xs.shape[-1]
        sums = xs.new_zeros(n, self.num_groups).index_add_(1, idx, xs.sum(-1))
        mean = sums / count
        centred = xs - mean[:, idx].unsqueeze(-1)
        removed = self.full_group_size - torch.bincount(idx, minlength=self.num_groups).to(x.dtype)
        var = (xs.new_zeros(n, self.num_groups).index_add_(1, idx, centred.pow(2).sum(-1)) + removed * xs.shape[-1] * mean.pow(2)) / count
        y = (centred * torch.rsqrt(var[:, idx].unsqueeze(-1) + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_group_size={self.full_group_size}"


def make_zero_channel_groupnorm(layer: nn.GroupNorm, full_size: int, kept: list[int]) -> None:
    """Turn ``layer`` (already sliced to ``kept`` of its ``full_size`` channels) into a :class:`ZeroChannelGroupNorm`."""
    if isinstance(layer, ZeroChannelGroupNorm):
        layer.group_of = [layer.group_of[i] for i in kept]
        return
    size = full_size // layer.num_groups
    layer.__class__ = ZeroChannelGroupNorm
    layer.group_of = [i // size for i in kept]
    layer.full_group_size = size


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` that lost whole heads: ``num_heads * head_dim`` is below ``embed_dim``.

    ``kept_heads`` are the remaining heads among ``full_heads`` (a per-head 3-D
    ``attn_mask`` is sliced to them). The parameters keep their names and the
    input / output width stays ``embed_dim``; with ``need_weights=True`` the
    returned weights are those of the remaining heads.
    """

    kept_heads: list[int]
    full_heads: int

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        (length, n, _), s, h, d = query.shape, key.shape[0], self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q, k, v = (F.linear(t, w[i * h * d : (i + 1) * h * d], None if b is None else b[i * h * d : (i + 1) * h * d])
                   for i, t in enumerate((query, key, value)))  # fmt: skip
        q, k, v = (t.reshape(t.shape[0], n * h, d).transpose(0, 1) for t in (q, k, v))
        scores = torch.bmm(q * d**-0.5, k.transpose(1, 2))
        scores = scores + self._mask(attn_mask, key_padding_mask, is_causal, n, length, s, scores.dtype, scores.device)
        attn = F.dropout(scores.softmax(-1), self.dropout if self.training else 0.0)
        out = self.out_proj(torch.bmm(attn, v).transpose(0, 1).reshape(length, n, h * d))
        weights = attn.reshape(n, h, length, s) if need_weights else None
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if unbatched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _mask(self, attn_mask, key_padding_mask, is_causal, n, length, s, dtype, device):
        def additive(m):
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        total = torch.zeros((), dtype=dtype, device=device)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, s, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            m = additive(attn_mask)
            if m.dim() == 3:
                m = m.reshape(n, self.full_heads, length, s)[:, self.kept_heads].reshape(n * self.num_heads, length, s)
            total = total + m
        if key_padding_mask is not None:
            m = additive(key_padding_mask).reshape(n, 1, 1, s).expand(n, self.num_heads, 1, s).reshape(n * self.num_heads, 1, s)
            total = total + m
        return total


def tied_parameters(model: nn.Module) -> list[tuple[str, str, str, str]]:
    """``(first holder, its attribute, second holder, its attribute)`` for every parameter two modules share
    (e.g. GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``)."""
    first: dict[int, tuple[str, str]] = {}
    ties = []
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in first and first[id(p)][0] != name:
                ties.append((*first[id(p)], name, attr))
            first.setdefault(id(p), (name, attr))
    return ties


def retie(model: nn.Module, ties: list[tuple[str, str, str, str]]) -> None:
    """Make the second holder of each tie hold the first one's parameter again (after both were sliced alike)."""
    for a, attr_a, b, attr_b in ties:
        pa = getattr(model.get_submodule(a), attr_a)
        mb = model.get_submodule(b)
        if getattr(mb, attr_b) is not pa and getattr(mb, attr_b).shape == pa.shape:
            setattr(mb, attr_b, pa)

