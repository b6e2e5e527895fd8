"""SpredSelector: nonlinear feature selection with one spred gate per input feature.

The selector trains a network (linear, MLP, their ensemble, or the user's own)
whose input layer carries a spred group factor per input feature
(``spred.sparsify(..., groups="in")``). With coupled weight decay ``alpha`` on the
factors the network minimises::

    loss(f(x), y) + alpha * sum_j ||W[:, j]||_2  (+ weight_decay/2 * ||other weights||^2)

where ``W[:, j]`` are all the weights leaving input feature ``j`` and the loss is
the mean cross-entropy (classification) or ``mean((f(x) - y)**2) / 2``
(regression). For the linear network this is exactly the (multinomial) group lasso
with scikit-learn's scaling, so ``alpha`` means what it means in
``sklearn.linear_model.Lasso`` / ``LogisticRegression(l1, C=1/(n*alpha))``.

Exactly ``k`` features come from a warm-started path of increasing ``alpha``
(:func:`_search_k`); see the ``SpredSelector`` docstring and docs/feature_selection.md.
Every network is trained by :func:`spred.train.fit`, the one training loop of spred.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._tags import ClassifierTags, RegressorTags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from torch.nn import functional as F

import spred
from spred.feature_selection._networks import INPUT_LAYER, KINDS, build_network
from spred.train import evaluate as _evaluate
from spred.train import fit as _train
from spred._validation import Interval, StrOptions, check_params

__all__ = ["PathPoint", "SpredSelector"]

logger = logging.getLogger("spred")

# Path constants (see _next_alpha and _search_k).
_MIN_STEP, _MAX_STEP = 1.25, 3.0  # bounds on alpha_{i+1} / alpha_i while walking up the path
_ALPHA_STEP = 2.0  # ratio between path points when walking to a fixed alpha
_MAX_PATH_POINTS = 200  # guard against a count that never falls (e.g. threshold=0 with Adam)
_KKT_TOL = 0.1  # a feature counts as selected only if ||dL/dW[:, j]|| >= (1 - _KKT_TOL) * alpha


@dataclass(frozen=True)
class PathPoint:
    """One point of the regularisation path of a :class:`SpredSelector`.

    Attributes
    ----------
    alpha : float
        Penalty strength (coupled weight decay on the input gates).
    n_selected : int
        Number of features whose group norm exceeds ``threshold`` times the largest one.
    selected : tuple of int
        Their indices.
    train_loss : float
        Mean data loss (no penalty) on the training part at the end of the stage.
    val_loss : float
        The same on the validation part (NaN without ``early_stopping``).
    kkt : float
        Largest violation of group-lasso optimality by a dropped feature, relative to
        alpha: ``max_j max(||dL/dW[:, j]|| - alpha, 0) / alpha`` over dropped ``j``
        (0 when every dropped feature is optimal at zero).
    stage : {"warmup", "path", "bisect", "walk"}
        How the point was reached.
    n_epochs : int
        Epochs trained at this point.
    subsample : int or None
        Index of the stability-selection subsample (None for the full data).
    """

    alpha: float
    n_selected: int
    selected: tuple[int, ...]
    train_loss: float
    val_loss: float
    kkt: float
    stage: str
    n_epochs: int
    subsample: int | None = None


# --------------------------------------------------------------------------- pure helpers


def _alpha_max(X: np.ndarray, Y: np.ndarray) -> float:
    """Smallest alpha at which the *linear* group lasso has every feature at zero.

    With an unpenalised intercept the gradient at ``W = 0`` is ``X.T @ (Y - mean(Y)) / n``
    for the squared loss, the binary and the multinomial cross-entropy alike (``Y`` is
    the target column, the 0/1 column or the one-hot matrix); alpha_max is the largest
    row norm. For networks it is a reference scale, not a bound.
    """
    G = X.T @ (Y - Y.mean(axis=0)) / X.shape[0]
    return float(np.sqrt((G**2).sum(axis=1)).max()) if X.size else 0.0


def _active(norms: np.ndarray, threshold: float) -> np.ndarray:
    """Features whose group norm is above ``threshold`` times the largest group norm."""
    top = float(norms.max()) if norms.size else 0.0
    if top <= 0:
        return np.zeros(norms.shape, dtype=bool)
    return norms > threshold * top


def _next_alpha(alphas: list[float], counts: list[int], k: int) -> float:
    """Next alpha on the increasing path: a secant step in log(count) vs log(alpha) aimed at ``k``.

    The step ratio is clipped to ``[_MIN_STEP, _MAX_STEP]``; when the count did not
    fall at the last step the largest ratio is used.
    """
    a1, c1 = alphas[-1], counts[-1]
    if len(alphas) < 2 or alphas[-2] <= 0 or counts[-2] <= c1 or c1 <= 0:
        return a1 * _MAX_STEP
    slope = (math.log(c1) - math.log(counts[-2])) / (math.log(a1) - math.log(alphas[-2]))
    ratio = math.exp((math.log(max(k, 0.5)) - math.log(c1)) / slope)
    return a1 * min(max(ratio, _MIN_STEP), _MAX_STEP)


def _between(lo: tuple[float, int], hi: tuple[float, int], k: int) -> float:
    """Bisection point in log(alpha), interpolated on log(count) and kept in the middle 60%."""
    (a_lo, c_lo), (a_hi, c_hi) = lo, hi
    if a_lo <= 0:
        return a_hi / 10.0
    t = 0.5
    if c_lo > 0 and c_hi > 0 and c_lo != c_hi:
        t = (math.log(c_lo) - math.log(k)) / (math.log(c_lo) - math.log(c_hi))
    t = min(max(t, 0.2), 0.8)
    return math.exp(math.log(a_lo) + t * (math.log(a_hi) - math.log(a_lo)))


def _top_k(importance: np.ndarray, norms: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` features ranked first by importance, then by group norm, then by index."""
    order = np.lexsort((np.arange(importance.size)[::-1], norms, importance))[::-1]
    mask = np.zeros(importance.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def _subsample(y_codes: np.ndarray | None, n: int, fraction: float, rng: np.random.RandomState) -> np.ndarray:
    """Indices of a subsample without replacement, per class for classification (at least one per class)."""
    if y_codes is None:
        m = max(2, int(round(fraction * n)))
        return np.sort(rng.choice(n, size=min(m, n), replace=False))
    parts = []
    for c in np.unique(y_codes):
        idx = np.flatnonzero(y_codes == c)
        m = min(idx.size, max(1, int(round(fraction * idx.size))))
        parts.append(rng.choice(idx, size=m, replace=False))
    return np.sort(np.concatenate(parts))


def _validation_split(y_codes: np.ndarray | None, n: int, fraction: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices; per class for classification, keeping at least one training sample per class."""
    if y_codes is None:
        perm = rng.permutation(n)
        m = min(n - 1, max(1, int(round(fraction * n))))
        return np.sort(perm[m:]), np.sort(perm[:m])
    val = []
    for c in np.unique(y_codes):
        idx = rng.permutation(np.flatnonzero(y_codes == c))
        m = min(idx.size - 1, int(round(fraction * idx.size)))
        val.append(idx[:m])
    val = np.sort(np.concatenate(val)).astype(int)
    if val.size == 0:
        raise ValueError(
            f"early_stopping with validation_fraction={fraction} leaves no validation sample: every class has too few "
            "samples. Increase validation_fraction or set early_stopping=False."
        )
    return np.setdiff1d(np.arange(n), val), val


def _find_input_layer(net: nn.Module, n_features: int, name: str | None) -> str:
    """Fully qualified name of the ``nn.Linear`` that reads the input."""
    if name is not None:
        try:
            layer = net.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"The 'input_layer' parameter of SpredSelector names {name!r}, which is not a submodule of the model.") from exc
        if not isinstance(layer, nn.Linear) or layer.in_features != n_features:
            raise ValueError(
                f"The 'input_layer' {name!r} must be an nn.Linear with in_features={n_features} (the number of features). "
                f"Got {layer!r} instead."
            )
        return name
    found = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.in_features == n_features]
    if len(found) != 1:
        what = "no nn.Linear" if not found else f"{len(found)} nn.Linear layers ({found})"
        raise ValueError(
            f"SpredSelector needs the model's input layer: an nn.Linear with in_features={n_features}; the model has {what} "
            "with that many inputs. Pass input_layer='<name>' to say which one reads the input."
        )
    return found[0]


def _swap_layer(net: nn.Module, name: str, layer: nn.Module) -> nn.Module:
    """Put ``layer`` at ``name`` in ``net``; returns the (possibly new) root module."""
    if name == "":
        return layer
    net.set_submodule(name, layer)
    return net


def _new_linear(n_in: int, n_out: int, bias: bool, **kwargs) -> nn.Linear:
    """An ``nn.Linear`` whose values are overwritten right away, made without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        return nn.Linear(n_in, n_out, bias=bias, **kwargs)


def _weight_fqn(layer_name: str) -> str:
    return f"{layer_name}.weight" if layer_name else "weight"


def _run_stage(net: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor, loss_fn, epochs: int, batch_size: int, seed: int, lr: float) -> None:
    """Train one path stage: ``epochs`` passes of minibatch Adam, lr cosine-decayed from ``lr`` to ``lr/100``.

    The decay lets the gates of dropped features settle near zero (Adam's steps
    have the size of the learning rate). This is the selector's only local loop:
    it is :func:`spred.train.fit` with ``scheduler`` and an optimizer instance, minus
    fit's per-epoch history (a sparsity report per epoch costs ~3 ms, which doubled
    the time of a path of ~1500 tiny full-batch epochs). Swap it for ``fit`` once
    fit can skip that record.
    """
    n = len(X)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)))
        order = torch.randperm(n, generator=gen).to(X.device) if batch_size < n else None
        for start in range(0, n, batch_size):
            xb, yb = (X, Y) if order is None else (X[order[start : start + batch_size]], Y[order[start : start + batch_size]])
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(
                f"SpredSelector: the training loss is {float(loss.detach())} at epoch {epoch + 1} of a path stage. "
                f"Lower lr (lr={lr:g}) or standardise the features (standardize=True)."
            )


