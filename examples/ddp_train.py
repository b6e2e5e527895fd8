"""Sparsified training on several processes with ``spred.train.fit`` and ``torchrun``.

One machine, two CPU processes (gloo)::

    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --epochs 16 --checkpoint-dir runs/ddp

One machine, all its GPUs (NCCL; each process takes ``cuda:$LOCAL_RANK``)::

    torchrun --standalone --nproc-per-node gpu examples/ddp_train.py --epochs 16 --checkpoint-dir runs/ddp

Resume an interrupted run, on as many processes as you like, by adding ``--resume``.
Without ``torchrun`` the script runs as one process, on the same global batches::

    python examples/ddp_train.py --epochs 16

The problem is synthetic (classification from 5 of ``--features`` inputs), the model
an MLP whose weights are sparsified by spred, and lam is adapted to reach
``--target-sparsity`` zeros at ``|v| <= --threshold``. Rank 0 prints a summary, and
checks that every rank ends with the same weights. See docs/scaling_out.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
import torch.distributed as dist

import spred
from spred.models import MLP
from spred.train import TargetSparsity, fit

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_data(n: int, p: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of ``p`` standard normal features; the class depends on features 0 to 4 only."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    logits = X[:, 0] - 0.8 * X[:, 1] + 0.6 * X[:, 2] * X[:, 3] + 0.5 * X[:, 4] ** 2 - 0.5
    return X.to(dtype), (logits > 0).long()


def make_model(p: int, hidden: int, lam: float, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """A sparsified MLP ``p -> hidden -> 2`` with weights drawn from ``seed`` (the same on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP(p, hidden=(hidden,), out_features=2).to(dtype)
    return spred.sparsify(net, lam=lam)


def kill_at(step: int, loss_fn):
    """``loss_fn``, except that this process kills itself (SIGKILL, as a preempted job) at its ``step``-th call."""
    calls = {"n": 0}

    def wrapped(out, target):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return loss_fn(out, target)

    return wrapped


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch, split across the processes")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adagrad", "adamw"])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=1e-4, help="starting lam")
    ap.add_argument("--target-sparsity", type=float, default=0.8, help="0 to keep lam fixed")
    ap.add_argument("--threshold", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--autocast", default=None, choices=["bfloat16"], help="bf16 forward pass")
    ap.add_argument("--compile", action="store_true", help="train torch.compile(model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--backend", default=None, choices=["gloo", "nccl"], help="default: nccl with CUDA, else gloo")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each process")
    ap.add_argument("--out", default=None, help="rank 0 saves the final weights and history here (torch.save)")
    ap.add_argument("--kill-at-step", type=int, default=None, help="simulate a crash: the last rank kills itself at this step")
    return ap


def setup(backend: str | None) -> torch.device:
    """Join the process group started by torchrun (if any); the device this process trains on."""
    if "WORLD_SIZE" not in os.environ:  # plain `python examples/ddp_train.py`: one process
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend)
    dist.barrier()  # every rank is connected
    if dist.get_rank() == 0:
        print(f"process group ready: {dist.get_world_size()} processes ({backend})", flush=True)
    return device


def max_rank_difference(model: torch.nn.Module) -> float:
    """Largest ``|weight - rank 0's weight|`` over all ranks and parameters (0.0 for one process)."""
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def train(args: argparse.Namespace, device: torch.device):
    """Build the data and the model from the seeds and run ``fit``; returns its TrainResult."""
    dtype = DTYPES[args.dtype]
    X, y = make_data(args.samples, args.features, args.seed, dtype)
    model = make_model(args.features, args.hidden, args.lam, args.seed, dtype)
    if args.compile:
        model = torch.compile(model)  # fit wraps it in DDP and uses the plain module for everything but the forward
    loss_fn = torch.nn.functional.cross_entropy
    if args.kill_at_step is not None and (not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1):
        loss_fn = kill_at(args.kill_at_step, loss_fn)
    target = TargetSparsity(args.target_sparsity, update_every=5) if args.target_sparsity > 0 else None
    return fit(
        model, (X, y), epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
        loss_fn=loss_fn, target_sparsity=target, threshold=args.threshold, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, seed=args.seed, device=device, autocast=args.autocast, progress=False,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = setup(args.backend)
    try:
        result = train(args, device)
        model = result.model._orig_mod if args.compile else result.model
        diff = max_rank_difference(model)
        if not dist.is_initialized() or dist.get_rank() == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            report = spred.sparsity_report(model, threshold=args.threshold)
            last = result.history[-1]
            print(f"| processes | epochs | train loss | lam | sparsity (|v| <= {args.threshold:g}) | max weight difference between ranks |")
            print("|---|---|---|---|---|---|")
            print(f"| {world} | {last['epoch']} | {last['train_loss']:.4f} | {last['lam']:.3g} | {report.sparsified_sparsity:.4f} | {diff:.1e} |")
            if args.out:
                state = {k: v.detach().cpu() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
                torch.save({"state": state, "history": result.history, "world_size": world, "rank_difference": diff}, args.out)
        if dist.is_initialized():
            dist.barrier()  # leave together: no rank tears down its connections while another still talks
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
