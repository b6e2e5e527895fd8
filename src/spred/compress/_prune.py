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
Depthwise convolutions follow their channel; a LayerNorm / GroupNorm loses a channel
only if it is exactly 0 at its input, and becomes an exact ``ZeroChannelLayerNorm`` /
``ZeroChannelGroupNorm`` (:mod:`spred.compress._layers`); whole zero attention heads
go first (:mod:`spred.compress._heads`). Carrying the decisions out, with the
one-group-at-a-time fallback that keeps a group Torch-Pruning cannot slice, is
:mod:`spred.compress._apply`.

Which rows are zero is the zero rule of :func:`spred.nn._rules.zero_units` (every
entry ``|w| <= threshold``). A model still sparsified is collapsed first, and
:func:`spred.collapse` applies that rule with the model's own groups (a channel group
is zero when its whole norm is small, whatever its rows hold); the rows are then zero
when exactly 0, so that no second decision changes what collapse kept. Reading and folding the constants is
:mod:`spred.compress._fold`, shared with the compression experiment.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spred._validation import check_bool, check_float, check_int
from spred.compress import _fold
from spred.compress._apply import Decision, Entry, apply_checked
from spred.compress._graph import attention_layers, build_graph, first_pass, import_torch_pruning
from spred.compress._heads import prune_heads
from spred._inputs import check_module, flat_tensors, split_inputs
from spred.compress._layers import out_rows, producer_types
from spred.compress._plan import PruningPlan, slicer_for
from spred.nn import collapse, is_sparsified
from spred.nn._graph import dependency_groups
from spred.nn._rules import zero_units

logger = logging.getLogger(__name__)



@dataclass
class _Graph:
    """What every decision reads: Torch-Pruning's graph, the consumers' input ranges, the zero rows."""

    tp: object
    DG: object
    ranges: _fold.Ranges
    out_fns: set
    zero_rows: dict[nn.Module, torch.Tensor]
    round_to: int
    attention: dict[nn.Module, str] = field(default_factory=dict)  # q/k/v producers and output projections -> attention name


def _group_problem(g: _Graph, group) -> str | None:
    """Why a whole group cannot be pruned (outputs of the model, unsupported layers), or ``None``.

    Of several reasons the most basic is given (outputs first), whichever layer Torch-Pruning lists first."""
    problems = [p for p in (_item_problem(g, item) for item in group) if p is not None]
    return min(problems, key=lambda p: p[0])[1] if problems else None


def _item_problem(g: _Graph, item) -> tuple[int, str] | None:
    """``(rank, reason)`` if this item of a group keeps the group from being pruned; lower ranks are more basic."""
    tp, DG = g.tp, g.DG
    passthrough = {tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE,
                   tp.ops.OPTYPE.EXPAND}
    node = item.dep.target
    if node.type == tp.ops.OPTYPE.OUTPUT or (DG.is_out_channel_pruning_fn(item.dep.handler) and node.grad_fn in g.out_fns):
        return 0, "its channels are outputs of the model (the output shape must not change)"
    if node.type in passthrough or id(node.module) in {id(p) for p, _ in DG.unwrapped_parameters}:
        return None
    module = node.module
    if isinstance(module, nn.MultiheadAttention):
        return 1, (f"it is read by '{DG._module2name.get(module, '')}', an nn.MultiheadAttention, whose input width is its "
                   "embed_dim (Torch-Pruning would cut its heads' dimensions with it); only its zero heads are removed")
    within = g.attention.get(module)
    if within is not None and (DG.is_out_channel_pruning_fn(item.dep.handler) != (within[1] == "out")):
        return 2, (f"its channels are dimensions inside the attention heads of '{within[0]}'; prune_channels removes "
                   "whole zero heads only (their value rows all 0)")
    if type(module).__name__ in _HEAD_OPS:
        return 3, (f"its channels pass through a {_HEAD_OPS[type(module).__name__]} that splits them into attention "
                   "heads; prune_channels does not remove attention heads or head dims (the channels are kept)")
    slicer = slicer_for(module) if isinstance(module, nn.Module) else None
    name = DG._module2name.get(module, type(module).__name__)
    if slicer is None:
        return 4, f"it contains '{name}' ({type(module).__name__}), which prune_channels does not support"
    why = slicer.unsupported(module)
    if why is not None:
        return 4, f"it contains '{name}', a {why}, which prune_channels does not support"
    return None


