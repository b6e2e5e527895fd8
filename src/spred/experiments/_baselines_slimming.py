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
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

SCORES = ("bn_scale", "group_l2", "filter_l1")


@dataclass
class Group:
    """One prunable dependency group: its channels and the modules that produce them (with their index lists)."""

    n: int
    producers: list[tuple[str, list[int]]]  # (name of a conv / linear / norm layer, output indices of the group's channels)


def dependency_groups(model: nn.Module, example: torch.Tensor) -> list[Group]:
    """The prunable channel groups of ``model`` (not the model outputs), from Torch-Pruning's ``DependencyGraph``."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        outputs = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        names = {id(m): n for n, m in model.named_modules()}
        groups = []
        for g in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear], ignored_layers=outputs):
            producers, seen = [], set()
            for item in g.items:
                module = item.dep.target.module
                if not graph.is_out_channel_pruning_fn(item.dep.handler) or id(module) in seen:
                    continue
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)):
                    seen.add(id(module))
                    producers.append((names[id(module)], [int(i) for i in item.idxs]))
            if producers:
                groups.append(Group(len(producers[0][1]), producers))
    finally:
        model.train(was_training)
    return groups


def _rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    return t.detach()[idx].reshape(len(idx), -1)


def channel_scores(model: nn.Module, groups: Sequence[Group], kind: str) -> list[torch.Tensor]:
    """One score per channel of every group of ``model`` (higher: more important); ``kind`` in :data:`SCORES`."""
    modules, out = dict(model.named_modules()), []
    for group in groups:
        g = Group(group.n, [(modules[n], i) for n, i in group.producers])
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


def zero_channels(model: nn.Module, groups: Sequence[Group], drop: Sequence[Sequence[int]]) -> dict[int, torch.Tensor]:
    """Zero the producing slices of channels ``drop[k]`` (positions in group ``k``) of ``model`` in place.

    Returns ``{id(parameter): keep mask}`` (True: trainable) for every touched parameter.
    """
    modules, masks = dict(model.named_modules()), {}
    with torch.no_grad():
        for g, positions in zip(groups, drop):
            if not len(positions):
                continue
            for name, idx in g.producers:
                module = modules[name]
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


def live_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds per example of the conv / Linear layers counting only live channels (a fast estimate of
    :func:`pruned_flops` for the bisection): input channels not identically 0 on ``example``, output rows not all 0."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        x, w = inputs[0], module.weight.detach()
        live_in = int((x.detach().transpose(0, 1).reshape(x.shape[1], -1) != 0).any(1).sum())
        live_out = int((w.reshape(w.shape[0], -1) != 0).any(1).sum())
        per_pair = w[0, 0].numel() * (output[0, 0].numel() if output.dim() > 2 else 1)
        groups = getattr(module, "groups", 1)
        total += live_out * live_in * per_pair // groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example[:2])
    finally:
        for h in handles:
            h.remove()
    return total


def zero_to_flops(model: nn.Module, example: torch.Tensor, kind: str, target_flops: float, *,
                  tolerance: float = 0.01) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` whose lowest-scored channels are zeroed until its pruned FLOPs are ``<= target_flops``.

    Bisection over the number of zeroed channels (each probe zeroes a copy and counts its
    live multiply-adds, :func:`live_macs`; the caller measures the pruned model itself). Returns the zeroed copy
    and its masks by parameter name (True: trainable). The bisection stops within
    ``tolerance`` of all channels of the number it looks for (on the safe side: the FLOPs
    are at most the target). A model already under the target is returned as it is.
    """
    groups = dependency_groups(model, example)
    scores = channel_scores(model, groups, kind)
    total = sum(g.n - 1 for g in groups)

    def probe(k: int) -> tuple[nn.Module, dict[int, torch.Tensor]]:
        m = copy.deepcopy(model)
        return m, zero_channels(m, groups, _drop_lists(groups, scores, k))

    low, high, step = 0, total, max(1, int(tolerance * total))
    if live_macs(probe(0)[0], example) > target_flops:
        while high - low > step:
            mid = (low + high) // 2
            if live_macs(probe(mid)[0], example) <= target_flops:
                high = mid
            else:
                low = mid
        k = high
    else:
        k = 0
    zeroed, masks = probe(k)
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
