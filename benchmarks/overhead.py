"""Training-step overhead of spred: time per step of a sparsified model / the same dense model.

One run measures both, interleaved, so machine noise hits them alike; the ratio of
medians is what to read. Models: an MLP 784-256-256-10 and a small CNN (two 3x3
conv layers with 32/64 channels on 28x28 inputs), batch 128, cross-entropy.

    python benchmarks/overhead.py [--threads 2] [--repeats 7] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import spred


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 10),
    )  # fmt: skip


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "sgd-fused": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
}


def _setup(factory, sparse, opt_name, groups=None, seed=0):
    torch.manual_seed(seed)
    model = factory()
    if sparse:
        spred.sparsify(model, 1e-4, groups=groups)
        params = spred.param_groups(model)
    else:
        params = [{"params": list(model.parameters()), "weight_decay": 1e-4}]  # same decay, dense
    return model, OPTIMIZERS[opt_name](params)


def _time_steps(model, opt, x, y, steps):
    loss_fn = nn.CrossEntropyLoss()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def measure(factory, shape, opt_name, groups, repeats, steps, batch=128):
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    runs = {kind: _setup(factory, kind == "spred", opt_name, groups) for kind in ("dense", "spred")}
    times = {kind: [] for kind in runs}
    for kind, (model, opt) in runs.items():
        _time_steps(model, opt, x, y, 5)  # warm-up
    for _ in range(repeats):
        for kind, (model, opt) in runs.items():
            times[kind].append(_time_steps(model, opt, x, y, steps))
    dense, sparse = statistics.median(times["dense"]), statistics.median(times["spred"])
    return dense, sparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 128, median of {args.repeats} x {args.steps} steps\n")
    print("| model | optimizer | groups | dense ms/step | spred ms/step | ratio |")
    print("|---|---|---|---:|---:|---:|")
    models = {"mlp": ("MLP 784-256-256-10", mlp, (784,)), "cnn": ("CNN 32-64 conv", cnn, (1, 28, 28))}
    for name, factory, shape in (models[m] for m in args.models):
        for opt_name in args.optimizers:
            for groups in (None, "out"):
                dense, sparse = measure(factory, shape, opt_name, groups, args.repeats, args.steps)
                print(f"| {name} | {opt_name} | {groups or 'elementwise'} | {1e3 * dense:.2f} | {1e3 * sparse:.2f} | {sparse / dense:.2f} |")


if __name__ == "__main__":
    main()
