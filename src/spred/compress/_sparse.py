"""Unstructured sparsity for deployment: Linear / Conv2d weights stored and multiplied in CSR form.

On CPU a CSR product beats the dense one only at high sparsity (measured in
``benchmarks/csr_speedup.py``; see ``docs/deployment.md``): layers below
``min_sparsity`` stay dense. The modules here are for inference: their stored
values do not require gradients.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from spred._validation import check_float
from spred._inputs import check_module

logger = logging.getLogger(__name__)

#: Default ``min_sparsity`` of :func:`to_sparse`: below it a CSR product was slower than the
#: dense one on CPU for Linear layers at batch 256 (``benchmarks/csr_speedup.py``, 1 thread).
DEFAULT_MIN_SPARSITY = 0.9


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


_CSR_NAMES = ("weight_values", "crow_indices", "col_indices")


def _check_csr(values, crow, col, size: tuple[int, int], prefix: str = "") -> None:
    """Refuse CSR tensors that do not describe a ``size`` matrix (ValueError naming the tensor).

    Torch's sparse kernels trust the index arrays: a tampered checkpoint with an
    out-of-range or non-monotone index reads outside the arrays (garbage or a crash),
    so every invariant is checked here, before any tensor is copied into the module.
    """
    rows, cols = size
    for name, t in zip(_CSR_NAMES, (values, crow, col)):
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.dim() != 1:
            raise ValueError(f"'{prefix}{name}' must be a 1-d dense tensor; got {type(t).__name__} of shape {tuple(getattr(t, 'shape', ()))}.")
    if not values.is_floating_point():
        raise ValueError(f"'{prefix}weight_values' must hold floating-point values; got {values.dtype}.")
    if crow.dtype not in (torch.int32, torch.int64) or col.dtype != crow.dtype:
        raise ValueError(f"'{prefix}crow_indices' and '{prefix}col_indices' must both be int32 or int64; got {crow.dtype} and {col.dtype}.")
    nnz = values.numel()
    if crow.numel() != rows + 1:
        raise ValueError(f"'{prefix}crow_indices' must have {rows + 1} entries (rows + 1) for a {rows} x {cols} weight; got {crow.numel()}.")
    if col.numel() != nnz:
        raise ValueError(f"'{prefix}col_indices' must have as many entries as '{prefix}weight_values' ({nnz}); got {col.numel()}.")
    crow, col = crow.detach().cpu().long(), col.detach().cpu().long()
    if int(crow[0]) != 0 or int(crow[-1]) != nnz:
        raise ValueError(f"'{prefix}crow_indices' must start at 0 and end at the number of values ({nnz}); got {int(crow[0])} and {int(crow[-1])}.")
    counts = crow.diff()
    if bool((counts < 0).any()):
        raise ValueError(f"'{prefix}crow_indices' must be non-decreasing; it falls at row {int((counts < 0).nonzero()[0])}.")
    if nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
        raise ValueError(f"'{prefix}col_indices' must lie in [0, {cols}); got values from {int(col.min())} to {int(col.max())}.")
    row = torch.repeat_interleave(torch.arange(rows), counts)
    if bool(((row[1:] == row[:-1]) & (col[1:] <= col[:-1])).any()):
        raise ValueError(f"'{prefix}col_indices' must be strictly increasing within each row (sorted, no duplicates).")


class _CSRWeight(nn.Module):
    """Holds a 2-d matrix in CSR form: ``values`` (a parameter), ``crow_indices`` and ``col_indices`` (buffers).

    Loading a state dict replaces the three tensors, so a checkpoint with a different
    number of nonzeros loads (weights only) into a module built for another one.
    """

    def _init_csr(self, matrix: torch.Tensor) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            csr = matrix.detach().to_sparse_csr()
        self.weight_values = nn.Parameter(csr.values().contiguous(), requires_grad=False)
        self.register_buffer("crow_indices", csr.crow_indices().contiguous())
        self.register_buffer("col_indices", csr.col_indices().contiguous())
        self._matrix_size = tuple(matrix.shape)
        self._cache = None

    @property
    def weight_csr(self) -> torch.Tensor:
        """The weight as a ``torch.sparse_csr`` matrix (``out x in*kernel``)."""
        if self._cache is None:
            self._cache = _csr(self.crow_indices, self.col_indices, self.weight_values, self._matrix_size)
        return self._cache

    @property
    def nnz(self) -> int:
        return self.weight_values.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of zero entries of the weight."""
        return 1.0 - self.nnz / max(1, math.prod(self._matrix_size))

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_cache"] = None  # a CSR tensor has no storage to deep-copy or pickle; it is rebuilt on demand
        return state

    def _apply(self, fn, *args, **kwargs):
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _filled(self, dense: nn.Module, w: torch.Tensor) -> nn.Module:
        """``dense`` (a freshly built layer) with this layer's weight ``w`` (dense form) and bias."""
        with torch.no_grad():
            dense.weight.copy_(w)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        self._cache = None
        _check_csr(*(state_dict.get(prefix + name, getattr(self, name)) for name in _CSR_NAMES), self._matrix_size, prefix)
        for name in _CSR_NAMES:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                new = torch.empty_like(state_dict[key], device=getattr(self, name).device)
                if name == "weight_values":
                    self.weight_values = nn.Parameter(new.to(self.weight_values.dtype), requires_grad=False)
                else:
                    setattr(self, name, new)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class SparseLinear(_CSRWeight):
    """``y = x W^T + b`` with ``W`` in CSR form; same outputs as the :class:`torch.nn.Linear` it came from.

    Build it with :meth:`from_dense` (or :func:`to_sparse` for a whole model); the
    constructor makes an all-zero layer, e.g. to load a weights-only checkpoint into.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default=True
    device, dtype : optional
        Where and in which floating type the values live.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_csr(torch.zeros(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """A :class:`SparseLinear` with the weight and bias of ``linear``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"The 'linear' parameter of SparseLinear.from_dense must be a torch.nn.Linear. Got {type(linear).__name__} instead.")
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        new._init_csr(w)
        if linear.bias is not None:
            new.bias.data.copy_(linear.bias.detach())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            out = torch.sparse.mm(self.weight_csr, x2)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight_csr, x2)
        return out.t().reshape(*lead, self.out_features)

    def _spred_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        return self.nnz * (out.numel() // self.out_features)

    def to_dense(self) -> nn.Linear:
        """The equivalent :class:`torch.nn.Linear`."""
        w = self.weight_csr.to_dense()
        return self._filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype), w)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nnz={self.nnz}, sparsity={self.sparsity:.3f}"


