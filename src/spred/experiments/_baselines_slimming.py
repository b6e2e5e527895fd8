"""Channel baselines of the CIFAR-10 compression experiment, over Torch-Pruning's dependency groups.

Every structured method of ``spred run compression --dataset cifar10`` ends the same way:
it scores the channels of each prunable dependency group, the lowest-scored channels are
*zeroed* (every producing slice of the channel: conv / Linear rows with their bias and the
BatchNorm scale and shift, in every layer coupled with it through residual adds) until
the model's FLOPs reach the target, the zeros are frozen during fine-tuning, and
:func:`spred.compress.prune_channels` removes them physically. The methods differ only
in how they train before the cut and in the score:

* Network Slimming (Liu et al., 2017): L1 on the BatchNorm scales during training
  (:class:`BNScaleL1`, a subgradient added to the gradients), score ``|gamma|`` summed
  over the BatchNorms of the group, one global threshold;
* Torch-Pruning's group regulariser (Fang et al., 2023, ``GroupNormPruner.regularize``),
  score: the group's L2 norm over all its members, divided by the mean of its group;
* L1 filter norm (Li et al., 2017): the dense model, score: the L1 norm of the group's
  conv filters, divided by the mean of its group;
* spred: the collapsed model's group L2 norm (its zero groups score 0 and go first).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

SCORES = ("bn_scale", "group_l2", "filter_l1")


@dataclass
class Group:
    """One prunable dependency group: its channels and the modules that produce them (with their index lists)."""

    n: int
    producers: list[tuple[nn.Module, list[int]]]  # (conv / linear / norm layer, output indices of the group's channels)


def dependency_groups(model: nn.Module, example: torch.Tensor) -> list[Group]:
    """The prunable channel groups of ``model`` (not the model outputs), from Torch-Pruning's ``DependencyGraph``."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        outputs = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        groups = []
        for g in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear], ignored_layers=outputs):
            producers, seen = [], set()
            for item in g.items:
                module = item.dep.target.module
                if not graph.is_out_channel_pruning_fn(item.dep.handler) or id(module) in seen:
                    continue
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)):
                    seen.add(id(module))
                    producers.append((module, [int(i) for i in item.idxs]))
            if producers:
                groups.append(Group(len(producers[0][1]), producers))
    finally:
        model.train(was_training)
    return groups


def _rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t.detach()[idx].reshape(len(idx), -1)