_HEAD_OPS = {"_UnbindOp": "unbind"}


def _check_layernorm_inputs(g: _Graph, group, candidates: list[int], root_name: str, blocked: dict[int, dict]) -> None:
    """Block candidates that are not exactly 0 at the input of a LayerNorm of the group.

    A LayerNorm's mean and variance run over all channels; a removed channel is made up
    for (:class:`~spred.compress._layers.ZeroChannelLayerNorm`) only when it was 0.
    """
    for item in group:
        norm = item.dep.target.module
        if not isinstance(norm, (nn.LayerNorm, nn.GroupNorm)):
            continue
        name = g.DG._module2name.get(norm, "LayerNorm")
        values = _fold.input_constants(g.ranges, norm, [int(j) for j in item.idxs]).tolist()
        for r, a in zip(item.root_idxs, values):
            if r in candidates and r not in blocked and a != 0.0:
                blocked[r] = {
                    "layer": root_name, "channel": r, "constant": None if math.isnan(a) else a, "consumer": name,
                    "reason": f"it is not 0 at the input of the {type(norm).__name__} '{name}' (a parameter outside the "
                              "group, e.g. a position embedding, adds to it), so removing it would change the norm's "
                              "mean and variance",
                }  # fmt: skip


def _zero_candidates(g: _Graph, group) -> tuple[list[int], list]:
    """The root indices that are zero in every producer of the group, and the group's consumer items."""
    zero: dict[int, bool] = {}
    consumers = []
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, producer_types()):
            continue
        if not g.DG.is_out_channel_pruning_fn(item.dep.handler):
            consumers.append(item)
            continue
        rows = g.zero_rows[module]
        for i, r in zip(item.idxs, item.root_idxs):
            zero[r] = zero.get(r, True) and bool(rows[i])
    return sorted(r for r, z in zero.items() if z), consumers


def _read_constants(g: _Graph, consumers, candidates: list[int], root_name: str):
    """Per candidate: where its constant folds, every consumer input it reaches, or why it cannot go."""
    blocked: dict[int, dict] = {}
    folds: dict[int, list[Entry]] = {r: [] for r in candidates}
    reads: dict[int, list[Entry]] = {r: [] for r in candidates}  # every consumer input, zeros included
    for item in consumers:
        consumer = item.dep.target.module
        cname = g.DG._module2name[consumer]
        constants = _fold.input_constants(g.ranges, consumer, [int(j) for j in item.idxs]).tolist()
        for j, r, a in zip(item.idxs, item.root_idxs, constants):
            if r not in folds or r in blocked:
                continue
            padding = _fold.zero_padding(consumer)
            if math.isnan(a):
                blocked[r] = {
                    "layer": root_name, "channel": r, "constant": None, "consumer": cname,
                    "reason": f"its value at the input of '{cname}' is not constant on example_inputs (an operation on the way, "
                              "e.g. zero padding in a pooling layer, depends on position or data)",
                }  # fmt: skip
            elif a != 0.0 and padding is not None:
                blocked[r] = {
                    "layer": root_name, "channel": r, "constant": a, "consumer": cname,
                    "reason": f"it emits the constant {a:.4g} into '{cname}', whose zero padding {padding} "
                              "makes folding inexact at the border (sparsify the bias / BatchNorm shift too, or use padding=0)",
                }  # fmt: skip
            else:
                if a != 0.0:
                    folds[r].append((consumer, j, a))
                reads[r].append((consumer, j, a))
    return blocked, folds, reads


