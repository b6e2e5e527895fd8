"""Physical removal of zero channels and neurons through Torch-Pruning's dependency graph.

A channel (a conv filter, a Linear neuron) whose weights are all zero still emits a
constant: its bias, mapped by BatchNorm to ``gamma * (b - mean) / sqrt(var + eps) + beta``
and then by the activation. Removing it is exact only if that constant is 0 where the
channel is consumed, or if the next layer can absorb it into its own bias:

* a Linear consumer always can (``bias += W[:, j] * a_j``);
* a convolution consumer can when no zero padding is in effect (``padding=0``, or a
  non-zero ``padding_mode``): every output position then sees a full window of
  ``a_j`` and ``bias += a_j * W[:, j].sum()``. Across zero padding the border
  positions see zeros instead, so such a channel is kept and reported.

Channels coupled through residual adds or concatenations (one Torch-Pruning
dependency group) are removed only if their weights are zero in every coupled layer.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
from torch import nn

from spred.compress._plan import PruningPlan, add_zero_bias, slicer_for
from spred.nn import collapse, is_sparsified

logger = logging.getLogger("spred")

_PRODUCER_TYPES = (nn.Linear, nn.modules.conv._ConvNd)
_CONSTANT_RTOL = 1e-6


def _import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "spred.compress.prune_channels needs Torch-Pruning, an optional dependency: "
            "install it with pip install 'spred[prune]' (or pip install torch-pruning)."
        ) from exc
    return torch_pruning


# ---------------------------------------------------------------------------
# Inputs and outputs of the model
# ---------------------------------------------------------------------------


def _split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) > 0:
        return tuple(example_inputs), {}
    raise TypeError(
        "The 'example_inputs' parameter of prune_channels must be a tensor, a non-empty tuple/list of positional "
        f"inputs or a dict of keyword inputs. Got {type(example_inputs).__name__} instead."
    )


def _forward(model: nn.Module, inputs: tuple[tuple, dict]):
    args, kwargs = inputs
    return model(*args, **kwargs)


def _flat_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flat_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_tensors(v)]
    return []


def _max_abs_diff(a, b) -> float:
    fa, fb = _flat_tensors(a), _flat_tensors(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return math.inf
    return max((float((x.double() - y.double()).abs().max()) for x, y in zip(fa, fb) if x.numel()), default=0.0)


# ---------------------------------------------------------------------------
# What each consumer sees: per-input-channel min and max over the example inputs
# ---------------------------------------------------------------------------


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return x.dim() - 1
    return 1 if x.dim() == module.weight.dim() else 0  # batched / unbatched convolution


def _record_consumer_inputs(model: nn.Module, inputs) -> tuple[Any, dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]]:
    """Run ``model`` once; return its output and, for every Linear/Conv, (min, max) of each input channel."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0].detach()
        flat = x.movedim(_channel_dim(module, x), 0).reshape(x.shape[_channel_dim(module, x)], -1).double()
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        if module in stats:
            lo, hi = torch.minimum(stats[module][0], lo), torch.maximum(stats[module][1], hi)
        stats[module] = (lo, hi)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _PRODUCER_TYPES)]
    try:
        with torch.no_grad():
            out = _forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return out, stats


# ---------------------------------------------------------------------------
# Decisions, one per dependency group
# ---------------------------------------------------------------------------


@dataclass
class _Decision:
    root: nn.Module
    root_name: str
    remove: list[int]
    folds: list[tuple[nn.Module, int, float]] = field(default_factory=list)
    kept_constant: list[dict] = field(default_factory=list)
    kept_last: list[dict] = field(default_factory=list)
    kept_rounding: list[dict] = field(default_factory=list)
    silence: list[tuple[nn.Module, int, float]] = field(default_factory=list)


def _zero_padding(conv: nn.modules.conv._ConvNd) -> tuple[int, ...] | None:
    """The zero padding a convolution applies, or ``None`` when a constant input stays constant."""
    if conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return None
        pad = tuple(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))  # "same"
    else:
        pad = tuple(conv.padding)
    return pad if any(p > 0 for p in pad) else None


