"""Normalisation of ``groups`` (penalty groups) into one representation.

"Groups" always means *penalty groups* in spred: a partition of the features
such that the penalty is ``alpha * sum_g weight_g * ||w_g||_2``. The accepted
forms are skglm's (``grp_converter``):

- an int ``s``: contiguous blocks of ``s`` features (``s`` must divide
  ``n_features``);
- a list of ints: contiguous blocks with these sizes (they must sum to
  ``n_features``);
- a list of lists of ints: the feature indices of each group (they must form a
  partition of ``range(n_features)``).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["check_group_weights", "check_groups"]


def check_groups(groups, n_features):
    """Convert ``groups`` into ``(grp_indices, grp_ptr)``.

    Parameters
    ----------
    groups : int, list of int or list of list of int
        The penalty groups, in one of the forms described in the module docstring.
    n_features : int
        Number of features.

    Returns
    -------
    grp_indices : ndarray of shape (n_features,), dtype int64
        Feature indices, group after group.
    grp_ptr : ndarray of shape (n_groups + 1,), dtype int64
        Group ``g`` is ``grp_indices[grp_ptr[g]:grp_ptr[g + 1]]``.

    Raises
    ------
    ValueError
        If the groups are empty, do not divide or cover the features, overlap, or
        name a feature index out of range.
    TypeError
        If ``groups`` is none of the accepted forms.
    """
    if isinstance(groups, Integral) and not isinstance(groups, bool):
        size = int(groups)
        if size < 1:
            raise ValueError(f"groups={size}: an integer group size must be >= 1.")
        if n_features % size != 0:
            raise ValueError(
                f"n_features ({n_features}) is not a multiple of the group size "
                f"groups={size}. Pass a list of group sizes or of index lists instead."
            )
        return np.arange(n_features, dtype=np.int64), size * np.arange(
            n_features // size + 1, dtype=np.int64
        )
    if isinstance(groups, np.ndarray):
        groups = groups.tolist()
    if not isinstance(groups, (list, tuple)) or len(groups) == 0:
        raise TypeError(
            "groups must be an int, a non-empty list of group sizes or a non-empty "
            f"list of lists of feature indices. Got {groups!r} instead."
        )
    if all(isinstance(g, Integral) and not isinstance(g, bool) for g in groups):
        sizes = np.asarray(groups, dtype=np.int64)
        if np.any(sizes < 1):
            raise ValueError(f"Group sizes must be >= 1. Got sizes {sizes.tolist()}.")
        if sizes.sum() != n_features:
            raise ValueError(
                f"The group sizes sum to {int(sizes.sum())} but n_features is "
                f"{n_features}. Group sizes must add up to the number of features."
            )
        return np.arange(n_features, dtype=np.int64), np.concatenate(
            [[0], np.cumsum(sizes)]
        ).astype(np.int64)
    if all(isinstance(g, (list, tuple, np.ndarray)) for g in groups):
        lists = [np.asarray(g).ravel() for g in groups]
        for g in lists:
            if g.size == 0:
                raise ValueError("Every group must contain at least one feature index.")
            if not np.issubdtype(g.dtype, np.integer):
                raise TypeError(
                    f"Feature indices in groups must be integers. Got dtype {g.dtype}."
                )
        grp_indices = np.concatenate(lists).astype(np.int64)
        if grp_indices.min() < 0 or grp_indices.max() >= n_features:
            raise ValueError(
                f"groups contains feature indices outside [0, {n_features - 1}] "
                f"(min {int(grp_indices.min())}, max {int(grp_indices.max())})."
            )
        counts = np.bincount(grp_indices, minlength=n_features)
        if np.any(counts != 1):
            missing = np.flatnonzero(counts == 0)[:5].tolist()
            repeated = np.flatnonzero(counts > 1)[:5].tolist()
            raise ValueError(
                "groups must be a partition of the features: every feature index "
                f"exactly once. Missing (first 5): {missing}; repeated (first 5): "
                f"{repeated}."
            )
        sizes = np.array([g.size for g in lists], dtype=np.int64)
        return grp_indices, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    raise TypeError(
        "groups must be an int, a list of group sizes or a list of lists of feature "
        f"indices. Got {groups!r} instead."
    )


def check_group_weights(group_weights, grp_ptr):
    """Validate per-group penalty weights.

    Parameters
    ----------
    group_weights : None, "sqrt_size" or array-like of shape (n_groups,)
        ``None`` gives weight 1 for every group; ``"sqrt_size"`` gives
        ``sqrt(|g|)`` (the statistics convention); an array gives the weights.
    grp_ptr : ndarray of shape (n_groups + 1,)
        Group pointers from :func:`check_groups`.

    Returns
    -------
    weights : ndarray of shape (n_groups,)
        Strictly positive weights.
    """
    sizes = np.diff(grp_ptr)
    if group_weights is None:
        return np.ones(sizes.size)
    if isinstance(group_weights, str):
        if group_weights == "sqrt_size":
            return np.sqrt(sizes.astype(np.float64))
        raise ValueError(
            f"group_weights must be None, 'sqrt_size' or an array. Got {group_weights!r}."
        )
    weights = np.asarray(group_weights, dtype=np.float64).ravel()
    if weights.shape != (sizes.size,):
        raise ValueError(
            f"group_weights has {weights.size} entries but there are {sizes.size} groups."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(
            "group_weights must be finite and strictly positive. Got min "
            f"{weights.min():.3g}."
        )
    return weights
