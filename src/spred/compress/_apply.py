"""Carrying out prune_channels' decisions: fold, silence, prune through Torch-Pruning, record the plan.

If pruning all groups at once fails (a shape Torch-Pruning got wrong) or changes the
outputs, the groups are pruned again one at a time on copies, and a group that fails
is kept and listed in ``plan.skipped``: ``prune_channels`` never crashes on a shape.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from spred.compress import _fold
from spred.compress._graph import build_graph, max_abs_diff
from spred._inputs import flat_tensors, run
from spred.compress._layers import make_zero_channel_groupnorm, make_zero_channel_layernorm, producer_types, retie, tied_parameters
from spred.compress._plan import PruningPlan, slicer_for

logger = logging.getLogger(__name__)

Entry = tuple[nn.Module, int, float]  # (consumer, its input channel, the constant that channel carries)


@dataclass
class Decision:
    root: nn.Module
    root_name: str
    remove: list[int]
    folds: list[Entry] = field(default_factory=list)
    kept_constant: list[dict] = field(default_factory=list)
    kept_last: list[dict] = field(default_factory=list)
    kept_rounding: list[dict] = field(default_factory=list)
    silence: list[Entry] = field(default_factory=list)



def fold_into(entries: list[Entry], plan: PruningPlan, names: dict) -> None:
    """Fold the constants of ``entries`` into their consumers' biases, one call per consumer."""
    by_module: dict[nn.Module, list[tuple[int, float]]] = {}
    for consumer, j, a in entries:
        if a != 0.0:
            by_module.setdefault(consumer, []).append((j, a))
    for consumer, pairs in by_module.items():
        if _fold.fold_inputs(consumer, [j for j, _ in pairs], [a for _, a in pairs]):
            plan.added_bias.append(names[consumer])


def _silence(entries: list[Entry], plan: PruningPlan, names: dict) -> None:
    """Fold the constant of each kept zero channel into its consumer and zero the consumer's weights that read it.

    A consumer without bias is left alone where a constant would have to be folded: that would add parameters.
    """
    entries = [(c, j, a) for c, j, a in entries if a == 0.0 or getattr(c, "bias", None) is not None]
    fold_into(entries, plan, names)
    for consumer, j, _ in entries:
        _fold.silence_inputs(consumer, [j])


def _apply(DG, model: nn.Module, decisions: list[Decision], silence: list[Entry], plan: PruningPlan, state: _State) -> None:
    """Fold the constants, silence the kept zero channels, prune the groups and record the kept indices in ``plan``."""
    names = {m: n for n, m in model.named_modules()}
    for d in decisions:
        fold_into(d.folds, plan, names)
    _silence(silence, plan, names)
    ties = tied_parameters(model)
    touched = {}  # GroupNorms sliced now: the positions they keep, in their numbering before this call
    for d in decisions:
        pruner = DG.get_pruner_of_module(d.root)
        group = DG.get_pruning_group(d.root, pruner.prune_out_channels, d.remove)
        for item in group:
            m = item.dep.target.module
            if isinstance(m, nn.GroupNorm):
                drop = set(int(i) for i in item.idxs)
                touched[names[m]] = [i for i in touched.get(names[m], range(m.num_channels)) if i not in drop]
        _track(DG, group, names, state)
        group.prune(record_history=False)
        plan.history.append([d.root_name, list(d.remove)])
    retie(model, ties)  # both holders of a tied parameter were sliced alike; make them share it again
    modules = dict(model.named_modules())
    for (name, dim), n in state.sizes.items():
        if isinstance(modules[name], nn.LayerNorm):
            make_zero_channel_layernorm(modules[name], n)
        elif isinstance(modules[name], nn.GroupNorm) and name in touched:
            make_zero_channel_groupnorm(modules[name], n, touched[name])
    plan.layers, plan.parameters = _layer_entries(model, state), state.params


def _tolerance(reference) -> float:
    scale = max((float(t.abs().max()) for t in flat_tensors(reference) if t.numel()), default=1.0)
    return 1e-4 * max(1.0, scale)


def _try(model, inputs, reference, apply) -> tuple[float, str | None]:
    """Run ``apply()`` then the model; the output difference, or why it failed."""
    try:
        apply()
        with torch.no_grad():
            diff = max_abs_diff(reference, run(model, inputs))
    except Exception as exc:  # a shape Torch-Pruning got wrong: the group is kept, never a crash
        return math.inf, f"{type(exc).__name__}: {str(exc)[:200]}"
    if diff > _tolerance(reference):
        return diff, f"removing them changed the outputs by {diff:.3g}"
    return diff, None