def _row_is_zero(module: nn.Module, i: int) -> bool:
    return bool((module.weight[i] == 0).all())


def _constant_at(stats, consumer: nn.Module, j: int) -> float | None:
    """The constant value of input channel ``j`` of ``consumer``, or ``None`` if it varies."""
    if consumer not in stats:
        return None
    lo, hi = float(stats[consumer][0][j]), float(stats[consumer][1][j])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if hi - lo > _CONSTANT_RTOL * max(1.0, abs(lo), abs(hi)):
        return None
    return 0.0 if lo == hi == 0.0 else 0.5 * (lo + hi)


def _group_problem(tp, DG, group, out_fns: set) -> str | None:
    """Why a whole group cannot be pruned (outputs of the model, unsupported layers), or ``None``."""
    passthrough = {tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE}
    for item in group:
        node = item.dep.target
        if node.type == tp.ops.OPTYPE.OUTPUT or (DG.is_out_channel_pruning_fn(item.dep.handler) and node.grad_fn in out_fns):
            return "its channels are outputs of the model (the output shape must not change)"
        if node.type in passthrough:
            continue
        module = node.module
        slicer = slicer_for(module) if isinstance(module, nn.Module) else None
        name = DG._module2name.get(module, type(module).__name__)
        if slicer is None:
            return f"it contains '{name}' ({type(module).__name__}), which prune_channels does not support"
        why = slicer.unsupported(module)
        if why is not None:
            return f"it contains '{name}', a {why}, which prune_channels does not support"
    return None


