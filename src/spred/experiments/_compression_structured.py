"""``spred run compression``, structured part: channel groups, physical pruning and a filter-norm baseline.

:func:`run_structured` trains spred with one group per conv filter / hidden neuron to
a target sparsity, prunes the zero channels away with
:func:`spred.compress.prune_channels` and measures the pruned module against the
collapsed one; the filter-norm baseline is pruned to the same widths.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

import spred
from spred.experiments import _baselines_prune as bp
from spred.experiments import _common
from spred.experiments._compression_unstructured import _Context
from spred.nn._rules import group_norms, zero_units

if TYPE_CHECKING:
    from spred.experiments.compression import CompressionConfig, Data


def grouped_layers(model: nn.Module) -> list[str]:
    """Names of the layers the structured runs group by output channel: every prunable layer but the last."""
    return [n[: -len(".weight")] for n in bp.prunable_weights(model)][:-1]


def _widths(model: nn.Module, names: Sequence[str]) -> list[int]:
    modules = dict(model.named_modules())
    return [modules[n].weight.shape[0] for n in names]


def _nonzero_widths(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Channels (output rows) of each layer with a nonzero weight."""
    modules = dict(model.named_modules())
    return [int((~zero_units(modules[n].weight.detach(), 0)).sum()) for n in names]


