"""Data preparation of :class:`~spred.feature_selection.SpredSelector`.

Standardisation of the features and of a regression target, the validation split,
the target encodings and the three losses (squared, binary and multinomial
cross-entropy). NumPy and torch only.
"""

from __future__ import annotations

import numpy as np
from torch.nn import functional as F

__all__ = ["dense_targets", "make_loss", "scale_target", "standardize", "targets", "validation_split"]

_EPS = np.finfo(np.float64).eps


def standardize(X: np.ndarray, on: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X scaled as float32, mean, scale)``; a constant feature keeps scale 1, ``on=False`` gives zeros and ones."""
    p = X.shape[1]
    if on:
        mean = X.mean(axis=0).astype(np.float64)
        scale = X.std(axis=0).astype(np.float64)
        scale = np.where(scale > 10 * _EPS * np.maximum(np.abs(mean), 1.0), scale, 1.0)
    else:
        mean, scale = np.zeros(p), np.ones(p)
    return ((X - mean) / scale).astype(np.float32), mean, scale


def scale_target(y, train_idx: np.ndarray, early_stopping: bool) -> tuple[np.ndarray, float, float]:
    """``(y standardised on the training rows, mean, scale)`` for regression.

    Alpha / scale on the standardised target is the same problem as alpha on ``y``. A
    constant target is refused: no feature explains it, so any selection would be
    arbitrary.
    """
    y = np.asarray(y, dtype=np.float64)
    part = y[train_idx]
    mean, scale = float(part.mean()), float(part.std())
    if np.ptp(part) == 0 or scale <= 10 * _EPS * abs(mean):
        n = part.size
        raise ValueError(
            f"SpredSelector(task='regression') needs a target that varies: y is constant ({part[0]!r} on {n} "
            f"sample{'s' if n != 1 else ''}{' used for training' if early_stopping else ''}), so no feature can "
            "explain it and any selection would be arbitrary."
        )
    return (y - mean) / scale, mean, scale


def validation_split(y_codes: np.ndarray | None, n: int, fraction: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
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


def targets(kind: str, codes: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """What the loss of ``kind`` takes: float32 values (squared), float32 0/1 (binary) or int64 codes (multinomial)."""
    if kind == "squared":
        return y.astype(np.float32)
    if kind == "binary":
        return codes.astype(np.float32)
    return codes.astype(np.int64)


def dense_targets(Y: np.ndarray, n_out: int) -> np.ndarray:
    """The targets as a float64 matrix: one-hot for class codes (int64), one column otherwise."""
    return (np.eye(n_out)[Y] if Y.dtype == np.int64 else Y.reshape(len(Y), -1)).astype(np.float64)


def make_loss(kind: str):
    """The mean loss of ``kind``: ``mean((out - y)**2) / 2``, binary or multinomial cross-entropy."""
    if kind == "squared":
        return lambda out, y: 0.5 * (out.reshape(-1) - y).pow(2).mean()
    if kind == "binary":
        return lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(-1), y)
    return F.cross_entropy