@contextlib.contextmanager
def _quiet(verbose: int):
    """Silence :func:`spred.train.fit`'s per-epoch INFO lines unless ``verbose > 1``."""
    log = logging.getLogger("spred")
    level = log.level
    if verbose <= 1:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _make_loss(kind: str):
    if kind == "squared":
        return lambda out, y: 0.5 * (out.reshape(-1) - y).pow(2).mean()
    if kind == "binary":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(-1), y)
    return F.cross_entropy


# --------------------------------------------------------------------------- the path


@dataclass
class _Result:
    """What one selection (one path) produced."""

    support: np.ndarray
    importance: np.ndarray
    last_norm: np.ndarray
    alpha: float
    points: list[PathPoint]
    net: nn.Module | None  # the sparsified network in the state the support was chosen from
    cols: np.ndarray | None = None  # the input columns that network still has (the others are zero)
    resume: dict | None = None  # snapshot with the largest alpha whose count >= k (for warm_start)
    n_epochs: int = 0
    alpha_max: float = math.nan


@dataclass
class _Path:
    """A network with spred gates on its input layer, trained at increasing alpha.

    Every stage is one call of :func:`spred.train.fit` with the same Adam instance
    (its state carries over: warm start) and a cosine learning-rate decay within the
    stage, so that the gates of dropped features settle near zero. Columns whose
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
        spred.sparsify(self.net, {_weight_fqn(self.layer): 0.0}, groups="in", include=(nn.Linear,))
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
        fresh = _new_linear(len(cols), old.out_features, old.bias is not None, device=self.device)
        self.net = _swap_layer(self.net, self.layer, fresh)
        spred.sparsify(fresh, lam, groups="in")
        self.cols = np.asarray(cols)
        self._make_optimizer()

    def prune(self) -> None:
        """Drop the columns whose group norm is below ``threshold * 1e-3`` of the largest."""
        norms = self.norms()[self.cols]
        top = float(norms.max()) if norms.size else 0.0
        keep = np.flatnonzero(norms > self.threshold * 1e-3 * top) if top > 0 else np.arange(len(self.cols))
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
            out[self.cols] = torch.linalg.vector_norm(self._input().weight, dim=0).double().cpu().numpy()
        return out

    def run(self, alpha: float, stage: str, epochs: int | None = None) -> tuple[PathPoint, np.ndarray]:
        epochs = self.epochs if epochs is None else epochs
        spred.set_lam(self.net, alpha, self.opt)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        Xw = self.X[:, torch.as_tensor(self.cols, device=self.device)] if len(self.cols) < self.X.shape[1] else self.X
        _run_stage(self.net, self.opt, Xw, self.Y, self.loss_fn, epochs, self.batch_size, self.seed + len(self.points), self.lr)
        self.n_epochs += epochs
        norms = self.norms()
        train_loss, grads = self._loss_and_grads(Xw)
        active = self._selected(alpha, norms, grads)
        better = active & (alpha * self.unit >= self.importance)
        self.importance[better] = alpha * self.unit
        self.last_norm[better] = norms[better]
        kkt = float(max((grads[~active] - alpha).max(), 0.0) / alpha) if alpha > 0 and not active.all() else 0.0
        val_loss = math.nan
        if self.val is not None:
            Xv = self.val[0][:, torch.as_tensor(self.cols, device=self.device)]
            val_loss = _evaluate(self.net, (Xv, self.val[1]), self.loss_fn, batch_size=max(len(Xv), 1))["loss"]
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

    def _selected(self, alpha: float, norms: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Group norm above ``threshold`` times the largest, and gradient not well inside the ball of radius alpha
        (such a feature is on its way out: at a stationary point a selected feature has gradient norm alpha)."""
        active = _active(norms, self.threshold)
        if alpha > 0:
            active &= grads >= (1.0 - _KKT_TOL) * alpha
        return active

    def selected_now(self, alpha: float) -> np.ndarray:
        """The features selected by the current state at ``alpha``, without training."""
        Xw = self.X[:, torch.as_tensor(self.cols, device=self.device)]
        return self._selected(alpha, self.norms(), self._loss_and_grads(Xw)[1])

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
            g = torch.linalg.vector_norm(gz.T @ self.X, dim=0).double().cpu().numpy()
        return float(loss.detach()), g


