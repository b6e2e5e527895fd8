"""The exactly-k alpha search of :class:`~spred.feature_selection.SpredSelector`.

A :class:`~spred.feature_selection._trainer.PathTrainer` (a network with spred gates
on its input layer) is trained at increasing penalty strength alpha, each point
warm-started from the last; :func:`search_k` walks alpha up until at most ``k``
features remain and bisects to exactly ``k``, :func:`walk_to` reaches a fixed alpha.
Which features count as selected at a point is decided by :func:`selected`, on the
zero rule and the KKT rule of :mod:`spred.nn._rules`.

The steps are described in docs/feature_selection.md ("How exactly k is found").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from spred.nn._rules import kkt_zero, relative_threshold, zero_mask

__all__ = ["PathPoint", "search_k", "selected", "walk_to"]

# Path constants (see _next_alpha and search_k).
_MIN_STEP, _MAX_STEP = 1.25, 3.0  # bounds on alpha_{i+1} / alpha_i while walking up the path
_ALPHA_STEP = 2.0  # ratio between path points when walking to a fixed alpha
_MAX_PATH_POINTS = 200  # guard against a count that never falls (e.g. threshold=0 with Adam)
_KKT_TOL = 0.1  # a feature counts as selected only if ||dL/dW[:, j]|| > (1 - _KKT_TOL) * alpha


@dataclass(frozen=True)
class PathPoint:
    """One point of the regularisation path of a :class:`SpredSelector`.

    Attributes
    ----------
    alpha : float
        Penalty strength (coupled weight decay on the input gates).
    n_selected : int
        Number of features selected at this point (:func:`selected`: group norm above
        ``threshold`` times the largest one, gradient not well inside the ball of radius alpha).
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


@dataclass
class Result:
    """What one selection (one path) produced."""

    support: np.ndarray
    importance: np.ndarray
    last_norm: np.ndarray
    alpha: float
    points: list[PathPoint]
    net: torch.nn.Module | None  # the sparsified network in the state the support was chosen from
    cols: np.ndarray | None = None  # the input columns that network still has (the others are zero)
    resume: dict | None = None  # snapshot with the largest alpha whose count >= k (for warm_start)
    n_epochs: int = 0
    alpha_max: float = math.nan


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


def selected(norms: np.ndarray, grad_norms: np.ndarray, alpha: float, threshold: float) -> np.ndarray:
    """Which features count as selected at ``alpha``: the decision of every path point.

    ``norms`` are the features' group norms ``||W[:, j]||``, ``grad_norms`` the norms
    ``||dL/dW[:, j]||`` of the data loss's gradient. A feature is dropped when

    * its group norm counts as zero under the zero rule
      (:func:`~spred.nn._rules.zero_mask`) at the relative threshold ``threshold``
      times the largest norm (:func:`~spred.nn._rules.relative_threshold`): Adam
      leaves dropped gates near, not at, zero; or
    * (``alpha > 0``) zero is optimal for it with a margin: the KKT rule
      (:func:`~spred.nn._rules.kkt_zero`) at strength ``(1 - _KKT_TOL) * alpha``,
      whatever its norm (an infinite threshold). At a group-lasso stationary point a
      selected feature has gradient norm exactly alpha, so one clearly inside the ball
      is on its way out; this settles long before the norm does.
    """
    n, g = torch.from_numpy(np.asarray(norms, dtype=np.float64)), torch.from_numpy(np.asarray(grad_norms, dtype=np.float64))
    zero = zero_mask(n, None, 0, relative_threshold(n, threshold))
    if alpha > 0:
        zero |= kkt_zero(n, g, (1.0 - _KKT_TOL) * alpha, math.inf)
    return (~zero).numpy()


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


# --------------------------------------------------------------------------- the searches


@dataclass
class _Walk:
    """Where the exactly-k search stands.

    ``base`` = (alpha, count, snapshot, epochs): the last state with more than ``k``
    features (or the initial network), the state every bisection trial starts from;
    ``below`` the alpha before base's; ``hi`` = (alpha, count) of the first point with
    fewer than ``k`` features (None while walking up); ``alphas`` / ``counts`` the walk
    so far; ``alpha`` the next alpha to try.
    """

    base: tuple
    below: float
    hi: tuple[float, int] | None
    alphas: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    alpha: float | None = None


def finish(path, support: np.ndarray, alpha: float, resume: dict | None) -> Result:
    """The :class:`Result` of ``path`` with ``support`` chosen at ``alpha``."""
    return Result(
        support.copy(), path.importance.copy(), path.last_norm.copy(), float(alpha * path.unit), list(path.points), path.net,
        path.cols.copy(), resume, path.n_epochs,
    )  # fmt: skip


def _exact(path, active: np.ndarray, alpha: float, k: int) -> Result:
    """Exactly ``k`` features at ``alpha``: done, and the state is kept for a warm start."""
    return finish(path, active, alpha, {"alpha": alpha, "count": k, "snap": path.snapshot()})