class SparseConv2d(_CSRWeight):
    """A 2-d convolution computed as ``W_csr @ unfold(x)``; same outputs as the :class:`torch.nn.Conv2d` it came from.

    Parameters
    ----------
    conv : nn.Conv2d
        The dense convolution (``groups=1``; any stride, dilation, padding and
        ``padding_mode``) whose weight and bias are copied.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"The 'conv' parameter of SparseConv2d must be a torch.nn.Conv2d. Got {type(conv).__name__} instead.")
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d supports only groups=1 convolutions; got groups={conv.groups}. Leave this layer dense.")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        self.padding, self.padding_mode = conv.padding, conv.padding_mode  # as given (ints or "same"/"valid")
        # (left, right, top, bottom), as F.pad wants it; works for int, tuple and "same"/"valid" padding
        self.pad = tuple(int(p) for p in conv._reversed_padding_repeated_twice)
        w = conv.weight.detach()
        self._init_csr(w.reshape(w.shape[0], -1))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        """A :class:`SparseConv2d` with the weight and bias of ``conv``."""
        return cls(conv)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        left, right, top, bottom = self.pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            return x, (top, left)  # symmetric zero padding: let unfold do it
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self.pad, mode=mode), (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        x, padding = self._padded(x)
        n, _, h, w = x.shape
        ho = (h + 2 * padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and padding == (0, 0):
            cols = x.reshape(n, self.in_channels, h * w)  # a 1x1 convolution needs no unfolding
        else:
            cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)  # (n, C*k*k, L)
        w = self.weight_csr
        # one product per sample: cheaper than transposing the unfolded batch into one (C*k*k, n*L) matrix
        if self.bias is None:
            outs = [torch.sparse.mm(w, cols[i]) for i in range(n)]
        else:
            b = self.bias.unsqueeze(1)
            outs = [torch.addmm(b, w, cols[i]) for i in range(n)]
        out = (outs[0].unsqueeze(0) if n == 1 else torch.stack(outs)).reshape(n, self.out_channels, ho, wo)
        return out[0] if unbatched else out

    def _spred_macs(self, x: torch.Tensor, out: torch.Tensor) -> int:
        return self.nnz * (out.numel() // self.out_channels)

    def to_dense(self) -> nn.Conv2d:
        """The equivalent :class:`torch.nn.Conv2d`."""
        w = self.weight_csr.to_dense().reshape(self.out_channels, self.in_channels, *self.kernel_size)
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, bias=self.bias is not None, padding_mode=self.padding_mode, device=w.device, dtype=w.dtype)  # fmt: skip
        return self._filled(conv, w)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"dilation={self.dilation}, bias={self.bias is not None}, nnz={self.nnz}, sparsity={self.sparsity:.3f}")


def _sparsity(weight: torch.Tensor) -> float:
    return 1.0 - int((weight != 0).sum()) / max(1, weight.numel())


def _replace(model: nn.Module, swap) -> tuple[nn.Module, list[str]]:
    top = swap(model)
    if top is not None:
        return top, [""]
    done = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            new = swap(child)
            if new is not None:
                setattr(module, child_name, new)
                done.append(f"{name}.{child_name}" if name else child_name)
    return model, done


def to_sparse(
    model: nn.Module,
    *,
    min_sparsity: float = DEFAULT_MIN_SPARSITY,
    include: tuple[type[nn.Module], ...] = (nn.Linear,),
    inplace: bool = False,
) -> nn.Module:
    """Store the weights of sparse enough Linear (and optionally Conv2d) layers in CSR form.

    Each :class:`torch.nn.Linear` (and, if ``nn.Conv2d`` is in ``include``, each
    ``groups=1`` :class:`torch.nn.Conv2d`) whose weight has a fraction of exact zeros
    ``>= min_sparsity`` becomes a :class:`SparseLinear` (:class:`SparseConv2d`)
    computing the same outputs. Layers below the threshold stay dense: on CPU the CSR
    product is slower than the dense one at moderate sparsity, and a CSR convolution
    (unfold + sparse product) rarely beats the dense one at all (see
    ``docs/deployment.md`` for the measured crossovers). Collapse a sparsified model
    first (:func:`spred.collapse`) so that its zeros are exact.

    Parameters
    ----------
    model : nn.Module
    min_sparsity : float in [0, 1], default=0.9
        Minimal fraction of zero weights for a layer to be converted.
    include : tuple of {nn.Linear, nn.Conv2d}, default=(nn.Linear,)
        Which layer types may be converted.
    inplace : bool, default=False
        Convert ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The converted model (for inference: the CSR values do not require gradients).
    """
    check_module(model, "model", "to_sparse")
    min_sparsity = check_float(min_sparsity, "min_sparsity", "to_sparse", 0.0, 1.0)
    if not isinstance(include, (tuple, list)):
        raise TypeError(f"The 'include' parameter of to_sparse must be a tuple of layer types among (nn.Linear, nn.Conv2d). Got {include!r} instead.")
    if not all(t in (nn.Linear, nn.Conv2d) for t in include):
        raise ValueError(f"The 'include' parameter of to_sparse must be a tuple of layer types among (nn.Linear, nn.Conv2d). Got {include!r} instead.")
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("to_sparse needs plain modules, but the model is parametrized (e.g. by spred.sparsify); call spred.collapse(model) first.")
    if not inplace:
        model = copy.deepcopy(model)

    def swap(m):
        if type(m) is nn.Linear and nn.Linear in include and _sparsity(m.weight) >= min_sparsity:
            return SparseLinear.from_dense(m)
        if type(m) is nn.Conv2d and nn.Conv2d in include and m.groups == 1 and _sparsity(m.weight) >= min_sparsity:
            return SparseConv2d.from_dense(m)
        return None

    model, done = _replace(model, swap)
    logger.info("to_sparse: %d layers in CSR form (min_sparsity %g): %s", len(done), min_sparsity, ", ".join(done))
    return model


def to_dense(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Inverse of :func:`to_sparse`: every :class:`SparseLinear` / :class:`SparseConv2d` back to a dense layer.

    Parameters
    ----------
    model : nn.Module
    inplace : bool, default=False
        Convert ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The model with plain :class:`torch.nn.Linear` / :class:`torch.nn.Conv2d` layers.
    """
    check_module(model, "model", "to_dense")
    if not inplace:
        model = copy.deepcopy(model)
    return _replace(model, lambda m: m.to_dense() if isinstance(m, (SparseLinear, SparseConv2d)) else None)[0]