def channel_scores(groups: Sequence[Group], kind: str) -> list[torch.Tensor]:
    """One score per channel of every group (higher: more important); ``kind`` in :data:`SCORES`."""
    out = []
    for g in groups:
        if kind == "bn_scale":
            rows = [_rows(m.weight, i).abs() for m, i in g.producers if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            s = torch.cat(rows, 1).sum(1) if rows else torch.ones(g.n)
        elif kind == "filter_l1":
            rows = [_rows(m.weight, i).abs().sum(1) for m, i in g.producers if isinstance(m, (nn.Conv2d, nn.Linear))]
            s = torch.stack(rows).sum(0)
            s = s / s.mean().clamp_min(1e-12)
        elif kind == "group_l2":
            rows = [_rows(p, i) for m, i in g.producers for p in (m.weight, m.bias) if p is not None]
            s = torch.cat(rows, 1).norm(dim=1)
        else:
            raise ValueError(f"Unknown channel score {kind!r}; expected one of {SCORES}.")
        out.append(s.float().cpu())
    return out


def zero_channels(groups: Sequence[Group], drop: Sequence[Sequence[int]]) -> dict[int, torch.Tensor]:
    """Zero the producing slices of channels ``drop[k]`` (positions in group ``k``) in place.

    Returns ``{id(parameter): keep mask}`` (True: trainable) for every touched parameter.
    """
    masks: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for g, positions in zip(groups, drop):
            if not len(positions):
                continue
            for module, idx in g.producers:
                rows = [idx[p] for p in positions]
                for p in (module.weight, module.bias):
                    if p is None:
                        continue
                    p[rows] = 0.0
                    mask = masks.setdefault(id(p), torch.ones_like(p, dtype=torch.bool))
                    mask[rows] = False
    return masks


def named_masks(model: nn.Module, masks: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``zero_channels``'s masks by parameter name of ``model`` (for ``fit(mask=...)``)."""
    return {n: masks[id(p)] for n, p in model.named_parameters() if id(p) in masks}


def _drop_lists(groups: Sequence[Group], scores: Sequence[torch.Tensor], k: int) -> list[list[int]]:
    """The ``k`` lowest-scored channels over all groups (at least one channel of every group is kept)."""
    entries = sorted((float(s[j]), gi, j) for gi, s in enumerate(scores) for j in range(len(s)))
    drop: list[list[int]] = [[] for _ in groups]
    for _, gi, j in entries:
        if k <= 0:
            break
        if len(drop[gi]) < groups[gi].n - 1:
            drop[gi].append(j)
            k -= 1
    return drop


def pruned_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of ``model`` after :func:`spred.compress.prune_channels` (one example)."""
    from spred.compress import count_flops, prune_channels

    pruned, _ = prune_channels(model.eval(), example)
    return count_flops(pruned, example[:1])


def zero_to_flops(model: nn.Module, example: torch.Tensor, kind: str, target_flops: float,
                  score_fn: Callable[[Sequence[Group]], list[torch.Tensor]] | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` whose lowest-scored channels are zeroed until its pruned FLOPs are ``<= target_flops``.

    Bisection over the number of zeroed channels (each probe prunes a copy with
    :func:`spred.compress.prune_channels` and counts its FLOPs). Returns the zeroed copy
    and its masks by parameter name (True: trainable). A model already under the target
    is returned as it is (its zero channels masked).
    """
    groups = dependency_groups(model, example)
    scores = score_fn(groups) if score_fn is not None else channel_scores(groups, kind)
    total = sum(g.n - 1 for g in groups)

    def probe(k: int) -> tuple[nn.Module, dict[int, torch.Tensor], list[Group]]:
        m = copy.deepcopy(model)
        gs = dependency_groups(m, example)
        return m, zero_channels(gs, _drop_lists(gs, scores, k)), gs

    low, high = 0, total
    if pruned_flops(probe(0)[0], example) > target_flops:
        while high - low > 1:
            mid = (low + high) // 2
            if pruned_flops(probe(mid)[0], example) <= target_flops:
                high = mid
            else:
                low = mid
        k = high
    else:
        k = 0
    zeroed, masks, _ = probe(k)
    logger.info("zeroed %d of %d channels (%s) to reach %.3g FLOPs", k, total, kind, target_flops)
    return zeroed, named_masks(zeroed, masks)


# --------------------------------------------------------------------------- sparse training hooks


class BNScaleL1:
    """Network Slimming's sparsity term: ``lam * sign(gamma)`` added to every BatchNorm scale's gradient.

    Registered as an optimizer step pre-hook (``optimizer.register_step_pre_hook``), so it
    acts on the gradients of the loss just before each step.
    """

    def __init__(self, model: nn.Module, lam: float):
        self.lam = lam
        self.scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]

    def __call__(self, optimizer, args=None, kwargs=None) -> None:
        with torch.no_grad():
            for w in self.scales:
                if w.grad is not None:
                    w.grad.add_(torch.sign(w), alpha=self.lam)


class GroupRegulariser:
    """Torch-Pruning's own sparse training: ``GroupNormPruner.regularize`` before every optimizer step."""

    def __init__(self, model: nn.Module, example: torch.Tensor, reg: float):
        import torch_pruning as tp

        outputs = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        was_training = model.training
        model.eval()
        self.pruner = tp.pruner.GroupNormPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                                reg=reg, ignored_layers=outputs)  # fmt: skip
        model.train(was_training)
        self.model = model

    def __call__(self, optimizer, args=None, kwargs=None) -> None:
        self.pruner.regularize(self.model)