def _layer_lams(model: nn.Module, layers: Sequence[str], lam: float, exponent: float, example: torch.Tensor) -> dict[str, float]:
    """``{layer.weight: lam * positions**exponent}``, positions = output entries per sample and channel."""
    modules = dict(model.named_modules())
    positions = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: positions.__setitem__(n, o[0].numel() // o.shape[1])) for n in layers]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train()
        for h in handles:
            h.remove()
    return {f"{n}.weight": lam * positions[n] ** exponent for n in layers}


def _structured_row(ctx: _Context, method: str, sparsity: float, collapsed: nn.Module, err_collapsed: float, seconds: float, epochs: int, names) -> dict:
    from spred.compress import compare_latency, count_flops, count_parameters, prune_channels

    cfg, x = ctx.cfg, ctx.data.X_test
    pruned, plan = prune_channels(collapsed, ctx.data.example.to(cfg.device), round_to=cfg.round_to)
    with torch.no_grad():
        collapsed.eval(), pruned.eval()
        check = x[:1000].to(cfg.device)
        reference = collapsed(check)
        out = pruned(check)
        diff = float((out - reference).abs().max())
        # the same comparison in float64: what is left of the float32 difference is summation order;
        # and each float32 module against the collapsed function in float64 (float32's own rounding)
        exact = copy.deepcopy(collapsed).double()(check.double())
        diff64 = float((copy.deepcopy(pruned).double()(check.double()) - exact).abs().max())
        err32 = {k: float((v.double() - exact).abs().max()) for k, v in (("collapsed", reference), ("pruned", out))}
    one = x[:1].to(cfg.device)
    flops, flops_pruned = count_flops(collapsed, one), count_flops(pruned, one)
    pair, batch = {"collapsed": collapsed, "pruned": pruned}, x[:256].to(cfg.device)
    lat = compare_latency(pair, batch, batch_sizes=(1, 256), repeats=cfg.latency_repeats)
    # the same in channels-last (NHWC) layout, often the faster way to run a CNN on CPU
    cl = compare_latency(pair, batch, batch_sizes=(1, 256), repeats=cfg.latency_repeats, channels_last=True)
    params_pruned = count_parameters(pruned, nonzero=True)
    widths_before, widths_after = _widths(collapsed, names), _widths(pruned, names)
    return {
        "model": ctx.model_name, "method": method, "seed": ctx.seed, "target_sparsity": sparsity,
        "round_to": cfg.round_to, "widths_before": "-".join(map(str, widths_before)),
        "widths_nonzero": "-".join(map(str, _nonzero_widths(collapsed, names))), "widths_after": "-".join(map(str, widths_after)),
        "params": ctx.total, "params_pruned": params_pruned, "compression_ratio": ctx.total / params_pruned,
        "flops": flops, "flops_pruned": flops_pruned, "flop_ratio": flops / flops_pruned,
        "latency_b1_ms": 1e3 * lat["collapsed"][1], "latency_b1_pruned_ms": 1e3 * lat["pruned"][1],
        "speedup_b1": lat["collapsed"][1] / lat["pruned"][1],
        "latency_b256_ms": 1e3 * lat["collapsed"][256], "latency_b256_pruned_ms": 1e3 * lat["pruned"][256],
        "speedup_b256": lat["collapsed"][256] / lat["pruned"][256],
        **{f"latency_b{b}_cl_ms": 1e3 * cl["collapsed"][b] for b in (1, 256)},
        **{f"latency_b{b}_cl_pruned_ms": 1e3 * cl["pruned"][b] for b in (1, 256)},
        **{f"speedup_b{b}_cl": cl["collapsed"][b] / cl["pruned"][b] for b in (1, 256)}, "max_abs_diff": diff,
        "max_rel_diff": diff / float(reference.abs().max()), "max_abs_diff_fp64": diff64,
        "fp32_error_collapsed": err32["collapsed"], "fp32_error_pruned": err32["pruned"],
        "test_error_collapsed": err_collapsed, "test_error": ctx.test_error(pruned), "epochs": epochs, "wall_s": seconds,
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def _spred_structured(ctx: _Context, hidden: Sequence[str], sparsity: float, exponent: float) -> dict:
    from spred.train import TargetSparsity

    cfg = ctx.cfg
    model = ctx.new_model()
    spred.sparsify(model, _layer_lams(model, hidden, cfg.lam, exponent, ctx.data.example), groups="out")
    target = TargetSparsity(sparsity, ramp_epochs=cfg.ramp * cfg.epochs)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("spred"), target_sparsity=target, threshold=cfg.threshold)
    collapsed = spred.collapse(model, threshold=cfg.threshold)
    with torch.no_grad():  # a removed channel takes its bias along (spred penalises weights only)
        for n in hidden:
            m = dict(collapsed.named_modules())[n]
            if m.bias is not None:
                m.bias[zero_units(m.weight, 0)] = 0.0
    seconds = result.wall_time_s
    if cfg.finetune_epochs:
        seconds += ctx.fit(collapsed, cfg.finetune_epochs, lr=cfg.finetune_lr, mask=bp.keep_masks(collapsed), scheduler="cosine").wall_time_s
    row = _structured_row(ctx, "spred_group", sparsity, collapsed, ctx.test_error(collapsed), seconds, cfg.epochs + cfg.finetune_epochs, hidden)
    return {**row, "lam_exponent": exponent}


def _filter_norm(ctx: _Context, dense: nn.Module, dense_seconds: float, hidden: Sequence[str], spred_row: Mapping) -> dict:
    cfg = ctx.cfg
    model = copy.deepcopy(dense)
    modules = dict(model.named_modules())
    widths = [int(w) for w in spred_row["widths_nonzero"].split("-")]
    masks = {}
    with torch.no_grad():
        for n, width in zip(hidden, widths):
            m = modules[n]
            keep = torch.zeros(m.weight.shape[0], dtype=torch.bool, device=m.weight.device)
            keep[group_norms(m.weight, "out").flatten().argsort(descending=True)[:width]] = True
            m.weight[~keep] = 0.0
            m.bias[~keep] = 0.0
            masks[f"{n}.weight"] = keep.view((-1,) + (1,) * (m.weight.dim() - 1)).expand_as(m.weight).clone()
            masks[f"{n}.bias"] = keep.clone()
    seconds = dense_seconds
    if cfg.finetune_epochs:
        seconds += ctx.fit(model, cfg.finetune_epochs, lr=cfg.finetune_lr, mask=masks, scheduler="cosine").wall_time_s
    row = _structured_row(ctx, "filter_norm", spred_row["target_sparsity"], model, ctx.test_error(model), seconds, cfg.epochs + cfg.finetune_epochs, hidden)
    return {**row, "lam_exponent": spred_row["lam_exponent"]}


def run_structured(cfg: CompressionConfig, seed: int, data: Data, build: Callable[[str, int], nn.Module], *, progress: bool = False) -> list[dict]:
    """The structured runs of one seed (``cfg`` checked); see :func:`spred.experiments.compression.run_structured`."""
    from spred.compress import count_parameters

    name = cfg.structured_model
    epochs = cfg.structured_epochs or cfg.epochs
    ft = cfg.finetune_epochs if cfg.structured_finetune_epochs is None else cfg.structured_finetune_epochs
    sub = dataclasses.replace(cfg, epochs=epochs, finetune_epochs=ft)
    probe = build(name, seed)
    ctx = _Context(sub, name, seed, data, count_parameters(probe), None, progress, build=build)
    hidden = grouped_layers(probe)
    rows = []
    for sparsity in cfg.structured_sparsity:
        for exponent in cfg.structured_lam_exponents:
            with _common.torch_seed(seed):
                rows.append(_spred_structured(ctx, hidden, sparsity, exponent))
    with _common.torch_seed(seed):
        dense = build(name, seed)
        dense_seconds = ctx.fit(dense, epochs, lr=ctx.lr("magnitude")).wall_time_s
    for row in list(rows):
        with _common.torch_seed(seed):
            rows.append(_filter_norm(ctx, dense, dense_seconds, hidden, row))
    return rows

