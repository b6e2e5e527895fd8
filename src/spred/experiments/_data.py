"""Data helpers shared by the experiments: image tensors and seeded splits."""

from __future__ import annotations

import torch


def image_tensors(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: float32 images with a channel dimension (``(n, 1, h, w)`` for ``(n, h, w)`` input) and int64 labels."""
    X = torch.as_tensor(images, dtype=torch.float32)
    if X.dim() == 3:
        X = X.unsqueeze(1)
    return X, torch.as_tensor(labels, dtype=torch.int64)


def seeded_split(n: int, n_first: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(first, rest)``: the first ``n_first`` entries of a permutation of ``range(n)`` seeded with ``seed``, and the others.

    The permutation comes from its own generator, so the global random state is untouched
    and a seed always gives the same split (the training subset of ``spred run
    compression``, the validation split of ``spred run optimizers``).
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_first], order[n_first:]
