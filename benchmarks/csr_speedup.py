"""CPU speed-up of CSR (spred.compress.to_sparse) over dense Linear / Conv2d layers, by sparsity.

For each layer shape, sparsity level and seed (the seed draws the random zero mask
and the input), the dense layer and its CSR version (SparseLinear / SparseConv2d)
are timed in turns (spred.compress.compare_latency: one forward pass each, so that
changes in machine load hit both alike) at batch 1 and 256. The speed-up is the ratio
dense / CSR of back-to-back runs, medianed; the table gives its median over seeds and the min-max range.

    python benchmarks/csr_speedup.py [--quick] [--threads 1] [--seeds 0 1 2] [--out DIR]

Writes DIR/csr_speedup.csv (one row per layer, sparsity, batch, seed) and prints a
markdown table plus the crossover (lowest measured sparsity with speed-up >= 1).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from spred.compress import SparseConv2d, SparseLinear, compare_latency

LAYERS = {
    # name: (factory, input shape of one sample)
    "Linear 1024x1024": (lambda: nn.Linear(1024, 1024), (1024,)),
    "Linear 4096x1024": (lambda: nn.Linear(1024, 4096), (1024,)),
    "Conv2d 64->64 3x3 @8x8": (lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 8, 8)),
    "Conv2d 256->256 1x1 @8x8": (lambda: nn.Conv2d(256, 256, 1), (256, 8, 8)),
}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
QUICK_SPARSITIES = (0.5, 0.9, 0.99)


def make_pair(factory, sparsity: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        dense = factory().eval()
    with torch.no_grad():
        dense.weight[torch.rand(dense.weight.shape, generator=g) < sparsity] = 0.0
    sparse = (SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d).from_dense(dense).eval()
    return dense, sparse, g


def run(args) -> list[dict]:
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    rows = []
    jobs = [(layer, s, seed) for layer in LAYERS for s in sparsities for seed in args.seeds]
    for layer, s, seed in tqdm(jobs, desc="csr_speedup"):
        factory, shape = LAYERS[layer]
        dense, sparse, g = make_pair(factory, s, seed)
        x = torch.randn(min(256, max(args.batches)), *shape, generator=g)
        with torch.no_grad():
            err = float((dense(x[:8]) - sparse(x[:8])).abs().max())
        for batch in args.batches:
            reps = args.repeats if batch >= 64 else args.repeats_small
            medians, times = compare_latency({"dense": dense, "csr": sparse}, x, batch_sizes=(batch,), repeats=reps, warmup=2,
                                             num_threads=args.threads, return_times=True)
            med = {k: v[batch] for k, v in medians.items()}
            paired = statistics.median(ta / tb for ta, tb in zip(times["dense"][batch], times["csr"][batch]))
            rows.append({"layer": layer, "sparsity": s, "batch": batch, "seed": seed, "dense_ms": 1e3 * med["dense"],
                         "csr_ms": 1e3 * med["csr"], "speedup": paired,
                         "speedup_min": min(times["dense"][batch]) / min(times["csr"][batch]), "max_abs_diff": err})
    return rows


def summarise(rows: list[dict]) -> tuple[str, str]:
    keys = sorted({(r["layer"], r["batch"], r["sparsity"]) for r in rows}, key=lambda k: (list(LAYERS).index(k[0]), k[1], k[2]))
    lines = ["| layer | batch | sparsity | dense ms | CSR ms | speed-up (median) | min-max over seeds | from fastest runs |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    by_key = {}
    for key in keys:
        rs = [r for r in rows if (r["layer"], r["batch"], r["sparsity"]) == key]
        sp = [r["speedup"] for r in rs]
        by_key[key] = statistics.median(sp)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.0%} | {statistics.median(r['dense_ms'] for r in rs):.3f} | "
                     f"{statistics.median(r['csr_ms'] for r in rs):.3f} | {statistics.median(sp):.2f}x | {min(sp):.2f}-{max(sp):.2f} | "
                     f"{statistics.median(r['speedup_min'] for r in rs):.2f}x |")
    cross = ["| layer | batch | crossover (lowest sparsity with median speed-up >= 1) |", "|---|---:|---|"]
    for layer, batch in sorted({(k[0], k[1]) for k in keys}, key=lambda k: (list(LAYERS).index(k[0]), k[1])):
        levels = sorted(s for (lay, b, s) in by_key if (lay, b) == (layer, batch))
        won = [s for s in levels if by_key[(layer, batch, s)] >= 1.0]
        cross.append(f"| {layer} | {batch} | {f'{won[0]:.0%}' if won else f'none up to {levels[-1]:.0%}'} |")
    return "\n".join(lines), "\n".join(cross)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 sparsity levels, 1 seed, fewer repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats-small", type=int, default=60, help="timed runs per model for batches < 64 (cheap, noisier)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model for batches >= 64")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.repeats, args.repeats_small = args.seeds[:1], 3, 20
    torch.set_num_threads(args.threads)
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "csr_speedup.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table, cross = summarise(rows)
    print(f"torch {torch.__version__}, {args.threads} thread(s), seeds {args.seeds}, {args.repeats} timed runs per model at batch >= 64, {args.repeats_small} below (models in turns)\n")
    print(table)
    print()
    print(cross)
    print(f"\nmax |dense - CSR| over all runs: {max(r['max_abs_diff'] for r in rows):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