def _keep_some(d: Decision, removable: list[int], folds: dict[int, list[Entry]], n_root: int, round_to: int) -> None:
    """Keep one channel if all would go, and enough to round the width to ``round_to`` (``removable`` shrinks)."""
    if removable and len(removable) >= n_root:
        keep = removable.pop(0)
        d.kept_last.append({"layer": d.root_name, "channel": keep,
                            "reason": f"all {n_root} channels are zero; one is kept so that the layer is not emptied"})  # fmt: skip
    n_keep = n_root - len(removable)
    extra = min(n_root, -(-n_keep // round_to) * round_to) - n_keep
    if extra > 0:
        # all are zero and will be silenced, so any choice is exact: those with a constant to fold first, then the lowest indices
        for r in sorted(removable, key=lambda r: (not folds[r], r))[:extra]:
            removable.remove(r)
            d.kept_rounding.append({"layer": d.root_name, "channel": r,
                                    "reason": f"kept so that the layer keeps a multiple of round_to={round_to} channels"})  # fmt: skip


def _decide(g: _Graph, group, plan: PruningPlan) -> Decision | None:
    root = group[0].dep.target.module
    root_name = g.DG._module2name[root]
    candidates, consumers = _zero_candidates(g, group)
    if not candidates:
        return None
    problem = _group_problem(g, group)
    if problem is not None:
        plan.skipped.append({"layer": root_name, "zero_channels": len(candidates), "reason": problem})
        return None
    blocked, folds, reads = _read_constants(g, consumers, candidates, root_name)
    _check_layernorm_inputs(g, group, candidates, root_name, blocked)
    decision = Decision(root, root_name, [], kept_constant=[blocked[r] for r in sorted(blocked)])
    removable = [r for r in candidates if r not in blocked]
    _keep_some(decision, removable, folds, slicer_for(root).out_size(root), g.round_to)
    decision.remove = removable
    decision.folds = [f for r in removable for f in folds[r]]
    # a zero channel that stays (to round a width, or so as not to empty a layer) is silenced: the next layer's weights
    # that read it are zeroed and its constant folded, exact for the same reasons as a removal
    kept = [k["channel"] for k in decision.kept_rounding + decision.kept_last]
    decision.silence = [f for r in kept for f in reads[r]]
    return decision


def _zero_small_rows(model: nn.Module, threshold: float) -> dict[nn.Module, torch.Tensor]:
    """Write exact zeros into the rows that count as zero (the zero rule, per output unit); return every producer's zero rows."""
    rows = {}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, producer_types()):
                w = out_rows(m)
                if slicer_for(m).unsupported(m) is None and w.numel():
                    w[zero_units(w.detach(), 0, threshold)] = 0.0
                rows[m] = zero_units(w.detach(), 0)
    return rows


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------


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
      removal; not into a layer without bias), so those layers have as many nonzero
      weights as with the exact widths;
    * a channel normalised by a LayerNorm / GroupNorm must be exactly 0 at the norm's
      input (the norm is replaced by an exact equivalent that still counts it);
    * depthwise convolutions, transformers' ``Conv1D`` (GPT-2), embedding tables and
      parameters held directly by a module (position embeddings, class tokens, layer
      scales) are sliced with the channel; tied parameters (GPT-2's ``lm_head`` and
      ``wte``) are sliced alike and stay one ``Parameter``;
    * attention heads whose value rows are all 0 are removed whole (timm-style
      ``qkv`` attention, Hugging Face BERT and GPT-2; ``plan.heads``); the zero heads
      of ``nn.MultiheadAttention`` and dimensions inside heads are kept;
    * channels that are outputs of the model, or that pass through layers without a
      registered slicer (grouped non-depthwise convolutions, ...), are
      left alone (``plan.skipped``), and so is any group whose removal Torch-Pruning
      cannot carry out exactly (the groups are then pruned one at a time, and a group
      that raises or changes the outputs is kept).

    Parameters
    ----------
    model : nn.Module
        A plain model (e.g. the result of :func:`spred.collapse`). A model still
        sparsified by :func:`spred.sparsify` is collapsed first with the same
        ``threshold`` (on a copy unless ``inplace``), which decides its zeros by its
        own groups: the same model as ``prune_channels(collapse(model, threshold=t), x)``.
    example_inputs : Tensor, tuple of Tensor or dict
        Inputs for one forward pass (``model(x)``, ``model(*inputs)`` or
        ``model(**inputs)``), with the shape used in deployment and at least 2 samples:
        they are used to trace the graph, to read the constant each zero channel
        emits and to verify the result.
    threshold : float, default=0.0
        Rows with all ``|w| <= threshold`` count as zero (and are written as exact zeros).
        For a sparsified model, the threshold of :func:`spred.collapse`: the entries,
        rows or channel groups it zeroes are the zeros.
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
    ValueError
        If the model does not run on ``example_inputs`` (e.g. a wrong shape).
    RuntimeError
        If Torch-Pruning cannot trace the model.
    """
    check_module(model, "model", "prune_channels")
    threshold = check_float(threshold, "threshold", "prune_channels", 0.0)
    round_to = check_int(round_to, "round_to", "prune_channels", 1, optional=True) or 1
    check_bool(inplace, "inplace", "prune_channels")
    inputs = split_inputs(example_inputs, "prune_channels")
    tp = import_torch_pruning()

    row_threshold = threshold
    if is_sparsified(model):
        logger.info("prune_channels: collapsing the spred parametrisation first (threshold %g)", threshold)
        model = collapse(model, threshold=threshold, inplace=inplace)
        row_threshold = 0.0  # collapse decided the zeros with the model's groups; a row rule on top would zero more
    elif not inplace:
        model = copy.deepcopy(model)
    training = {name: m.training for name, m in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    plan = PruningPlan(threshold=threshold, round_to=round_to)
    try:
        model.eval()
        zero_rows = _zero_small_rows(model, row_threshold)
        reference, ranges = first_pass(model, inputs)
        plan.heads, plan.skipped = prune_heads(model)
        if plan.heads:  # the widths changed: read the ranges again (the outputs are the same, the value rows were 0)
            zero_rows = _zero_small_rows(model, row_threshold)
            _, ranges = first_pass(model, inputs)
        DG, out_fns = build_graph(tp, model, inputs)
        decisions, silence = _decide_all(model, _Graph(tp, DG, ranges, out_fns, zero_rows, round_to, attention_layers(model)), plan)
        model = apply_checked(tp, DG, model, inputs, reference, decisions, silence, plan)
    finally:
        for name, m in model.named_modules():
            m.training = training.get(name, m.training)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, requires_grad.get(name.rsplit(".", 1)[0] + ".weight", True)))
    scale = max((float(t.abs().max()) for t in flat_tensors(reference) if t.numel()), default=1.0)
    if plan.max_abs_diff > 1e-4 * max(1.0, scale):
        warnings.warn(
            f"prune_channels changed the outputs on example_inputs by up to {plan.max_abs_diff:.3g} (output scale {scale:.3g}); "
            "an operation in the model is not handled exactly. Check the plan and report the model.",
            RuntimeWarning,
            stacklevel=2,
        )
    logger.info("prune_channels removed %d channels in %d groups; kept %d zero channels with a nonzero constant, %d to avoid "
                "empty layers, %d to round widths; skipped %d groups", plan.n_removed, len(plan.history),
                len(plan.kept_nonzero_constant), len(plan.kept_last), len(plan.kept_rounding), len(plan.skipped))  # fmt: skip
    return model, plan


def _decide_all(model: nn.Module, g: _Graph, plan: PruningPlan) -> tuple[list[Decision], list[Entry]]:
    """One decision per dependency group with zero channels; the groups to prune and the channels to silence."""
    decisions, silence = [], []
    producers = producer_types()
    for _, _, _, group in dependency_groups(model, g.DG, lambda m: isinstance(m, producers)):
        try:
            d = _decide(g, group, plan)
        except (IndexError, RuntimeError, ValueError) as exc:  # Torch-Pruning mapped indices that do not fit a layer
            name = g.DG._module2name.get(group[0].dep.target.module, "?")
            plan.skipped.append({"layer": name, "zero_channels": None,
                                 "reason": f"Torch-Pruning's channel mapping does not fit its layers ({type(exc).__name__}: "
                                           f"{str(exc)[:160]}); the group is kept"})  # fmt: skip
            continue
        if d is None:
            continue
        plan.kept_nonzero_constant.extend(d.kept_constant)
        plan.kept_last.extend(d.kept_last)
        plan.kept_rounding.extend(d.kept_rounding)
        if d.remove:
            pruner = g.DG.get_pruner_of_module(d.root)
            if not g.DG.check_pruning_group(g.DG.get_pruning_group(d.root, pruner.prune_out_channels, d.remove)):
                plan.skipped.append({"layer": d.root_name, "zero_channels": len(d.remove),
                                     "reason": "Torch-Pruning's check_pruning_group refused it (a coupled layer would be emptied)"})  # fmt: skip
                continue
            decisions.append(d)
        silence.extend(d.silence)
    return decisions, silence

