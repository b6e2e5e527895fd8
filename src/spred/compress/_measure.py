"""Parameter and FLOP counts, and latency, of a (pruned or sparse) model."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spred._validation import check_bool, check_int, param_error
from spred._inputs import check_module, split_inputs


def _stored(t: torch.Tensor, nonzero: bool) -> int:
    if t.layout == torch.sparse_csr:
        values = t.values()
        return int((values != 0).sum()) if nonzero else values.numel()
    if t.layout != torch.strided:
        t = t.to_dense()
    return int((t != 0).sum()) if nonzero else t.numel()


def count_parameters(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameter entries of ``model`` (buffers such as BatchNorm statistics never count).

    Shared parameters count once. A weight stored in CSR form (:func:`to_sparse`)
    counts its stored values (its index arrays are buffers), a dense one all its entries.

    Parameters
    ----------
    model : nn.Module
    nonzero : bool, default=False
        Count only the entries that are not exactly zero.

    Returns
    -------
    int
    """
    check_module(model, "model", "count_parameters")
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += _stored(p.detach(), nonzero)
    return total


def _macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    macs_fn = getattr(module, "_spred_macs", None)
    if macs_fn is not None:
        return int(macs_fn(inputs[0], output))
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        per = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        if module.transposed:  # every input element meets out_channels/groups * kernel weights
            return inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        return output.numel() * per
    return 0


