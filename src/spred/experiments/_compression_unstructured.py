"""``spred run compression``, unstructured part: the dense reference and the six methods at one ratio.

Each method (``RUNNERS``) trains a fresh model of one (model, seed), keeps its best
weights within the budget of nonzero parameters, removes dead units and fine-tunes
with the zeros frozen (:func:`_finish`): one CSV row per method and ratio. The
protocol is in :mod:`spred.experiments.compression`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

import spred
from spred.experiments import _baselines_prune as bp
from spred.experiments import _common

if TYPE_CHECKING:
    from spred.experiments.compression import CompressionConfig, Data

logger = logging.getLogger(__name__)


@dataclass
class _Context:
    """Everything the methods of one (model, seed) share."""

    cfg: CompressionConfig
    model_name: str
    seed: int
    data: Data
    total: int
    chain: bp.Chain | None
    progress: bool
    dense: nn.Module | None = None  # dense model after `epochs` epochs
    dense_seconds: float = 0.0
    spred_lam: dict = field(default_factory=dict)  # ratio -> final lam of spred
    build: Callable[[str, int], nn.Module] | None = None  # (name, seed) -> a fresh model (compression.build_model)

    def new_model(self) -> nn.Module:
        """A fresh ``model_name`` initialised from ``seed``."""
        if self.build is None:
            raise RuntimeError("this context has no model builder: pass build=... (e.g. spred.experiments.compression.build_model)")
        return self.build(self.model_name, self.seed)

    def lr(self, method: str) -> float:
        return float(self.cfg.lrs[method])

    def fit(self, model, epochs, **kwargs):
        from spred.train import fit

        kwargs.setdefault("optimizer", self.cfg.optimizer)
        return fit(model, (self.data.X_train, self.data.y_train), epochs=epochs, batch_size=self.cfg.batch_size,
                   seed=self.seed, device=self.cfg.device, progress=self.progress, **kwargs)  # fmt: skip

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.X_train) / self.cfg.batch_size)

    def test_error(self, model) -> float:
        from spred.train import evaluate

        return 1.0 - evaluate(model, (self.data.X_test, self.data.y_test), device=self.cfg.device)["acc"]


def _weight_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs() for n, m in bp.prunable_weights(model).items()}


def _n_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in bp.prunable_weights(model).values())


def _target_sparsity(model: nn.Module, budget: int, margin: float = 0.0) -> float:
    """The controllers' target: the fraction of zero weights if the whole budget (plus ``margin``) went to weights.

    The controllers of spred and STR tend to overshoot a little, and zeros made by
    overshooting do not come back; aiming ``margin`` above the budget and trimming
    the smallest weights afterwards (:func:`_trim`) lands on the budget instead.
    """
    n = _n_weights(model)
    return min(max(1.0 - budget * (1.0 + margin) / n, 1e-3), 1.0 - 1e-6)


def _finish(ctx: _Context, model: nn.Module, method: str, ratio: float, *, train_epochs: int, finetune_epochs: int,
            seconds: float, prune_steps: int, lam: float | None = None, lr: float | None = None) -> dict:  # fmt: skip
    """Remove dead units, fine-tune with the zeros frozen (cosine schedule from ``lr``), and measure: one CSV row."""
    cfg = ctx.cfg
    dead = bp.remove_dead_units(model, ctx.chain, ctx.data.example.to(cfg.device))
    before = ctx.test_error(model)
    if finetune_epochs:
        result = ctx.fit(model, finetune_epochs, lr=lr or cfg.finetune_lr, mask=bp.keep_masks(model), scheduler="cosine")
        seconds += result.wall_time_s
    from spred.compress import count_parameters

    nonzero = count_parameters(model, nonzero=True)
    row = {
        "model": ctx.model_name, "method": method, "seed": ctx.seed, "target_ratio": ratio,
        "compression_ratio": ctx.total / nonzero if nonzero else math.inf, "total": ctx.total, "nonzero": nonzero,
        "nonzero_weights": sum(int((m.weight != 0).sum()) for m in bp.prunable_weights(model).values()),
        "test_error": ctx.test_error(model), "test_error_before_finetune": before,
        "train_epochs": train_epochs, "finetune_epochs": finetune_epochs, "epochs": train_epochs + finetune_epochs,
        "prune_steps": prune_steps, "wall_s": seconds, "lam": math.nan if lam is None else lam,
        "dead_units": sum(dead.values()), "train_size": len(ctx.data.X_train),
    }  # fmt: skip
    logger.info("%s %s x%g seed %d: ratio %.1f, error %.2f%% (before fine-tuning %.2f%%), %.0f s",
                ctx.model_name, method, ratio, ctx.seed, row["compression_ratio"], 100 * row["test_error"], 100 * before, seconds)
    return row


def _trim(ctx: _Context, model: nn.Module, budget: int) -> int:
    """Keep the largest weights within the budget (a no-op when already within it); returns 1 if it pruned."""
    masks = bp.budget_masks(model, _weight_scores(model), budget, ctx.chain)
    pruned = any(bool((~k & (m.weight != 0)).any()) for k, m in zip(masks.values(), bp.prunable_weights(model).values()))
    bp.apply_masks(model, masks)
    return int(pruned)


def _run_dense(ctx: _Context) -> dict:
    cfg = ctx.cfg
    model = ctx.new_model()
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("magnitude"))
    ctx.dense, ctx.dense_seconds = copy.deepcopy(model), result.wall_time_s
    seconds = result.wall_time_s
    if cfg.finetune_epochs:
        seconds += ctx.fit(model, cfg.finetune_epochs, lr=cfg.finetune_lr, scheduler="cosine").wall_time_s
    from spred.compress import count_parameters

    nonzero = count_parameters(model, nonzero=True)
    err = ctx.test_error(model)
    return {
        "model": ctx.model_name, "method": "dense", "seed": ctx.seed, "target_ratio": 1.0, "compression_ratio": ctx.total / nonzero,
        "total": ctx.total, "nonzero": nonzero, "nonzero_weights": sum(int((m.weight != 0).sum()) for m in bp.prunable_weights(model).values()),
        "test_error": err, "test_error_before_finetune": err, "train_epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
        "epochs": cfg.epochs + cfg.finetune_epochs, "prune_steps": 0, "wall_s": seconds, "lam": math.nan, "dead_units": 0,
        "train_size": len(ctx.data.X_train),
    }  # fmt: skip


def _run_spred(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import TargetSparsity

    cfg = ctx.cfg
    model = spred.sparsify(ctx.new_model(), cfg.lam)
    target = TargetSparsity(_target_sparsity(model, budget, cfg.controller_margin), ramp_epochs=cfg.ramp * cfg.epochs)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("spred"), target_sparsity=target, threshold=cfg.threshold)
    lams = list(spred.get_lam(model).values())
    lam = float(np.mean(lams))
    ctx.spred_lam[ratio] = lam
    model = spred.collapse(model, threshold=cfg.threshold)
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "spred", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


def _run_magnitude(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    model = copy.deepcopy(ctx.dense)
    t = time.perf_counter()
    bp.magnitude_prune(model, budget, ctx.chain)
    seconds = ctx.dense_seconds + time.perf_counter() - t
    return _finish(ctx, model, "magnitude", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=seconds, prune_steps=1)  # fmt: skip


def _run_gmp(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import build_optimizer

    cfg = ctx.cfg
    model = ctx.new_model().to(cfg.device)
    steps = cfg.epochs * ctx.steps_per_epoch
    gmp = bp.GradualMagnitudePruning(model, budget, start=int(cfg.gmp_start * steps), end=max(int(cfg.ramp * steps), 1),
                                     every=cfg.gmp_every, chain=ctx.chain)  # fmt: skip
    optimizer, _ = build_optimizer(model, cfg.optimizer, lr=ctx.lr("gmp"))
    optimizer.register_step_post_hook(gmp)
    result = ctx.fit(model, cfg.epochs, optimizer=optimizer)
    gmp.remove()
    return _finish(ctx, model, "gmp", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=gmp.n_prunes)  # fmt: skip


def _run_synflow(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    model = ctx.new_model().to(cfg.device)
    t = time.perf_counter()
    masks = bp.synflow_masks(model, ctx.data.example.to(cfg.device), budget, ctx.chain, rounds=cfg.synflow_rounds)
    bp.apply_masks(model, masks)
    seconds = time.perf_counter() - t
    return _finish(ctx, model, "synflow", ratio, train_epochs=0, finetune_epochs=cfg.epochs + cfg.finetune_epochs,
                   seconds=seconds, prune_steps=cfg.synflow_rounds, lr=ctx.lr("synflow"))  # fmt: skip


def _run_str(ctx: _Context, ratio: float, budget: int) -> dict:
    from spred.train import OPTIMIZERS

    cfg = ctx.cfg
    model = ctx.new_model().to(cfg.device)
    thresholds = bp.str_sparsify(model, cfg.str_s_init)
    weights = {id(m.parametrizations.weight.original) for m in bp.prunable_weights(model).values()}
    s_ids = {id(p) for p in thresholds}
    params = list(model.parameters())
    groups = [
        {"params": list(thresholds), "weight_decay": cfg.str_lam, "str": True},
        {"params": [p for p in params if id(p) in weights], "weight_decay": cfg.str_lam, "str_weights": True},
        {"params": [p for p in params if id(p) not in weights and id(p) not in s_ids], "weight_decay": 0.0},
    ]
    kwargs = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
    optimizer = OPTIMIZERS[cfg.optimizer](groups, lr=ctx.lr("str"), **kwargs)
    controller = bp.STRController(model, _target_sparsity(model, budget, cfg.controller_margin), ramp_steps=int(cfg.ramp * cfg.epochs * ctx.steps_per_epoch))
    optimizer.register_step_post_hook(controller)
    result = ctx.fit(model, cfg.epochs, optimizer=optimizer)
    lam = optimizer.param_groups[0]["weight_decay"]
    bp.str_collapse(model)
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "str", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


def _run_l1(ctx: _Context, ratio: float, budget: int) -> dict:
    cfg = ctx.cfg
    lam = cfg.l1_lam if cfg.l1_lam is not None else ctx.spred_lam.get(ratio, cfg.lam)
    model = ctx.new_model().to(cfg.device)
    result = ctx.fit(model, cfg.epochs, lr=ctx.lr("l1"), loss_fn=bp.l1_loss(model, lam))
    steps = _trim(ctx, model, budget)
    return _finish(ctx, model, "l1", ratio, train_epochs=cfg.epochs, finetune_epochs=cfg.finetune_epochs,
                   seconds=result.wall_time_s, prune_steps=steps, lam=lam)  # fmt: skip


#: The methods, in the order they run (spred first: the L1 baseline uses its final lam).
RUNNERS = {"spred": _run_spred, "magnitude": _run_magnitude, "gmp": _run_gmp, "synflow": _run_synflow, "str": _run_str, "l1": _run_l1}


def run_unstructured(cfg: CompressionConfig, model_name: str, seed: int, data: Data, build: Callable[[str, int], nn.Module], *,
                     progress: bool = False) -> list[dict]:  # fmt: skip
    """The dense reference and every method of ``cfg`` at every ratio of ``model_name`` for one seed: CSV rows.

    ``build(name, seed)`` makes each fresh model; see
    :func:`spred.experiments.compression.run_unstructured`.
    """
    from spred.compress import count_parameters

    with _common.torch_seed(seed):
        probe = build(model_name, seed)
        chain = bp.find_chain(probe, data.example)
    ctx = _Context(cfg, model_name, seed, data, count_parameters(probe), chain, progress, build=build)
    rows = [_run_dense(ctx)] if cfg.dense else []
    order = [m for m in RUNNERS if m in cfg.methods]
    for ratio in cfg.ratios[model_name]:
        budget = bp.max_nonzero(ctx.total, ratio)
        for method in order:
            with _common.torch_seed(seed):
                rows.append(RUNNERS[method](ctx, ratio, budget))
    return rows

