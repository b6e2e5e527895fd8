"""A network with spred gates on its input layer, trained one path point at a time.

:class:`PathTrainer` is what the searches of :mod:`~spred.feature_selection._path`
move along the path: it trains a stage at a given alpha with :func:`spred.train.fit`
(the one training loop of spred), decides which features are selected
(:func:`~spred.feature_selection._path.selected`), records the
:class:`~spred.feature_selection._path.PathPoint`, keeps a working set of input
columns, and takes and restores snapshots (network and Adam state) for bisection and
warm starts.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import spred
from spred.feature_selection._networks import new_linear, swap_layer, weight_name
from spred.feature_selection._path import PathPoint, selected
from spred.nn._rules import group_norms, relative_threshold, zero_mask
from spred.train import evaluate, fit

__all__ = ["PathTrainer"]

logger = logging.getLogger(__name__)

_FLOOR = 0.01  # the learning rate decays to _FLOOR * lr within a stage
_PRUNE = 1e-3  # columns below _PRUNE * threshold times the largest norm leave the working set


def cosine_to_floor(epochs: int):
    """Scheduler for :func:`spred.train.fit`: cosine from lr to ``_FLOOR * lr`` over ``epochs``, constant within an epoch.

    The decay lets the gates of dropped features settle near zero (Adam's steps have
    the size of the learning rate).
    """

    def make(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        per_epoch = max(total_steps // epochs, 1)
        factor = lambda step: _FLOOR + (1 - _FLOOR) * 0.5 * (1.0 + math.cos(math.pi * (step // per_epoch) / epochs))  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return make


@dataclass
class PathTrainer:
    """A network with spred gates on its input layer, trained at increasing alpha.

    Every stage is one call of :func:`spred.train.fit` with the same Adam instance
    (its state carries over: warm start) and a cosine learning-rate decay within the
    stage (:func:`cosine_to_floor`), without fit's per-epoch history. Columns whose
    group norm falls below ``threshold * 1e-3`` of the largest are removed from the
    input layer between stages (a working set: a gate at the origin is a stationary
    point that gradient steps never leave, so this changes nothing but the cost).

    Keeps, for each feature, the largest alpha at which it was selected
    (``importance``) and its group norm there (``last_norm``).
    """

    net: nn.Module
    layer: str
    loss_fn: object
    X: torch.Tensor
    Y: torch.Tensor
    val: tuple | None
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    threshold: float
    seed: int
    device: torch.device
    subsample: int | None = None
    bar: object = None
    unit: float = 1.0  # alphas are reported times unit and losses times unit**2 (regression targets are standardised)
    points: list = field(default_factory=list)
    n_epochs: int = 0

    def __post_init__(self):
        p = self.X.shape[1]
        self.cols = np.arange(p)
        self.importance = np.zeros(p)
        self.last_norm = np.zeros(p)
        self.X, self.Y = self.X.to(self.device), self.Y.to(self.device)
        if self.val is not None:
            self.val = (self.val[0].to(self.device), self.val[1].to(self.device))
        self.net.to(self.device)
        spred.sparsify(self.net, {weight_name(self.layer): 0.0}, groups="in", include=(nn.Linear,))
        self._make_optimizer()

    # -- the working set of input columns

    def _input(self) -> nn.Module:
        return self.net.get_submodule(self.layer) if self.layer else self.net

    def _make_optimizer(self) -> None:
        groups = spred.param_groups(self.net)
        others = [q for g in groups if not g["spred"] for q in g["params"]]
        groups = [g for g in groups if g["spred"]]
        decay = [q for q in others if q.dim() > 1]
        plain = [q for q in others if q.dim() <= 1]
        groups += [{"params": ps, "weight_decay": wd, "spred": False} for ps, wd in ((decay, self.weight_decay), (plain, 0.0)) if ps]
        self.opt = torch.optim.Adam(groups, lr=self.lr)

    def _factor_slots(self) -> list[int]:
        """Positions of the input gates' factors in the optimizer's state."""
        ids = {id(f) for f in spred.factors(self._input(), "weight")}
        flat = [q for g in self.opt.param_groups for q in g["params"]]
        return [i for i, q in enumerate(flat) if id(q) in ids]

    def _set_columns(self, cols: np.ndarray) -> None:
        """Rebuild the input layer (and the optimizer) for ``cols``; the values are loaded afterwards."""
        old = self._input()
        lam = spred.get_lam(old)["weight"]
        fresh = new_linear(len(cols), old.out_features, old.bias is not None, device=self.device)
        self.net = swap_layer(self.net, self.layer, fresh)
        spred.sparsify(fresh, lam, groups="in")
        self.cols = np.asarray(cols)
        self._make_optimizer()

    def _columns(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` restricted to the working set."""
        return X[:, torch.as_tensor(self.cols, device=self.device)] if len(self.cols) < X.shape[1] else X

    def prune(self) -> None:
        """Drop the columns whose group norm counts as zero at ``threshold * 1e-3`` of the largest."""
        norms = torch.from_numpy(self.norms()[self.cols])
        keep = np.flatnonzero(~zero_mask(norms, None, 0, relative_threshold(norms, self.threshold * _PRUNE)).numpy())
        if len(keep) == len(self.cols) or len(keep) == 0:
            return
        snap = self.snapshot()
        pos = torch.as_tensor(keep, device=self.device)
        prefix = f"{self.layer}.parametrizations.weight.original" if self.layer else "parametrizations.weight.original"
        for key in list(snap["net"]):
            if key.startswith(prefix):
                snap["net"][key] = snap["net"][key].index_select(-1, pos)
        for slot in self._factor_slots():
            state = snap["opt"]["state"].get(slot, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].index_select(-1, pos)
        snap["cols"] = self.cols[keep]
        self.restore(snap)

    def snapshot(self) -> dict:
        return {"net": copy.deepcopy(self.net.state_dict()), "opt": copy.deepcopy(self.opt.state_dict()), "cols": self.cols.copy()}

    def restore(self, snap: dict) -> None:
        if len(snap["cols"]) != len(self.cols) or not np.array_equal(snap["cols"], self.cols):
            self._set_columns(snap["cols"])
        self.net.load_state_dict(snap["net"])
        self.opt.load_state_dict(snap["opt"])

    # -- training and bookkeeping

    def norms(self) -> np.ndarray:
        """Group norm of every input feature (0 for the pruned ones)."""
        out = np.zeros(self.X.shape[1])
        with torch.no_grad():
            out[self.cols] = group_norms(self._input().weight, "in").reshape(-1).double().cpu().numpy()
        return out

    def _train(self, X: torch.Tensor, alpha: float, epochs: int) -> None:
        """One stage: ``epochs`` passes of minibatch Adam at ``alpha``, lr cosine-decayed to ``lr/100``."""
        for g in self.opt.param_groups:
            g["lr"] = g["initial_lr"] = self.lr  # the schedule starts from lr in every stage
        try:
            fit(
                self.net, (X, self.Y), epochs=epochs, optimizer=self.opt, loss_fn=self.loss_fn, batch_size=self.batch_size,
                scheduler=cosine_to_floor(epochs), seed=self.seed + len(self.points), device=self.device, progress=False,
                history=False,
            )  # fmt: skip
        except FloatingPointError as exc:
            raise FloatingPointError(
                f"SpredSelector: the training loss is not finite in a path stage at alpha={alpha * self.unit:.3g}. "
                f"Lower lr (lr={self.lr:g}) or standardise the features (standardize=True)."
            ) from exc

    def run(self, alpha: float, stage: str, epochs: int | None = None) -> tuple[PathPoint, np.ndarray]:
        """Train one stage at ``alpha`` (warm-started from the current state) and record its point."""
        epochs = self.epochs if epochs is None else epochs
        spred.set_lam(self.net, alpha, self.opt)
        Xw = self._columns(self.X)
        self._train(Xw, alpha, epochs)
        self.n_epochs += epochs
        norms = self.norms()
        train_loss, grads = self._loss_and_grads(Xw)
        active = selected(norms, grads, alpha, self.threshold)
        better = active & (alpha * self.unit >= self.importance)
        self.importance[better] = alpha * self.unit
        self.last_norm[better] = norms[better]
        kkt = float(max((grads[~active] - alpha).max(), 0.0) / alpha) if alpha > 0 and not active.all() else 0.0
        val_loss = math.nan
        if self.val is not None:
            Xv = self.val[0][:, torch.as_tensor(self.cols, device=self.device)]
            val_loss = evaluate(self.net, (Xv, self.val[1]), self.loss_fn, batch_size=max(len(Xv), 1))["loss"]
        u2 = self.unit**2
        point = PathPoint(
            float(alpha * self.unit), int(active.sum()), tuple(int(i) for i in np.flatnonzero(active)), float(train_loss * u2),
            float(val_loss * u2), kkt, stage, epochs, self.subsample,
        )  # fmt: skip
        self.points.append(point)
        logger.debug("alpha %.4g: %d features selected, train loss %.4g (%s)", alpha, point.n_selected, train_loss, stage)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(alpha=f"{alpha * self.unit:.3g}", selected=point.n_selected, refresh=False)
        return point, active

    def selected_now(self, alpha: float) -> np.ndarray:
        """The features selected by the current state at ``alpha``, without training."""
        Xw = self.X[:, torch.as_tensor(self.cols, device=self.device)]
        return selected(self.norms(), self._loss_and_grads(Xw)[1], alpha, self.threshold)

    def _loss_and_grads(self, Xw: torch.Tensor) -> tuple[float, np.ndarray]:
        """Training loss, and the norm of its gradient with respect to every input column.

        The gradient for column j is ``dL/dZ.T @ X[:, j]`` (``Z`` the input layer's
        output), so pruned columns are checked too. At a group-lasso stationary point a
        selected feature has norm exactly alpha and a dropped one at most alpha.
        """
        captured = {}
        handle = self._input().register_forward_hook(lambda m, i, o: captured.setdefault("z", o))
        self.net.eval()
        try:
            with torch.enable_grad():
                loss = self.loss_fn(self.net(Xw), self.Y)
                (gz,) = torch.autograd.grad(loss, captured["z"])
        finally:
            handle.remove()
            self.net.train()
        with torch.no_grad():
            g = group_norms(gz.T @ self.X, "in").reshape(-1).double().cpu().numpy()
        return float(loss.detach()), g
