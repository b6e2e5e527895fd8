"""Channel gates under Adam: the group weight in the gates' weight decay (now) against a division by it (before).

ResNet-20 (option-B shortcuts) with ``groups="channels"`` is trained with Adam (coupled decay,
the L1 route of :func:`spred.param_groups`) on CIFAR-10 minibatches, twice per setting, from the
same start and on the same batches:

* ``decay``: the library's parametrisation, ``v = (cbar / c_j) * g * w`` with weight decay
  ``lam * cbar^2`` on the gates (at balance ``g ~ sqrt(||v|| / c)``);
* ``divide``: the one spred used before, ``v = g * w / c_j`` with weight decay ``lam`` on the
  gates (at balance ``g ~ sqrt(c ||v||)``), rebuilt here from the same model by rescaling each
  gate by ``cbar`` and overriding its ``scale`` and ``weight_decays``: the same function and the
  same penalty, only the gates' scale differs.

At each checkpoint it prints the channels whose whole group is zero after :func:`spred.collapse`
(the library's zero rule: a channel's group norm ``<= threshold``; threshold 0 counts exact zeros),
the training loss (mean of the last 20 minibatches), the penalty (:func:`spred.penalty`), their sum
(the objective both parametrisations minimise) and the RMS of the gates. Results are appended to a
JSON-lines file, so an interrupted run resumes where it stopped.

    SPRED_DATA=<data folder> python benchmarks/gate_scaling.py [--steps 100,300,1000] [--lrs 1e-3,1e-2]
        [--lam 1e-3] [--seeds 0] [--batch 64] [--data cifar10|random] [--optimizer adam|sgd] [--out gate_scaling.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import types

import torch
from torch import nn

import spred
import spred.models

THRESHOLDS = (0.0, 1e-4, 1e-3)


def _divide(gate):
    """Turn one gate into the old parametrisation (``s = prod(g) / c``, decay lam on the gates), keeping ``v``."""
    with torch.no_grad():
        gate.gates.mul_(gate.cbar() ** (1.0 / (gate.depth - 1)))
    gate.scale = types.MethodType(lambda self: self.gates.prod(dim=0) / self.weights, gate)
    gate.weight_decays = types.MethodType(lambda self, n, lam=None: (self.lam if lam is None else lam,) * n, gate)


def _data(name: str, n_train: int, seed: int):
    if name == "random":
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n_train, 3, 32, 32, generator=g)
        return x, torch.randint(0, 10, (n_train,), generator=g)
    from spred.datasets import load_dataset

    bunch = load_dataset("cifar10_train")
    idx = torch.randperm(len(bunch.target), generator=torch.Generator().manual_seed(seed))[:n_train]
    x = torch.from_numpy(bunch.images[idx.numpy()])
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std, torch.from_numpy(bunch.target[idx.numpy()])


def _zero_channels(model: nn.Module) -> dict[str, int]:
    """Channels whose whole group is zero after collapse, per threshold (collapse zeroes exactly these)."""
    groups = spred.channel_groups(model)
    return {f"{t:g}": int(sum(int(g.zero_channels(t).sum()) for g in groups)) for t in THRESHOLDS}


def run(param: str, lr: float, seed: int, args, x, y, done: set, out: str) -> None:
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    if all((param, lr, seed, s) in done for s in checkpoints):
        return
    torch.manual_seed(seed)
    model = spred.models.build("resnet20", shortcut="B")
    spred.sparsify(model, args.lam, groups="channels", example_inputs=x[:2])
    if param == "divide":
        for g in spred.channel_groups(model):
            _divide(g.spred)
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(spred.param_groups(model), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(spred.param_groups(model), lr=lr)
    total = sum(g.n for g in spred.channel_groups(model))
    order = torch.Generator().manual_seed(1000 + seed)
    losses: list[float] = []
    step = 0
    model.train()
    while step < checkpoints[-1]:
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y) - args.batch + 1, args.batch):
            b = perm[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step in checkpoints:
                with torch.no_grad():
                    row = {"param": param, "optimizer": args.optimizer, "lr": lr, "seed": seed, "step": step, "lam": args.lam, "channels": total,
                           "zero": _zero_channels(model), "loss": statistics.fmean(losses[-20:]), "penalty": float(spred.penalty(model)),
                           "gate_rms": float(torch.cat([g.spred.gates.detach().flatten() for g in spred.channel_groups(model)]).pow(2).mean().sqrt())}  # fmt: skip
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            if step >= checkpoints[-1]:
                break


def table(rows: list[dict]) -> str:
    """Median over seeds (min-max in brackets when several) of zero channels, loss, penalty and their sum, per setting and step."""
    key = lambda r: (r["lr"], r["step"], r["param"])  # noqa: E731
    cells: dict = {}
    for r in rows:
        cells.setdefault(key(r), []).append(r)
    lines = [f"{'lr':>6} {'steps':>6} {'param':>7} {'zero@0':>12} {'zero@1e-4':>12} {'zero@1e-3':>12} {'loss':>14} {'penalty':>9} {'objective':>9} {'gate rms':>9}"]

    def fmt(values, spec):
        med = statistics.median(values)
        return f"{med:{spec}}" + (f" [{min(values):{spec}}-{max(values):{spec}}]" if len(values) > 1 else "")

    for (lr, step, param), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "divide")):
        zeros = [fmt([r["zero"][f"{t:g}"] for r in rs], "d") + f"/{rs[0]['channels']}" for t in THRESHOLDS]
        lines.append(f"{lr:>6g} {step:>6d} {param:>7} {zeros[0]:>12} {zeros[1]:>12} {zeros[2]:>12} {fmt([r['loss'] for r in rs], '.3f'):>14} "
                     f"{fmt([r['penalty'] for r in rs], '.3g'):>9} {fmt([r['loss'] + r['penalty'] for r in rs], '.3g'):>9} "
                     f"{fmt([r['gate_rms'] for r in rs], '.3g'):>9}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="100,300,1000")
    p.add_argument("--lrs", default="1e-3,1e-2")
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sgd: momentum 0.9 (coupled decay as well)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--data", choices=("cifar10", "random"), default="cifar10")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="gate_scaling.jsonl")
    p.add_argument("--table", action="store_true", help="only print the table of the results in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in open(args.out)] if os.path.exists(args.out) else []
    keep = lambda r: r["lam"] == args.lam and r.get("optimizer", "adam") == args.optimizer  # noqa: E731
    rows = [r for r in rows if keep(r)]
    if not args.table:
        done = {(r["param"], r["lr"], r["seed"], r["step"]) for r in rows}
        seeds = [int(s) for s in args.seeds.split(",")]
        x, y = _data(args.data, args.n_train, 0)
        for seed in seeds:
            for lr in (float(v) for v in args.lrs.split(",")):
                for param in ("divide", "decay"):
                    run(param, lr, seed, args, x, y, done, args.out)
        rows = [r for r in map(json.loads, open(args.out)) if keep(r)]
    print(f"ResNet-20 (shortcut B), groups='channels', {'Adam' if args.optimizer == 'adam' else 'SGD (momentum 0.9)'}, lam={args.lam:g}, batch {args.batch}, {args.data}; "
          f"zero@t: channels whose group norm <= t (collapse's zero rule)")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