def apply_checked(tp, DG, model, inputs, reference, decisions, silence, plan: PruningPlan) -> nn.Module:
    """Apply all decisions at once; if that fails or changes the outputs, redo them one by one on copies and keep the groups that fail."""
    backup = copy.deepcopy(model) if decisions else model
    state = _State()
    diff, why = _try(model, inputs, reference, lambda: _apply(DG, model, decisions, silence, plan, state))
    if why is None:
        plan.max_abs_diff = diff
        return model
    logger.info("prune_channels: pruning all groups at once failed (%s); pruning them one by one", why)
    names = {m: n for n, m in model.named_modules()}  # the decisions name modules of the failed attempt
    steps = [(d.root_name, list(d.remove), [(names[c], j, a) for c, j, a in d.folds]) for d in decisions]
    kept_silence = [(names[c], j, a) for c, j, a in silence]
    plan.history, plan.added_bias, state, current = [], [], _State(), backup
    plan.max_abs_diff = 0.0
    first = True
    for root_name, remove, folds in steps:
        candidate = copy.deepcopy(current)
        modules = dict(candidate.named_modules())
        DG, _ = build_graph(tp, candidate, inputs)
        d = Decision(modules[root_name], root_name, remove, folds=[(modules[c], j, a) for c, j, a in folds])
        quiet = [(modules[c], j, a) for c, j, a in kept_silence] if first else []
        trial = copy.deepcopy(state)
        before, biases = len(plan.history), len(plan.added_bias)
        diff, why = _try(candidate, inputs, reference, lambda: _apply(DG, candidate, [d], quiet, plan, trial))
        if why is None:
            current, state, first = candidate, trial, False
            plan.max_abs_diff = max(plan.max_abs_diff, diff)
        else:
            del plan.history[before:], plan.added_bias[biases:]
            plan.skipped.append({"layer": root_name, "zero_channels": len(remove),
                                 "reason": f"Torch-Pruning could not remove them exactly ({why}); they are kept"})  # fmt: skip
    plan.layers, plan.parameters = _layer_entries(current, state), state.params
    model.__dict__ = current.__dict__  # the caller's object holds the result (inplace=True keeps its promise)
    return model


@dataclass
class _State:
    """What every touched module keeps, in the numbering of the unpruned model, across successive prunings."""

    alive: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def _track(DG, group, names, state: _State) -> None:
    """Record, in the numbering of the unpruned model, which indices every touched module (and parameter) keeps."""
    dims = {id(p): d for p, d in DG.unwrapped_parameters}
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter) and id(module) in dims:
            name = DG._param_to_name[module]
            dim = dims[id(module)] % module.dim()
            entry = state.params.setdefault(name, {"dim": dim, "size": module.shape[dim], "kept": list(range(module.shape[dim]))})
            drop = set(int(i) for i in item.idxs)
            entry["kept"] = [orig for pos, orig in enumerate(entry["kept"]) if pos not in drop]
            continue
        if not isinstance(module, nn.Module) or slicer_for(module) is None:
            continue
        slicer = slicer_for(module)
        is_out = not isinstance(module, producer_types()) or DG.is_out_channel_pruning_fn(item.dep.handler)
        key = (names[module], "out" if is_out else "in")
        state.types.setdefault(names[module], type(module).__name__)
        if key not in state.alive:
            n = slicer.out_size(module) if is_out else slicer.in_size(module)
            state.sizes[key], state.alive[key] = n, list(range(n))
        drop = set(int(i) for i in item.idxs)
        state.alive[key] = [orig for pos, orig in enumerate(state.alive[key]) if pos not in drop]


def _layer_entries(model, state: _State) -> dict[str, dict]:
    alive, sizes, types = state.alive, state.sizes, state.types
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    entries: dict[str, dict] = {}
    for (name, dim), kept in sorted(alive.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] == "in")):
        e = entries.setdefault(name, {"type": types[name], "out_size": None, "kept_out": None, "in_size": None, "kept_in": None})
        e[f"{dim}_size"], e[f"kept_{dim}"] = sizes[(name, dim)], kept
    return entries