def count_flops(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates (MACs) of the Linear and convolution layers of one forward pass.

    Counted with forward hooks on ``example_inputs`` as given (the whole batch; pass
    one sample for a per-sample count). A dense layer counts every weight at every
    position, so zeros still cost; a layer in CSR form (:func:`to_sparse`) counts its
    stored values only. Other operations (BatchNorm, activations, pooling, adds) are
    not counted. They are usually cheap next to the matrix products, but not always:
    on CPU the max-pools of a small CNN can take half its time (docs/compression.md).

    Parameters
    ----------
    model : nn.Module
    example_inputs : Tensor, tuple of Tensor or dict
        ``model(x)``, ``model(*inputs)`` or ``model(**inputs)``.

    Returns
    -------
    int
    """
    check_module(model, "model", "count_flops")
    args, kwargs = split_inputs(example_inputs, "count_flops")
    total = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and inputs:
            total[0] += _macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(*args, **kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def _batch(x, batch_size: int):
    """``batch_size`` samples cycled from the leading dimension of every tensor in ``x``."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return x
        idx = torch.arange(batch_size, device=x.device) % x.shape[0]
        return x.index_select(0, idx).contiguous()
    if isinstance(x, Mapping):
        return {k: _batch(v, batch_size) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_batch(v, batch_size) for v in x)
    return x


def _channels_last(x):
    """``x`` with every 4-D tensor in channels-last (NHWC) memory layout."""
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    if isinstance(x, Mapping):
        return {k: _channels_last(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_channels_last(v) for v in x)
    return x


def _check_latency_args(who, batch_sizes, repeats, warmup, num_threads, channels_last):
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or len(batch_sizes) == 0:
        raise param_error(TypeError, "batch_sizes", who, "a non-empty sequence of ints >= 1", batch_sizes)
    batch_sizes = [check_int(b, "batch_sizes", who, 1) for b in batch_sizes]
    repeats = check_int(repeats, "repeats", who, 1)
    warmup = check_int(warmup, "warmup", who, 0)
    num_threads = check_int(num_threads, "num_threads", who, 1, optional=True)
    check_bool(channels_last, "channels_last", who)
    return batch_sizes, repeats, warmup, num_threads


def _time_interleaved(models: Mapping[str, nn.Module], args, kwargs, batch_sizes, repeats, warmup, num_threads, channels_last=False):
    """``{name: {batch: [seconds, ...]}}``: the models take turns, one forward pass each and in
    alternating order (A B, B A, ...), so that changes in machine load hit all of them alike.
    With ``channels_last``, copies of the models and the 4-D inputs are timed in NHWC layout."""
    if channels_last:
        models = {name: copy.deepcopy(m).to(memory_format=torch.channels_last) for name, m in models.items()}
    old_threads = torch.get_num_threads()
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for b in batch_sizes:
                bargs, bkwargs = _batch(args, b), _batch(kwargs, b)
                if channels_last:
                    bargs, bkwargs = _channels_last(bargs), _channels_last(bkwargs)
                for m in models.values():
                    for _ in range(warmup):
                        m(*bargs, **bkwargs)
                for name in models:
                    times[name][b] = []
                items = list(models.items())
                for r in range(repeats):
                    for name, m in items if r % 2 == 0 else items[::-1]:  # A B, B A, ...: no model always goes first
                        t0 = time.perf_counter()
                        m(*bargs, **bkwargs)
                        times[name][b].append(time.perf_counter() - t0)
    finally:
        for name, m in models.items():
            m.train(modes[name])
        torch.set_num_threads(old_threads)
    return times


def measure_latency(
    model: nn.Module,
    example_inputs,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 30,
    warmup: int = 5,
    num_threads: int | None = None,
    channels_last: bool = False,
    return_times: bool = False,
):
    """Median wall-clock time of one forward pass (eval mode, inference mode) per batch size.

    Batches are built by cycling through the samples of ``example_inputs`` along the
    first dimension. ``warmup`` untimed calls come first, then ``repeats`` timed ones.

    Parameters
    ----------
    model : nn.Module
    example_inputs : Tensor, tuple of Tensor or dict
        At least one sample; its leading dimension is the batch.
    batch_sizes : sequence of int, default=(1, 256)
    repeats : int, default=30
    warmup : int, default=5
    num_threads : int or None, default=None
        ``torch.set_num_threads`` during the measurement (restored afterwards);
        ``None`` keeps the current setting. State it next to the numbers.
    channels_last : bool, default=False
        Time a copy of the model converted with ``.to(memory_format=torch.channels_last)``
        on 4-D inputs in the same NHWC layout (the model passed in is not changed). On
        CPU this is usually the faster way to run a CNN (1.3-2x for the dense and
        half-pruned networks of ``docs/deployment.md``), but not for layers only a few
        channels wide: time both layouts on the target machine.
    return_times : bool, default=False
        Also return every timing.

    Returns
    -------
    medians : dict of int to float
        Median seconds per forward pass, by batch size.
    times : dict of int to list of float
        Only if ``return_times``: all timed runs, in seconds.
    """
    check_module(model, "model", "measure_latency")
    medians, times = _latency({"model": model}, example_inputs, "measure_latency", batch_sizes, repeats, warmup, num_threads, channels_last)
    return (medians["model"], times["model"]) if return_times else medians["model"]


def compare_latency(
    models: Mapping[str, nn.Module],
    example_inputs,
    *,
    batch_sizes: Sequence[int] = (1, 256),
    repeats: int = 30,
    warmup: int = 5,
    num_threads: int | None = None,
    channels_last: bool = False,
    return_times: bool = False,
):
    """Median forward time of several models measured in turns (A B, B A, A B, ...).

    Interleaving one forward pass of each model makes their ratio robust to changes in
    machine load (a shared CPU), which separate :func:`measure_latency` calls are not.
    Same conventions as :func:`measure_latency`.

    Parameters
    ----------
    models : mapping of str to nn.Module
        E.g. ``{"collapsed": dense_model, "pruned": small_model}``.
    example_inputs : Tensor, tuple of Tensor or dict
        Inputs valid for every model; batches cycle through their samples.
    batch_sizes : sequence of int, default=(1, 256)
    repeats : int, default=30
        Timed forward passes per model and batch size.
    warmup : int, default=5
    num_threads : int or None, default=None
    channels_last : bool, default=False
        Time every model in channels-last layout (copies; see :func:`measure_latency`).
    return_times : bool, default=False

    Returns
    -------
    medians : dict of str to dict of int to float
        ``medians[name][batch_size]`` in seconds.
    times : dict of str to dict of int to list of float
        Only if ``return_times``.
    """
    if not isinstance(models, Mapping) or not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise TypeError(f"The 'models' parameter of compare_latency must be a non-empty mapping of names to torch.nn.Module. Got {models!r} instead.")
    medians, times = _latency(dict(models), example_inputs, "compare_latency", batch_sizes, repeats, warmup, num_threads, channels_last)
    return (medians, times) if return_times else medians


def _latency(models, example_inputs, who, batch_sizes, repeats, warmup, num_threads, channels_last):
    """Validate the arguments of ``who``, time ``models`` in turns; ``(medians, times)`` by model and batch size."""
    args, kwargs = split_inputs(example_inputs, who)
    batch_sizes, repeats, warmup, num_threads = _check_latency_args(who, batch_sizes, repeats, warmup, num_threads, channels_last)
    times = _time_interleaved(models, args, kwargs, batch_sizes, repeats, warmup, num_threads, channels_last)
    medians = {name: {b: statistics.median(ts) for b, ts in per.items()} for name, per in times.items()}
    return medians, times