def _search_k(path: _Path, k: int, alpha_start: float, max_bisect: int, resume: dict | None = None) -> _Result:
    """Walk alpha up until at most ``k`` features remain, then bisect to exactly ``k``.

    1. Warm-up at ``alpha_start`` (dense), then increase alpha by secant steps in
       log(count)-log(alpha) (ratio 1.25-3), each stage warm-started from the last
       one, dead columns pruned between stages.
    2. When a stage started from state S (the last one with more than ``k`` features,
       reached at alpha_S) ends with fewer than ``k``, bisect on alpha between the alpha
       before alpha_S and that stage's alpha, every trial starting again from S: the
       count after a fixed number of epochs from one state is (nearly) monotone in alpha.
    3. If no trial gives exactly ``k`` (ties, plateaus, or features leaving together),
       take, from the trial state just above ``k``, the ``k`` features that left last:
       largest alpha at which they were still selected, ties broken by their group norm there.
    """
    if resume is not None:
        path.restore(resume["snap"])
        if resume["count"] == k:  # the same k again: the state already has it
            return _finish(path, path.selected_now(resume["alpha"]), resume["alpha"], resume)
        base = (resume["alpha"], resume["count"], resume["snap"], path.epochs)
        below = resume["alpha"] / _MAX_STEP
        hist_a, hist_c = [resume["alpha"]], [resume["count"]]
        alpha = _next_alpha(hist_a, hist_c, k)
        hi = None
    else:
        init = (0.0, path.X.shape[1], path.snapshot(), 2 * path.epochs)
        point, active = path.run(alpha_start, "warmup", 2 * path.epochs)
        if point.n_selected == k:
            return _finish(path, active, alpha_start, {"alpha": alpha_start, "count": k, "snap": path.snapshot()})
        hist_a, hist_c = [alpha_start], [point.n_selected]
        if point.n_selected > k:
            base, below, hi = (alpha_start, point.n_selected, path.snapshot(), path.epochs), alpha_start / _MAX_STEP, None
            alpha = _next_alpha(hist_a, hist_c, k)
        else:  # already too sparse at the start: bisect from the initial network
            base, below, hi, alpha = init, 0.0, (alpha_start, point.n_selected), None
    while hi is None and len(path.points) < _MAX_PATH_POINTS:
        path.prune()
        snap = path.snapshot()
        point, active = path.run(alpha, "path")
        if point.n_selected == k:
            return _finish(path, active, alpha, {"alpha": alpha, "count": k, "snap": path.snapshot()})
        if point.n_selected < k:
            base = (base[0], base[1], snap, path.epochs)  # the stage started from snap (pruned base)
            hi = (alpha, point.n_selected)
            break
        below = base[0]
        base = (alpha, point.n_selected, path.snapshot(), path.epochs)
        hist_a.append(alpha)
        hist_c.append(point.n_selected)
        alpha = _next_alpha(hist_a, hist_c, k)
    if hi is None:
        warnings.warn(
            f"SpredSelector: {len(path.points)} path points did not bring the number of selected features down to "
            f"n_features_to_select={k} (still {base[1]} at alpha={base[0] * path.unit:.3g}); taking the top {k} by "
            "importance. Increase threshold or lr.",
            UserWarning,
            stacklevel=4,
        )
        best = base
    else:
        lo, best = (below, base[1]), base
        for _ in range(max_bisect):
            mid = _between(lo, hi, k)
            path.restore(base[2])
            point, active = path.run(mid, "bisect", base[3])
            if point.n_selected == k:
                return _finish(path, active, mid, {"alpha": mid, "count": k, "snap": path.snapshot()})
            if point.n_selected > k:
                lo, best = (mid, point.n_selected), (mid, point.n_selected, path.snapshot(), base[3])
            else:
                hi = (mid, point.n_selected)
    path.restore(best[2])
    support = _top_k(path.importance, path.last_norm, k)
    resume = {"alpha": best[0], "count": best[1], "snap": best[2]} if best[0] > 0 else None
    return _finish(path, support, best[0], resume)


