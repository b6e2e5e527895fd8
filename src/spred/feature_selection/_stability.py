"""Stability selection for :class:`~spred.feature_selection.SpredSelector`.

The selection (one path) is repeated on ``B`` subsamples of the training data (a
fraction of it, without replacement, per class for classification); the support is
the ``k`` features selected most often, or, with a fixed alpha, those selected in at
least half of the subsamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from spred.feature_selection._path import Result, _top_k

__all__ = ["stability_selection"]


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


def stability_selection(
    select: Callable[[np.ndarray, int, int], Result],
    n_features: int,
    train_idx: np.ndarray,
    codes: np.ndarray | None,
    k: int | None,
    n_subsamples: int,
    fraction: float,
    rng: np.random.RandomState,
) -> tuple[Result, np.ndarray]:
    """Repeat ``select(rows, seed, b)`` (the ``b``-th subsample) on ``n_subsamples`` subsamples of ``train_idx``.

    ``codes`` are the class codes of all rows (None for regression). Returns the
    combined result (support, mean importance, every path point, total epochs; no
    network) and the selection frequencies. The importance of a feature is the mean
    over subsamples of the alpha at which it left, divided by the subsample's alpha_max.
    """
    freq, importance, points, epochs = np.zeros(n_features), np.zeros(n_features), [], 0
    sub_codes = None if codes is None else codes[train_idx]
    for b in range(n_subsamples):
        idx = train_idx[_subsample(sub_codes, len(train_idx), fraction, rng)]
        res = select(idx, int(rng.randint(np.iinfo(np.int32).max)), b)
        freq += res.support
        importance += res.importance / (res.alpha_max if res.alpha_max > 0 else 1.0)
        points += res.points
        epochs += res.n_epochs
    freq /= n_subsamples
    importance /= n_subsamples
    support = _top_k(freq, importance, k) if k is not None else freq >= 0.5
    return Result(support, importance, importance, math.nan, points, None, n_epochs=epochs), freq