def _start(path, k: int, alpha_start: float, resume: dict | None) -> Result | _Walk:
    """The warm-up point (or the warm-start state): a result if it has ``k`` features already."""
    if resume is not None:
        path.restore(resume["snap"])
        if resume["count"] == k:  # the same k again: the state already has it
            return finish(path, path.selected_now(resume["alpha"]), resume["alpha"], resume)
        walk = _Walk((resume["alpha"], resume["count"], resume["snap"], path.epochs), resume["alpha"] / _MAX_STEP, None,
                     [resume["alpha"]], [resume["count"]])  # fmt: skip
        walk.alpha = _next_alpha(walk.alphas, walk.counts, k)
        return walk
    init = (0.0, path.X.shape[1], path.snapshot(), 2 * path.epochs)
    point, active = path.run(alpha_start, "warmup", 2 * path.epochs)
    if point.n_selected == k:
        return _exact(path, active, alpha_start, k)
    if point.n_selected < k:  # already too sparse at the start: bisect from the initial network
        return _Walk(init, 0.0, (alpha_start, point.n_selected), [alpha_start], [point.n_selected])
    walk = _Walk((alpha_start, point.n_selected, path.snapshot(), path.epochs), alpha_start / _MAX_STEP, None,
                 [alpha_start], [point.n_selected])  # fmt: skip
    walk.alpha = _next_alpha(walk.alphas, walk.counts, k)
    return walk


def _walk_up(path, k: int, walk: _Walk) -> Result | None:
    """Increase alpha by secant steps until a point has at most ``k`` features (``walk.hi`` set)."""
    while walk.hi is None and len(path.points) < _MAX_PATH_POINTS:
        path.prune()
        snap = path.snapshot()
        point, active = path.run(walk.alpha, "path")
        if point.n_selected == k:
            return _exact(path, active, walk.alpha, k)
        if point.n_selected < k:
            walk.base = (walk.base[0], walk.base[1], snap, path.epochs)  # the stage started from snap (pruned base)
            walk.hi = (walk.alpha, point.n_selected)
            return None
        walk.below = walk.base[0]
        walk.base = (walk.alpha, point.n_selected, path.snapshot(), path.epochs)
        walk.alphas.append(walk.alpha)
        walk.counts.append(point.n_selected)
        walk.alpha = _next_alpha(walk.alphas, walk.counts, k)
    return None


def _bisect(path, k: int, walk: _Walk, max_bisect: int) -> Result | tuple:
    """Bisect alpha between ``walk.below`` and ``walk.hi``, every trial from ``walk.base``.

    Returns the result when a trial has exactly ``k`` features, else the best state
    above ``k`` as ``(alpha, count, snapshot, epochs)``.
    """
    base, hi = walk.base, walk.hi
    lo, best = (walk.below, base[1]), base
    for _ in range(max_bisect):
        mid = _between(lo, hi, k)
        path.restore(base[2])
        point, active = path.run(mid, "bisect", base[3])
        if point.n_selected == k:
            return _exact(path, active, mid, k)
        if point.n_selected > k:
            lo, best = (mid, point.n_selected), (mid, point.n_selected, path.snapshot(), base[3])
        else:
            hi = (mid, point.n_selected)
    return best


def search_k(path, k: int, alpha_start: float, max_bisect: int, resume: dict | None = None) -> Result:
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

    ``resume`` (a warm start) is the state with the largest alpha whose count was at
    least ``k`` on an earlier path of the same data.
    """
    walk = _start(path, k, alpha_start, resume)
    if isinstance(walk, Result):
        return walk
    done = _walk_up(path, k, walk)
    if done is not None:
        return done
    if walk.hi is None:
        warnings.warn(
            f"SpredSelector: {len(path.points)} path points did not bring the number of selected features down to "
            f"n_features_to_select={k} (still {walk.base[1]} at alpha={walk.base[0] * path.unit:.3g}); taking the top {k} by "
            "importance. Increase threshold or lr.",
            UserWarning,
            stacklevel=5,  # user -> fit -> _selection -> _select -> search_k
        )
        best = walk.base
    else:
        best = _bisect(path, k, walk, max_bisect)
        if isinstance(best, Result):
            return best
    path.restore(best[2])
    support = _top_k(path.importance, path.last_norm, k)
    return finish(path, support, best[0], {"alpha": best[0], "count": best[1], "snap": best[2]} if best[0] > 0 else None)


def walk_to(path, alpha: float, alpha_start: float) -> Result:
    """Train at a fixed ``alpha``, reached by doubling from ``alpha_start`` (warm-started)."""
    a = min(alpha, alpha_start)
    point, active = path.run(a, "warmup", 2 * path.epochs)
    while a < alpha:
        a = min(alpha, a * _ALPHA_STEP)
        path.prune()
        point, active = path.run(a, "walk")
    return finish(path, active, alpha, None)