def _walk_to(path: _Path, alpha: float, alpha_start: float) -> _Result:
    """Train at a fixed ``alpha``, reached by doubling from ``alpha_start`` (warm-started)."""
    a = min(alpha, alpha_start)
    point, active = path.run(a, "warmup", 2 * path.epochs)
    while a < alpha:
        a = min(alpha, a * _ALPHA_STEP)
        path.prune()
        point, active = path.run(a, "walk")
    return _finish(path, active, alpha, None)


def _finish(path: _Path, support: np.ndarray, alpha: float, resume: dict | None) -> _Result:
    return _Result(
        support.copy(), path.importance.copy(), path.last_norm.copy(), float(alpha * path.unit), list(path.points), path.net,
        path.cols.copy(), resume, path.n_epochs,
    )  # fmt: skip


# --------------------------------------------------------------------------- the estimator


class SpredSelector(SelectorMixin, BaseEstimator):
    """Select features with a (nonlinear) network whose input layer has one spred gate per feature.

    The network's input layer is sparsified with ``groups="in"``: one scalar per
    input feature multiplies all of that feature's outgoing weights. Training with
    coupled weight decay ``alpha`` on the gates minimises::

        loss(f(x), y) + alpha * sum_j ||W[:, j]||_2 + weight_decay/2 * ||other weights||^2

    (group lasso over the input columns; the loss is the mean cross-entropy for
    classification and ``mean((f(x) - y)**2) / 2`` for regression, so for
    ``model="linear"`` this is scikit-learn's Lasso / L1-logistic scaling). A dropped
    feature's column is written as exact zeros in the fitted network.

    With ``n_features_to_select=k`` the selector walks a warm-started path of
    increasing alpha until at most ``k`` features remain, bisects on alpha to get
    exactly ``k``, and otherwise (ties, plateaus) takes the ``k`` features that leave
    the model last. With ``alpha=`` it trains at that strength (reached by a short
    warm-started path) and keeps the features whose group norm is above
    ``threshold`` times the largest. With ``refit=True`` the network is then trained
    again on the selected features only (the others stay exactly zero), without the
    group penalty, for prediction.

    Parameters
    ----------
    model : {"linear", "mlp", "ensemble"}, nn.Module or callable, default="ensemble"
        ``"linear"``: a linear model (logistic / multinomial / least squares).
        ``"mlp"``: a ReLU network with ``hidden_layer_sizes``. ``"ensemble"``: the
        sum of both, sharing one input layer, so one gate per feature covers the
        linear and the nonlinear part (exact group lasso over all the feature's
        outgoing weights). An ``nn.Module`` is deep-copied at fit; a callable
        ``model(n_features, n_outputs) -> nn.Module`` is called at fit. Its input layer
        (see ``input_layer``) must be an ``nn.Linear`` reading all features and the only
        module that sees the input (the selector trains it on fewer columns as
        features drop out), and its
        output must have ``n_outputs`` columns: 1 for regression and binary
        classification (or 2 for binary with a softmax), the number of classes otherwise.
    n_features_to_select : int or float, default=None
        Number of features to select (an int >= 1) or fraction of them (a float in
        (0, 1)). None with ``alpha=None`` selects half of the features.
    alpha : float, default=None
        Fixed penalty strength instead of a number of features (exclusive with
        ``n_features_to_select``).
    task : {"classification", "regression"}, default="classification"
        Whether the selector is a classifier (``predict``, ``predict_proba``, accuracy
        as ``score``) or a regressor (R^2 as ``score``).
    hidden_layer_sizes : tuple of int, default=(32,)
        Hidden layers of the built-in ``"mlp"`` and ``"ensemble"`` networks.
    weight_decay : float, default=1e-3
        L2 penalty (coupled weight decay) on the weights that are not input gates
        (hidden and output layers). Needed for the MLP: without it the network can
        shrink its input layer for free by growing the next one.
    input_layer : str, default=None
        Name of the layer that reads the input in a user ``model``; by default the
        only ``nn.Linear`` with ``in_features == n_features``.
    standardize : bool, default=True
        Centre and scale every feature to unit variance (on the training data) before
        the network sees it; alpha then does not depend on the units.
    alpha_min_ratio : float, default=1e-3
        The path starts (dense) at ``alpha_min_ratio * alpha_max_``.
    max_iter : int, default=200
        Epochs per point of the path (the first point gets twice as many).
    max_bisect : int, default=5
        Bisection steps on alpha to reach exactly ``k`` features.
    threshold : float, default=1e-3
        A feature counts as selected when its group norm exceeds ``threshold`` times
        the largest group norm (Adam leaves dropped gates near, not at, zero).
    refit : bool, default=True
        Retrain the network on the selected features without the group penalty
        (``weight_decay`` on all weights) for prediction.
    refit_iter : int, default=200
        Epochs of the refit.
    lr : float, default=1e-2
        Adam's learning rate (cosine-decayed to 1% within each path point).
    batch_size : int, default=None
        Minibatch size; None means ``min(n_samples, 256)``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (per class): its loss is
        recorded along the path and the refit stops when it has not improved for
        ``n_iter_no_change`` epochs (keeping the best weights). The held-out samples
        take no part in the selection.
    validation_fraction : float, default=0.1
        Fraction of each class held out when ``early_stopping=True``.
    n_iter_no_change : int, default=10
        Patience (epochs) of the refit's early stopping.
    stability_selection : int, default=0
        If > 0, the number of subsamples (of ``subsample_fraction`` of the samples,
        without replacement, per class) on which the selection is repeated; the
        support is then the ``k`` features selected most often (or, with ``alpha``,
        those selected in at least half of the subsamples) and the network is trained
        on them with ``refit``.
    subsample_fraction : float, default=0.5
        Size of each stability-selection subsample, as a fraction of the training data.
    device : str or torch.device, default="cpu"
        Where to train (e.g. ``"cuda"``). The fitted network is kept on the CPU.
    warm_start : bool, default=False
        With ``n_features_to_select``, continue the previous path from its state just
        above the new ``k`` when the new ``k`` is not larger (e.g. fit k=50, then
        ``set_params(n_features_to_select=10)`` and fit again on the same data).
    random_state : int, RandomState instance or None, default=None
        Seeds the network's initialisation, the minibatch order, the validation split
        and the subsamples.
    verbose : int, default=0
        > 0: a progress bar over path points and INFO messages on the "spred" logger.

    Attributes
    ----------
    support_ : ndarray of bool, shape (n_features_in_,)
        The selected features.
    feature_importances_ : ndarray of shape (n_features_in_,)
        The largest alpha on the path at which each feature was still selected (the
        strength at which it leaves the model; 0 if never selected). The selected
        features share the last alpha of the path. With stability selection: the mean
        over subsamples of that strength divided by the subsample's alpha_max.
    selection_frequencies_ : ndarray of shape (n_features_in_,)
        Only with ``stability_selection``: fraction of subsamples selecting each feature.
    alpha_ : float
        The alpha at which the support was chosen (NaN with stability selection).
    alpha_max_ : float
        Smallest alpha at which the linear group lasso drops every feature (the scale
        the path starts from).
    path_ : list of PathPoint
        Every point trained, in order.
    model_ : nn.Module
        The fitted network (float64, CPU, no spred factors): the columns of the
        dropped features in its input layer are exactly zero.
    input_layer_ : str
        Name of the network's input layer.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        Standardisation (zeros and ones with ``standardize=False``).
    classes_ : ndarray
        Class labels (classification).
    n_iter_ : int
        Total training epochs.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from spred.feature_selection import SpredSelector
    >>> X, y = make_classification(n_samples=100, n_features=30, n_informative=3, random_state=0)
    >>> sel = SpredSelector("linear", n_features_to_select=3, max_iter=30, random_state=0).fit(X, y)
    >>> int(sel.get_support().sum())
    3
    """

    _parameter_constraints: dict = {
        "model": [StrOptions(set(KINDS)), callable],
        "n_features_to_select": [Interval(Integral, 1, None, closed="left"), Interval(Real, 0, 1, closed="neither"), None],
        "alpha": [Interval(Real, 0, None, closed="left"), None],
        "task": [StrOptions({"classification", "regression"})],
        "hidden_layer_sizes": ["array-like"],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "input_layer": [str, None],
        "standardize": ["boolean"],
        "alpha_min_ratio": [Interval(Real, 0, 1, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "max_bisect": [Interval(Integral, 0, None, closed="left")],
        "threshold": [Interval(Real, 0, 1, closed="left")],
        "refit": ["boolean"],
        "refit_iter": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "stability_selection": [Interval(Integral, 0, None, closed="left")],
        "subsample_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="ensemble",
        *,
        n_features_to_select=None,
        alpha=None,
        task="classification",
        hidden_layer_sizes=(32,),
        weight_decay=1e-3,
        input_layer=None,
        standardize=True,
        alpha_min_ratio=1e-3,
        max_iter=200,
        max_bisect=5,
        threshold=1e-3,
        refit=True,
        refit_iter=200,
        lr=1e-2,
        batch_size=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        stability_selection=0,
        subsample_fraction=0.5,
        device="cpu",
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.model = model
        self.n_features_to_select = n_features_to_select
        self.alpha = alpha
        self.task = task
        self.hidden_layer_sizes = hidden_layer_sizes
        self.weight_decay = weight_decay
        self.input_layer = input_layer
        self.standardize = standardize
        self.alpha_min_ratio = alpha_min_ratio
        self.max_iter = max_iter
        self.max_bisect = max_bisect
        self.threshold = threshold
        self.refit = refit
        self.refit_iter = refit_iter
        self.lr = lr
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.stability_selection = stability_selection
        self.subsample_fraction = subsample_fraction
        self.device = device
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn plumbing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        if self.task == "regression":
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
        else:
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
        tags.non_deterministic = False
        return tags

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    # ------------------------------------------------------------------ validation

    def _check_settings(self) -> tuple[tuple[int, ...], torch.device]:
        check_params(self)
        if self.alpha is not None and self.n_features_to_select is not None:
            raise ValueError(
                f"SpredSelector got both n_features_to_select={self.n_features_to_select!r} and alpha={self.alpha!r}; "
                "set only one (a number of features, or a fixed penalty strength)."
            )
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, (Integral, str)) or not all(isinstance(h, Integral) and not isinstance(h, bool) for h in hidden):
            raise TypeError(f"The 'hidden_layer_sizes' parameter of SpredSelector must be a tuple of ints. Got {hidden!r} instead.")
        hidden = tuple(int(h) for h in hidden)
        if self.model in ("mlp", "ensemble") and (not hidden or min(hidden) < 1):
            raise ValueError(
                f"The 'hidden_layer_sizes' parameter of SpredSelector must be a non-empty tuple of positive ints for "
                f"model={self.model!r}. Got {self.hidden_layer_sizes!r} instead."
            )
        if self.stability_selection and not self.refit:
            raise ValueError(
                f"stability_selection={self.stability_selection} needs refit=True: the selected features come from "
                "subsamples, so the prediction model must be trained on them afterwards."
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"The 'device' parameter of SpredSelector must name a torch device ('cpu', 'cuda', 'cuda:1', ...). Got {self.device!r} instead.") from exc
        return hidden, device

    def _resolve_k(self, n_features: int) -> int | None:
        """The number of features to select (None for a fixed alpha)."""
        k = None
        if self.alpha is None:
            if self.n_features_to_select is None:
                k = max(1, n_features // 2)
            elif isinstance(self.n_features_to_select, Integral):
                k = int(self.n_features_to_select)
                if k > n_features:
                    raise ValueError(
                        f"The 'n_features_to_select' parameter of SpredSelector is {k}, more than the {n_features} features of X."
                    )
            else:
                k = max(1, int(round(self.n_features_to_select * n_features)))
        return k

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        """Select features on ``(X, y)`` and fit the prediction network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (``task="classification"``) or real targets.

        Returns
        -------
        self : SpredSelector
        """
        hidden, device = self._check_settings()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=self.task == "regression")
        n, p = X.shape
        k = self._resolve_k(p)
        if self.task == "classification":
            check_classification_targets(y)
            enc = LabelEncoder().fit(y)
            self.classes_ = enc.classes_
            codes = enc.transform(y)
            if self.classes_.size < 2:
                raise ValueError(f"SpredSelector needs at least 2 classes in y; got 1 class ({self.classes_.tolist()}).")
        else:
            codes = None
            y = np.asarray(y, dtype=np.float64)
        rng = check_random_state(self.random_state)
        if self.standardize:
            self.mean_ = X.mean(axis=0).astype(np.float64)
            scale = X.std(axis=0).astype(np.float64)
            self.scale_ = np.where(scale > 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mean_), 1.0), scale, 1.0)
        else:
            self.mean_, self.scale_ = np.zeros(p), np.ones(p)
        Xs = ((X - self.mean_) / self.scale_).astype(np.float32)
        if self.early_stopping:
            train_idx, val_idx = _validation_split(codes, n, self.validation_fraction, rng)
        else:
            train_idx, val_idx = np.arange(n), None

        seed = int(rng.randint(np.iinfo(np.int32).max))
        self.input_layer_, n_out, loss_kind = self._probe_network(p, hidden, codes, seed)
        unit = 1.0
        if codes is None:  # standardise the target: alpha / y_scale_ on it is the same problem as alpha on y
            self.y_mean_ = float(y[train_idx].mean())
            scale = float(y[train_idx].std())
            self.y_scale_ = unit = scale if scale > 0 else 1.0
            y = (y - self.y_mean_) / self.y_scale_
        Y = self._targets(loss_kind, codes, y)
        loss_fn = _make_loss(loss_kind)
        Y2 = Y[train_idx].astype(np.float64)
        Y2 = np.eye(n_out)[Y[train_idx]] if loss_kind == "multinomial" else Y2.reshape(len(train_idx), -1)
        self.alpha_max_ = unit * _alpha_max(Xs[train_idx].astype(np.float64), Y2)
        X_t, Y_t = torch.as_tensor(Xs), torch.as_tensor(Y)
        val = None if val_idx is None else (X_t[val_idx], Y_t[val_idx])
        settings = dict(hidden=hidden, n_out=n_out, loss_fn=loss_fn, device=device, unit=unit)

        if self.stability_selection:
            res = self._stability(X_t, Y_t, codes, train_idx, k, rng, settings)
        else:
            res = self._select(X_t[train_idx], Y_t[train_idx], val, k, seed, settings, None, warm=self._warm_state(p, k))
        self.support_ = res.support
        self.path_ = res.points
        self.n_iter_ = res.n_epochs
        if self.stability_selection:
            self.alpha_ = math.nan
        else:
            self.alpha_ = res.alpha
            self.feature_importances_ = res.importance
            self._warm = None if k is None else {
                "n_features": p, "resume": res.resume, "points": res.points, "importance": res.importance, "last_norm": res.last_norm,
            }  # fmt: skip

        net = self._final_network(res, p, hidden, n_out, seed)
        if self.refit:
            net = self._refit(net, X_t[train_idx], Y_t[train_idx], val, loss_fn, seed, device)
        self.model_ = net.double().cpu().eval()
        if self.support_.sum() == 0:
            warnings.warn(
                f"SpredSelector selected no feature (alpha={self.alpha_:.3g} >= the strength that drops all of them); "
                "lower alpha or ask for n_features_to_select.",
                UserWarning,
                stacklevel=2,
            )
        return self

    def _warm_state(self, p: int, k: int | None) -> dict | None:
        warm = getattr(self, "_warm", None)
        if not self.warm_start or warm is None or k is None or warm["n_features"] != p or warm["resume"] is None:
            return None
        if warm["resume"]["count"] < k:
            return None
        return warm

    def _build(self, p: int, hidden: tuple[int, ...], n_out: int, seed: int) -> nn.Module:
        if isinstance(self.model, str):
            return build_network(self.model, p, n_out, hidden, seed=seed)
        if isinstance(self.model, nn.Module):
            return copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self.model(p, n_out)
        if not isinstance(net, nn.Module):
            raise TypeError(f"The 'model' callable of SpredSelector must return a torch.nn.Module. Got {type(net).__name__} instead.")
        return net

    def _probe_network(self, p: int, hidden, codes, seed: int) -> tuple[str, int, str]:
        """Input layer name, number of outputs and loss kind ("squared", "binary", "multinomial")."""
        n_classes = 0 if codes is None else self.classes_.size
        n_out = 1 if n_classes <= 2 else n_classes
        if isinstance(self.model, str):
            kind = "squared" if codes is None else ("binary" if n_classes == 2 else "multinomial")
            return INPUT_LAYER, n_out, kind
        net = self._build(p, hidden, n_out, seed)
        layer = _find_input_layer(net, p, self.input_layer)
        with torch.no_grad():
            width = net(torch.zeros(2, p, dtype=next(net.parameters()).dtype)).reshape(2, -1).shape[1]
        if codes is None and width == 1:
            return layer, 1, "squared"
        if codes is not None and width == 1 and n_classes == 2:
            return layer, 1, "binary"
        if codes is not None and width == n_classes:
            return layer, width, "multinomial"
        wanted = "1" if codes is None else ("1 (sigmoid) or 2 (softmax)" if n_classes == 2 else str(n_classes))
        raise ValueError(f"The model of SpredSelector returns {width} outputs per sample; this task needs {wanted} (task={self.task!r}, {n_classes or 'no'} classes).")

    @staticmethod
    def _targets(kind: str, codes, y) -> np.ndarray:
        if kind == "squared":
            return y.astype(np.float32)
        if kind == "binary":
            return codes.astype(np.float32)
        return codes.astype(np.int64)

    def _select(self, X_t, Y_t, val, k, seed, settings, subsample, warm=None) -> _Result:
        """One selection (one path) on the given rows."""
        p = X_t.shape[1]
        net = self._build(p, settings["hidden"], settings["n_out"], seed)
        Yn = Y_t.numpy()
        if Yn.dtype == np.int64:
            Yn = np.eye(settings["n_out"])[Yn]
        alpha_max = _alpha_max(X_t.numpy().astype(np.float64), Yn.reshape(len(Yn), -1).astype(np.float64))
        alpha_start = self.alpha_min_ratio * (alpha_max if alpha_max > 0 else 1.0)
        batch = self.batch_size or min(len(X_t), 256)
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(desc="SpredSelector path" + ("" if subsample is None else f" (subsample {subsample})"), unit="point", leave=False)
        path = _Path(
            net, self.input_layer_, settings["loss_fn"], X_t, Y_t, val, float(self.lr), float(self.weight_decay), int(self.max_iter),
            int(batch), float(self.threshold), seed, settings["device"], subsample, bar, settings["unit"],
        )  # fmt: skip
        try:
            if k is None:
                res = _walk_to(path, float(self.alpha) / settings["unit"], alpha_start)
            elif k >= p:
                point, _ = path.run(alpha_start, "warmup", 2 * path.epochs)
                res = _finish(path, np.ones(p, dtype=bool), alpha_start, None)
            elif warm is not None:
                path.points = list(warm["points"])
                path.importance, path.last_norm = warm["importance"].copy(), warm["last_norm"].copy()
                res = _search_k(path, k, alpha_start, int(self.max_bisect), resume=warm["resume"])
            else:
                res = _search_k(path, k, alpha_start, int(self.max_bisect))
        finally:
            if bar is not None:
                bar.close()
        res.alpha_max = alpha_max * settings["unit"]
        if self.verbose:
            logger.info("SpredSelector: %d features at alpha=%.4g after %d path points", int(res.support.sum()), res.alpha, len(res.points))
        return res

    def _stability(self, X_t, Y_t, codes, train_idx, k, rng, settings) -> _Result:
        p = X_t.shape[1]
        freq, importance, points, epochs = np.zeros(p), np.zeros(p), [], 0
        sub_codes = None if codes is None else codes[train_idx]
        for b in range(self.stability_selection):
            idx = train_idx[_subsample(sub_codes, len(train_idx), self.subsample_fraction, rng)]
            res = self._select(X_t[idx], Y_t[idx], None, k, int(rng.randint(np.iinfo(np.int32).max)), settings, b)
            freq += res.support
            importance += res.importance / (res.alpha_max if res.alpha_max > 0 else 1.0)
            points += res.points
            epochs += res.n_epochs
        freq /= self.stability_selection
        importance /= self.stability_selection
        support = _top_k(freq, importance, k) if k is not None else freq >= 0.5
        self.selection_frequencies_ = freq
        self.feature_importances_ = importance
        self._warm = None
        return _Result(support, importance, importance, math.nan, points, None, n_epochs=epochs)

    def _final_network(self, res: _Result, p: int, hidden, n_out: int, seed: int) -> nn.Module:
        """A plain network whose input columns outside the support are exactly zero."""
        if res.net is None:  # stability selection: a fresh network, trained by the refit
            net = self._build(p, hidden, n_out, seed)
        else:
            net = spred.collapse(res.net.cpu(), threshold=0.0)
        name = self.input_layer_
        layer = net.get_submodule(name) if name else net
        if layer.in_features != p:  # the path pruned columns: put them back, as zeros
            full = _new_linear(p, layer.out_features, layer.bias is not None, dtype=layer.weight.dtype)
            with torch.no_grad():
                full.weight.zero_()
                full.weight[:, torch.as_tensor(res.cols)] = layer.weight
                if layer.bias is not None:
                    full.bias.copy_(layer.bias)
            net, layer = _swap_layer(net, name, full), full
        with torch.no_grad():
            layer.weight[:, ~torch.as_tensor(self.support_)] = 0.0
        return net

    def _refit(self, net: nn.Module, X_t, Y_t, val, loss_fn, seed: int, device) -> nn.Module:
        """Train ``net`` on the selected columns only (a compact input layer), then write them back."""
        support = torch.as_tensor(self.support_)
        if int(support.sum()) == 0:
            return net
        name = self.input_layer_
        full = net.get_submodule(name) if name else net
        compact = _new_linear(int(support.sum()), full.out_features, full.bias is not None, dtype=full.weight.dtype)
        with torch.no_grad():
            compact.weight.copy_(full.weight[:, support])
            if full.bias is not None:
                compact.bias.copy_(full.bias)
        root = _swap_layer(net, name, compact)
        val_c = None if val is None else (val[0][:, support], val[1])
        with _quiet(self.verbose):
            _train(
                root, (X_t[:, support], Y_t), epochs=int(self.refit_iter), optimizer="adam", lr=float(self.lr),
                weight_decay=float(self.weight_decay), loss_fn=loss_fn, batch_size=self.batch_size or min(len(X_t), 256),
                val_data=val_c, early_stopping=int(self.n_iter_no_change) if val_c is not None else None, seed=seed,
                device=device, progress=False,
            )  # fmt: skip
        self.n_iter_ = getattr(self, "n_iter_", 0) + int(self.refit_iter)
        root.cpu()
        with torch.no_grad():
            full.weight.zero_()
            full.weight[:, support] = compact.weight.detach().cpu()
            if full.bias is not None:
                full.bias.copy_(compact.bias.detach().cpu())
        return _swap_layer(root, name, full) if name else full

    # ------------------------------------------------------------------ predict

    def _forward(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Xs = torch.as_tensor((X - self.mean_) / self.scale_, dtype=torch.float64)
        with torch.no_grad():
            out = self.model_(Xs)
        return out.reshape(len(X), -1).numpy()

    def _is_classifier(self) -> bool:
        return self.task == "classification"

    def predict(self, X):
        """Predicted class labels (classification) or values (regression) of the fitted network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        out = self._forward(X)
        if self.task == "regression":
            return out[:, 0] * self.y_scale_ + self.y_mean_
        idx = (out[:, 0] > 0).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
        return self.classes_[idx]

    @available_if(_is_classifier)
    def predict_proba(self, X):
        """Class probabilities of the fitted network (classification only).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        out = torch.as_tensor(self._forward(X))
        if out.shape[1] == 1:
            p1 = torch.sigmoid(out[:, 0])
            return torch.stack([1 - p1, p1], dim=1).numpy()
        return torch.softmax(out, dim=1).numpy()

    def score(self, X, y, sample_weight=None):
        """Accuracy (classification) or R^2 (regression) of :meth:`predict` on ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        float
        """
        if self.task == "regression":
            return float(r2_score(y, self.predict(X), sample_weight=sample_weight))
        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