def _decide(tp, DG, group, stats, out_fns: set, plan: PruningPlan, round_to: int) -> _Decision | None:
    root = group[0].dep.target.module
    root_name = DG._module2name[root]
    zero: dict[int, bool] = {}
    producers, consumers = [], []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, _PRODUCER_TYPES):
            (producers if DG.is_out_channel_pruning_fn(item.dep.handler) else consumers).append(item)
    for item in producers:
        for i, r in zip(item.idxs, item.root_idxs):
            zero[r] = zero.get(r, True) and _row_is_zero(item.dep.target.module, i)
    candidates = sorted(r for r, z in zero.items() if z)
    if not candidates:
        return None
    problem = _group_problem(tp, DG, group, out_fns)
    if problem is not None:
        plan.skipped.append({"layer": root_name, "zero_channels": len(candidates), "reason": problem})
        return None

    decision = _Decision(root, root_name, [])
    blocked: dict[int, dict] = {}
    folds: dict[int, list[tuple[nn.Module, int, float]]] = {r: [] for r in candidates}
    reads: dict[int, list[tuple[nn.Module, int, float]]] = {r: [] for r in candidates}  # every consumer input, zeros included
    for item in consumers:
        consumer = item.dep.target.module
        cname = DG._module2name[consumer]
        for j, r in zip(item.idxs, item.root_idxs):
            if r not in folds or r in blocked:
                continue
            a = _constant_at(stats, consumer, j)
            if a is None:
                blocked[r] = {
                    "layer": root_name, "channel": r, "constant": None, "consumer": cname,
                    "reason": f"its value at the input of '{cname}' is not constant on example_inputs (an operation on the way, "
                              "e.g. zero padding in a pooling layer, depends on position or data)",
                }
            elif a == 0.0:
                reads[r].append((consumer, j, a))
            elif isinstance(consumer, nn.modules.conv._ConvNd) and _zero_padding(consumer) is not None:
                blocked[r] = {
                    "layer": root_name, "channel": r, "constant": a, "consumer": cname,
                    "reason": f"it emits the constant {a:.4g} into '{cname}', whose zero padding {_zero_padding(consumer)} "
                              "makes folding inexact at the border (sparsify the bias / BatchNorm shift too, or use padding=0)",
                }
            else:
                folds[r].append((consumer, j, a))
                reads[r].append((consumer, j, a))
    removable = [r for r in candidates if r not in blocked]
    decision.kept_constant = [blocked[r] for r in sorted(blocked)]
    n_root = slicer_for(root).out_size(root)
    if removable and len(removable) >= n_root:
        keep = removable.pop(0)
        decision.kept_last.append({"layer": root_name, "channel": keep,
                                   "reason": f"all {n_root} channels are zero; one is kept so that the layer is not emptied"})
    n_keep = n_root - len(removable)
    extra = min(n_root, -(-n_keep // round_to) * round_to) - n_keep
    if extra > 0:
        # all are zero and will be silenced, so any choice is exact: those with a constant to fold first, then the lowest indices
        for r in sorted(removable, key=lambda r: (not folds[r], r))[:extra]:
            removable.remove(r)
            decision.kept_rounding.append({"layer": root_name, "channel": r,
                                           "reason": f"kept so that the layer keeps a multiple of round_to={round_to} channels"})
    decision.remove = removable
    decision.folds = [f for r in removable for f in folds[r]]
    # a zero channel that stays (to round a width, or so as not to empty a layer) is silenced: the next layer's weights
    # that read it are zeroed and its constant folded, exact for the same reasons as a removal
    kept = [k["channel"] for k in decision.kept_rounding + decision.kept_last]
    decision.silence = [f for r in kept for f in reads[r]]
    return decision


def _fold(folds: list[tuple[nn.Module, int, float]], plan: PruningPlan, names: dict) -> None:
    """Add ``a_j * sum(W[:, j])`` to each consumer's bias (exact: no zero padding, see module doc)."""
    by_module: dict[nn.Module, list[tuple[int, float]]] = {}
    for consumer, j, a in folds:
        by_module.setdefault(consumer, []).append((j, a))
    with torch.no_grad():
        for consumer, entries in by_module.items():
            if add_zero_bias(consumer):
                plan.added_bias.append(names[consumer])
            w = consumer.weight.double()
            idx = torch.as_tensor([j for j, _ in entries], device=w.device)
            a = torch.as_tensor([a for _, a in entries], dtype=torch.float64, device=w.device)
            cols = w.index_select(1, idx).flatten(2).sum(2) if w.dim() > 2 else w.index_select(1, idx)
            consumer.bias.add_((cols @ a).to(consumer.bias.dtype))


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------


def _silence(entries: list[tuple[nn.Module, int, float]], plan: PruningPlan, names: dict) -> None:
    """Fold the constant of each kept zero channel into its consumer and zero the consumer's weights that read it."""
    _fold([e for e in entries if e[2] != 0.0], plan, names)
    with torch.no_grad():
        for consumer, j, _ in entries:
            consumer.weight.select(1, j).zero_()


def _zero_small_rows(model: nn.Module, threshold: float) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _PRODUCER_TYPES) and slicer_for(m).unsupported(m) is None and m.weight.numel():
                small = m.weight.abs().flatten(1).amax(dim=1) <= threshold
                m.weight[small] = 0.0


def prune_channels(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    *,
    threshold: float = 0.0,
    round_to: int | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, PruningPlan]:
    """Physically remove the zero output channels / neurons of ``model``.

    A Conv filter or Linear row whose weights all satisfy ``|w| <= threshold`` is a
    zero channel. It is removed, together with the matching BatchNorm entries and input
    channels of the next layers (followed through residual adds and concatenations by
    Torch-Pruning's dependency graph), when the function of the model (in eval mode)
    stays the same:

    * the channel is zero in *every* layer coupled with it (residual adds);
    * the constant it still emits (bias, BatchNorm shift, activation) is exactly 0 at
      every consumer, or can be folded exactly into the consumer's bias: always for a
      Linear, for a convolution only when it applies no zero padding. Otherwise the
      channel is kept and listed in ``plan.kept_nonzero_constant`` with the reason;
    * at least one channel of every layer is kept (``plan.kept_last``);
    * with ``round_to``, every pruned layer keeps a multiple of ``round_to`` channels
      (or all of them): enough zero channels are kept to round up (``plan.kept_rounding``);
    * a zero channel kept for one of these two reasons is silenced: the weights of the
      next layers that read it are zeroed (its constant, if any, folded as for a
      removal), so those layers have as many nonzero weights as with the exact widths;
    * channels that are outputs of the model, or that pass through layers without a
      registered slicer (LayerNorm, grouped convolutions, ...), are left alone
      (``plan.skipped``).

    Parameters
    ----------
    model : nn.Module
        A plain model (e.g. the result of :func:`spred.collapse`). A model still
        sparsified by :func:`spred.sparsify` is collapsed first with the same
        ``threshold`` (on a copy unless ``inplace``).
    example_inputs : Tensor, tuple of Tensor or dict
        Inputs for one forward pass (``model(x)``, ``model(*inputs)`` or
        ``model(**inputs)``), with the shape used in deployment and at least 2 samples:
        they are used to trace the graph, to read the constant each zero channel
        emits and to verify the result.
    threshold : float, default=0.0
        Rows with all ``|w| <= threshold`` count as zero (and are written as exact zeros).
    round_to : int or None, default=None
        Keep a multiple of ``round_to`` channels in every pruned layer, by keeping some
        zero channels (exact, since they stay zero). Convolution kernels work on blocks of
        channels (8 floats per AVX2 register), so an odd width can run slower than the
        next multiple of 8: ``round_to=8`` trades some FLOPs for kernels that run nearer
        their peak. Measure both (*Channel widths* in docs/deployment.md).
    inplace : bool, default=False
        Prune ``model`` itself instead of a deep copy.

    Returns
    -------
    pruned : nn.Module
        The smaller model (plain modules of the original classes, in the original
        training/eval mode). Its outputs equal the input model's (eval mode) up to
        rounding; ``plan.max_abs_diff`` is the difference measured on ``example_inputs``.
    plan : PruningPlan
        What was removed, what was kept and why; ``plan.to_json()`` and
        :func:`apply_plan` rebuild the pruned shapes on a fresh model.

    Raises
    ------
    ImportError
        If Torch-Pruning (``spred[prune]``) is not installed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"The 'model' parameter of prune_channels must be a torch.nn.Module. Got {type(model).__name__} instead.")
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"The 'threshold' parameter of prune_channels must be a float in the range [0, inf). Got {threshold!r} of type {type(threshold).__name__} instead.")
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"The 'threshold' parameter of prune_channels must be a float in the range [0, inf). Got {threshold!r} instead.")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)):
        raise TypeError(f"The 'round_to' parameter of prune_channels must be an int in the range [1, inf) or None. Got {round_to!r} of type {type(round_to).__name__} instead.")
    if round_to is not None and round_to < 1:
        raise ValueError(f"The 'round_to' parameter of prune_channels must be an int in the range [1, inf) or None. Got {round_to!r} instead.")
    if not isinstance(inplace, bool):
        raise TypeError(f"The 'inplace' parameter of prune_channels must be a bool. Got {inplace!r} instead.")
    round_to = round_to or 1
    inputs = _split_inputs(example_inputs)
    tp = _import_torch_pruning()

    if is_sparsified(model):
        logger.info("prune_channels: collapsing the spred parametrisation first (threshold %g)", threshold)
        model = collapse(model, threshold=float(threshold), inplace=inplace)
    elif not inplace:
        model = copy.deepcopy(model)
    training = {name: m.training for name, m in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    plan = PruningPlan(threshold=float(threshold), round_to=round_to)
    try:
        model.eval()
        _zero_small_rows(model, float(threshold))
        reference, stats = _record_consumer_inputs(model, inputs)
        for p in model.parameters():
            p.requires_grad_(True)
        outputs = []

        def forward_fn(m, _):
            out = _forward(m, inputs)
            outputs.append(out)
            return out

        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning's notes on unknown ops; unsupported groups are reported in the plan
            DG = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, forward_fn=forward_fn, verbose=False)
        out_fns = {t.grad_fn for t in _flat_tensors(outputs[-1]) if t.grad_fn is not None}
        names = {m: n for n, m in model.named_modules()}
        decisions, silence = [], []
        for group in DG.get_all_groups(root_module_types=_PRODUCER_TYPES):
            d = _decide(tp, DG, group, stats, out_fns, plan, round_to)
            if d is None:
                continue
            plan.kept_nonzero_constant.extend(d.kept_constant)
            plan.kept_last.extend(d.kept_last)
            plan.kept_rounding.extend(d.kept_rounding)
            if d.remove:
                pruner = DG.get_pruner_of_module(d.root)
                if not DG.check_pruning_group(DG.get_pruning_group(d.root, pruner.prune_out_channels, d.remove)):
                    plan.skipped.append({"layer": d.root_name, "zero_channels": len(d.remove),
                                         "reason": "Torch-Pruning's check_pruning_group refused it (a coupled layer would be emptied)"})
                    continue
                decisions.append(d)
            silence.extend(d.silence)
        for d in decisions:
            _fold(d.folds, plan, names)
        _silence(silence, plan, names)
        alive: dict[tuple[str, str], list[int]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for d in decisions:
            pruner = DG.get_pruner_of_module(d.root)
            group = DG.get_pruning_group(d.root, pruner.prune_out_channels, d.remove)
            _track(DG, group, names, alive, sizes)
            group.prune(record_history=False)
            plan.history.append([d.root_name, list(d.remove)])
        plan.layers = _layer_entries(model, alive, sizes)
        with torch.no_grad():
            plan.max_abs_diff = _max_abs_diff(reference, _forward(model, inputs))
    finally:
        for name, m in model.named_modules():
            m.training = training.get(name, m.training)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, requires_grad.get(name.rsplit(".", 1)[0] + ".weight", True)))
    scale = max((float(t.abs().max()) for t in _flat_tensors(reference) if t.numel()), default=1.0)
    if plan.max_abs_diff > 1e-4 * max(1.0, scale):
        warnings.warn(
            f"prune_channels changed the outputs on example_inputs by up to {plan.max_abs_diff:.3g} (output scale {scale:.3g}); "
            "an operation in the model is not handled exactly. Check the plan and report the model.",
            RuntimeWarning,
            stacklevel=2,
        )
    logger.info("prune_channels removed %d channels in %d groups; kept %d zero channels with a nonzero constant, %d to avoid "
                "empty layers, %d to round widths; skipped %d groups", plan.n_removed, len(plan.history),
                len(plan.kept_nonzero_constant), len(plan.kept_last), len(plan.kept_rounding), len(plan.skipped))
    return model, plan


def _track(DG, group, names, alive, sizes) -> None:
    """Record, in the numbering of the unpruned model, which indices every touched module keeps."""
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or slicer_for(module) is None:
            continue
        slicer = slicer_for(module)
        is_out = not isinstance(module, _PRODUCER_TYPES) or DG.is_out_channel_pruning_fn(item.dep.handler)
        key = (names[module], "out" if is_out else "in")
        if key not in alive:
            n = slicer.out_size(module) if is_out else slicer.in_size(module)
            sizes[key], alive[key] = n, list(range(n))
        drop = set(int(i) for i in item.idxs)
        alive[key] = [orig for pos, orig in enumerate(alive[key]) if pos not in drop]


def _layer_entries(model, alive, sizes) -> dict[str, dict]:
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    entries: dict[str, dict] = {}
    for (name, dim), kept in sorted(alive.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] == "in")):
        e = entries.setdefault(name, {"type": type(modules[name]).__name__, "out_size": None, "kept_out": None, "in_size": None, "kept_in": None})
        e[f"{dim}_size"], e[f"kept_{dim}"] = sizes[(name, dim)], kept
    return entries
