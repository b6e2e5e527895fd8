"""Batches for the training loop: a fast path for in-memory tensors, DataLoaders as they are."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from spred.train._distributed import shard_indices


def _as_tensor(value, name: str, who: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"The '{name}' parameter of {who} must be a tuple (X, y) of tensors or a DataLoader. Got an element of type {type(value).__name__}.") from exc


class TensorBatches:
    """Mini-batches of in-memory tensors ``(X, y)``, moved to ``device`` once.

    With ``shuffle``, each epoch draws one ``torch.randperm`` from the generator it is
    given: no DataLoader, no collation, and the order is reproducible from the
    generator's state. A single full batch is not shuffled (the mean loss does not
    depend on the order).

    With ``world_size > 1`` (data-parallel training) every rank draws the same
    permutation and yields its contiguous slice of each global batch of
    ``batch_size`` samples (:func:`~spred.train._distributed.shard_indices`), so the
    global batches are those of one process. The slice may be empty when a (last)
    batch holds fewer samples than there are ranks.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, shuffle: bool, rank: int = 0, world_size: int = 1):
        self.X, self.y = X.to(device), y.to(device)
        self.batch_size, self.shuffle, self.device = batch_size, shuffle, device
        self.rank, self.world_size = rank, world_size
        self.n = len(self.X)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def epoch(self, generator: torch.Generator | None = None, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle and self.batch_size < self.n:
            order = torch.randperm(self.n, generator=generator).to(self.device)
            for start in range(0, self.n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if self.world_size > 1:
                    idx = idx[shard_indices(len(idx), self.rank, self.world_size)]
                yield self.X[idx], self.y[idx]
        else:
            for start in range(0, self.n, self.batch_size):
                stop = min(start + self.batch_size, self.n)
                if self.world_size > 1:
                    part = shard_indices(stop - start, self.rank, self.world_size)
                    start, stop = start + part.start, start + part.stop
                yield self.X[start:stop], self.y[start:stop]


class LoaderBatches:
    """A DataLoader used as it is; batches ``(x, y)`` are moved to ``device``.

    A sampler with ``set_epoch`` (``DistributedSampler``) is told the epoch.
    """

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, generator: torch.Generator | None = None, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        non_blocking = self.device.type == "cuda"
        for batch in self.loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(f"spred.train expects a DataLoader that yields (inputs, targets) pairs; got a batch of type {type(batch).__name__}" + (f" with {len(batch)} elements" if isinstance(batch, (tuple, list)) else "") + ".")
            x, y = batch
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)

    @property
    def generator(self) -> torch.Generator | None:
        """The loader's own shuffling generator, if it has one (its state is checkpointed)."""
        return getattr(self.loader, "generator", None)


def as_batches(data, *, name: str, who: str, batch_size: int, device: torch.device, shuffle: bool, rank: int = 0, world_size: int = 1):
    """``(X, y)`` tensors -> :class:`TensorBatches` (split by rank when ``world_size > 1``); a DataLoader -> :class:`LoaderBatches`."""
    if isinstance(data, DataLoader):
        return LoaderBatches(data, device)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = (_as_tensor(v, name, who) for v in data)
        if X.dim() == 0 or y.dim() == 0 or len(X) != len(y):
            raise ValueError(
                f"The '{name}' parameter of {who} must hold X and y with the same number of samples. "
                f"Got shapes {tuple(X.shape)} and {tuple(y.shape)}."
            )
        if len(X) == 0:
            raise ValueError(f"The '{name}' parameter of {who} holds no samples (X has shape {tuple(X.shape)}).")
        return TensorBatches(X, y, batch_size, device, shuffle, rank, world_size)
    raise TypeError(f"The '{name}' parameter of {who} must be a tuple (X, y) of tensors or a torch DataLoader. Got {type(data).__name__} instead.")
