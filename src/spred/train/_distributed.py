"""Data-parallel training for :func:`spred.train.fit` (``torchrun`` + DistributedDataParallel).

``fit`` calls :func:`context` once. Without an initialised process group, or with a
world of one process, it returns None and ``fit`` is the single-process loop, bit for
bit. With ``world_size > 1`` the loop changes in a few places only, each a small
function here:

* the model is wrapped in ``DistributedDataParallel`` (or used as given if it already
  is), and every other part of ``fit`` sees the unwrapped module;
* in-memory tensors are split by rank *inside* each global batch
  (:func:`shard_indices`): the permutation and the batches are those of one process
  with the same ``batch_size``, and each rank computes its slice of every batch;
* the local loss is scaled by :func:`loss_scale` so that DDP's gradient *average* is
  the gradient of the mean loss over the global batch, also when a batch does not
  split evenly;
* loss, sample and accuracy counts are summed over the ranks (:meth:`Distributed.sum`);
  the stop decisions (non-finite loss, callbacks) are therefore the same on every rank;
* lam, after every update of the target-sparsity controller, is broadcast from rank 0;
* rank 0 writes the checkpoint (every rank's generator state gathered into it), then
  all ranks meet at a barrier; to resume, rank 0 reads the checkpoint and sends it to
  the other ranks, so only rank 0 needs to see the file, and any number of ranks can
  resume it.

Coupled weight decay (the spred penalty) is added by the optimizer *after* DDP has
averaged the data gradients, on weights that are identical on every rank, so the L1
problem is the single-process one.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

# Rank r seeds its global generator (dropout) with seed + r * GOLDEN (mod 2**64): distinct streams per rank,
# and rank 0 uses ``seed`` itself, as a single process does.
GOLDEN = 0x9E3779B97F4A7C15


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s global generator: ``seed`` on rank 0, a distinct stream elsewhere."""
    return (seed + rank * GOLDEN) % 2**64


def shard_indices(n: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch of ``n`` samples that rank ``rank`` computes.

    Contiguous, in rank order, sizes differing by at most one (``torch.tensor_split``'s
    rule): ``n = 10, world_size = 4`` gives 3, 3, 2, 2.
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def loss_scale(local: int, total: int, world_size: int) -> float:
    """Factor on a rank's *mean* local loss so that DDP's gradient average is the global mean's gradient.

    DDP averages gradients over ``world_size`` ranks; rank r's loss is a mean over
    its ``local`` samples. ``(1/W) sum_r (n_r W / N) * mean_r = (1/N) sum_i loss_i``.
    Exactly 1.0 when every rank holds ``total / world_size`` samples.
    """
    return local * world_size / total


def is_distributed_loader(loader) -> bool:
    """Whether a DataLoader splits its samples across ranks (a ``DistributedSampler``, directly or in its batch sampler)."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return isinstance(sampler, DistributedSampler) or isinstance(inner, DistributedSampler)


def check_loader(loader, name: str, world_size: int) -> None:
    """Warn when a DataLoader given to a data-parallel ``fit`` does not split its samples across ranks."""
    if not is_distributed_loader(loader):
        warnings.warn(
            f"The '{name}' DataLoader of fit has no DistributedSampler, so each of the {world_size} ranks iterates over "
            f"all of its samples: the work is repeated (or, with a shuffling sampler, every epoch sees the data "
            f"{world_size} times). Pass DataLoader(dataset, batch_size=..., sampler=DistributedSampler(dataset, seed=...)) "
            "or (X, y) tensors, which fit splits by rank itself.",
            UserWarning,
            stacklevel=3,
        )


def _compiled_inner(model: nn.Module) -> nn.Module | None:
    """The module inside a ``torch.compile(model)`` wrapper (``OptimizedModule``), or None."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else None


def is_wrapped_ddp(model: nn.Module) -> bool:
    """Whether ``model`` is ``DistributedDataParallel`` (possibly inside ``torch.compile``)."""
    from torch.nn.parallel import DistributedDataParallel

    compiled = _compiled_inner(model)
    return isinstance(compiled if compiled is not None else model, DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (the model itself otherwise).

    ``fit`` calls the wrapper for the forward pass and uses the plain module for the
    rest (optimizer, penalty, controller, checkpoint keys without a ``module.`` or
    ``_orig_mod.`` prefix).
    """
    from torch.nn.parallel import DistributedDataParallel

    while True:
        compiled = _compiled_inner(model)
        if compiled is not None:
            model = compiled
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def default_device(model: nn.Module) -> torch.device | None:
    """The device ``fit`` uses when none is given under NCCL: ``cuda:$LOCAL_RANK`` for a model still on the CPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    param = next(model.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return None
    if "nccl" not in str(torch.distributed.get_backend()) or not torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank() % torch.cuda.device_count()))
    return torch.device("cuda", local)


@dataclass(frozen=True)
class Distributed:
    """The process group ``fit`` runs in: this process's rank, the number of ranks, where collectives run."""

    rank: int
    world_size: int
    comm_device: torch.device  # CUDA for NCCL, CPU for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over all ranks (float64; one all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        return self.sum([float(bool(flag))])[0] > 0

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (bit for bit: float64)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def broadcast_object(self, obj):
        """Rank 0's picklable ``obj`` on every rank (``torch.distributed.broadcast_object_list``)."""
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.comm_device.type == "cuda":
            torch.distributed.barrier(device_ids=[self.comm_device.index])
        else:
            torch.distributed.barrier()


def context(device: torch.device) -> Distributed | None:
    """The process group ``fit`` runs in, or None for a single process (no group, or a world of one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    backend = str(dist.get_backend())
    if "nccl" in backend and device.type != "cuda":
        raise ValueError(
            f"fit runs under a NCCL process group but the 'device' is {device}: NCCL works on CUDA tensors only. "
            "Pass device=f'cuda:{local_rank}' (or leave device=None), or initialise the process group with backend='gloo' for CPU training."
        )
    comm = device if (device.type == "cuda" and "nccl" in backend) else torch.device("cpu")
    if comm.type == "cuda":
        comm = torch.device("cuda", comm.index if comm.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(comm)
    return Distributed(dist.get_rank(), dist.get_world_size(), comm)


def wrap(model: nn.Module, ctx: Distributed | None, device: torch.device) -> nn.Module:
    """The module whose forward ``fit`` calls: ``model`` wrapped in DDP when running distributed.

    An already wrapped model is used as it is (its own DDP settings, e.g.
    ``find_unused_parameters``, are kept), after checking that DDP knows every
    trainable parameter (it does not when it was built before :func:`spred.sparsify`).
    A ``torch.compile`` wrapper is wrapped in turn. DDP broadcasts rank 0's
    parameters and buffers when it wraps, so every rank starts from the same weights.
    """
    from torch.nn.parallel import DistributedDataParallel

    if is_wrapped_ddp(model):
        _check_ddp_parameters(model, unwrap(model))
        return model
    if ctx is None:
        return model
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def _check_ddp_parameters(model: nn.Module, inner: nn.Module) -> None:
    compiled = _compiled_inner(model)
    ddp = model if compiled is None else compiled
    known = {id(p) for p in getattr(ddp, "_module_parameters", inner.parameters())}
    missing = [n for n, p in inner.named_parameters() if p.requires_grad and id(p) not in known]
    if missing:
        raise ValueError(
            f"The DistributedDataParallel model given to fit does not synchronise {len(missing)} trainable parameter(s) "
            f"of its module (e.g. {missing[:3]}): it was wrapped before they existed, e.g. before spred.sparsify. "
            "Sparsify first and wrap afterwards, or pass the plain model and let fit wrap it."
        )
