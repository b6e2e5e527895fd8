"""Structured pruning on CPU: FLOP reduction vs measured latency speed-up (spred.compress.prune_channels).

A VGG-style CNN for 32x32 inputs (conv-BN-ReLU x5, widths 32-32-64-64-128, max-pools,
global average pool, Linear head) gets a fraction `level` of the output channels of
each of its five convolutions zeroed, at random (the seed draws the channels, the
weights and the input). A zeroed channel has its filter, BatchNorm scale and shift set
to 0, which is what a spred group covering the filter *and* its BatchNorm affine
parameters converges to; its constant output is then 0 and the channel is removable
across zero padding. The collapsed (dense, with zeros) model and the pruned one are
timed in turns (spred.compress.compare_latency) at batch 1 and 256 (eval, inference mode, fixed thread count).

    python benchmarks/structured_speedup.py [--quick] [--fuse-bn] [--channels-last] [--threads 1] [--seeds 0 1 2] [--out DIR]

With --fuse-bn, each BatchNorm is folded into the preceding convolution (torch.fx) in
both models before timing, as a deployment pipeline would. With --channels-last, both
models and the input are timed in NHWC layout (compare_latency(channels_last=True)).

Prints, per level: parameters and MACs before/after, the FLOP ratio (before/after),
the measured speed-up (median ratio of back-to-back runs) at batch 1 and 256, speed-up / FLOP
ratio, the speed-up from the fastest run of each model (robust to load spikes on a
shared machine), and the largest output difference between the two models.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from spred.compress import compare_latency, count_flops, count_parameters, prune_channels

WIDTHS = (32, 32, 64, 64, 128)
LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9)
QUICK_LEVELS = (0.0, 0.5, 0.9)


def vgg(widths=WIDTHS, n_classes=10) -> nn.Sequential:
    layers, c_in = [], 3
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
        c_in = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes))


def zeroed_model(level: float, seed: int) -> tuple[nn.Module, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = vgg()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.uniform_(-0.5, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 1.5, generator=g)
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(-0.5, 0.5, generator=g)
        for conv, bn in zip(convs, bns):
            n = conv.out_channels
            idx = torch.randperm(n, generator=g)[: int(round(level * n))]
            conv.weight[idx] = 0.0
            bn.weight[idx] = 0.0
            bn.bias[idx] = 0.0
    return model.eval(), g


def run(args) -> list[dict]:
    rows = []
    for level, seed in tqdm([(lv, s) for lv in args.levels for s in args.seeds], desc="structured_speedup"):
        model, g = zeroed_model(level, seed)
        x = torch.randn(max(args.batches), 3, 32, 32, generator=g)
        pruned, plan = prune_channels(model, x[:8])
        if args.fuse_bn:  # fold each BatchNorm into the conv before it, in both models (a standard deployment step)
            from torch.fx.experimental.optimization import fuse

            model, pruned = fuse(model), fuse(pruned)
        with torch.no_grad():
            diff = float((pruned(x[:64]) - model(x[:64])).abs().max())
        row = {"level": level, "seed": seed, "params_before": count_parameters(model), "params_after": count_parameters(pruned),
               "macs_before": count_flops(model, x[:1]), "macs_after": count_flops(pruned, x[:1]),
               "removed": plan.n_removed, "kept_nonzero_constant": len(plan.kept_nonzero_constant), "max_abs_diff": diff}
        row["flop_ratio"] = row["macs_before"] / row["macs_after"]
        for batch in args.batches:
            reps = args.repeats if batch >= 64 else args.repeats_small
            medians, times = compare_latency({"collapsed": model, "pruned": pruned}, x, batch_sizes=(batch,), repeats=reps, warmup=2,
                                             num_threads=args.threads, channels_last=args.channels_last, return_times=True)
            med = {k: v[batch] for k, v in medians.items()}
            paired = statistics.median(ta / tb for ta, tb in zip(times["collapsed"][batch], times["pruned"][batch]))
            row[f"ms_collapsed_b{batch}"] = 1e3 * med["collapsed"]
            row[f"ms_pruned_b{batch}"] = 1e3 * med["pruned"]
            row[f"speedup_b{batch}"] = paired  # median of the ratios of back-to-back runs
            row[f"speedup_min_b{batch}"] = min(times["collapsed"][batch]) / min(times["pruned"][batch])  # robust to load spikes
        rows.append(row)
    return rows


def summarise(rows: list[dict], batches) -> str:
    head = "| zeroed | params before -> after | MACs/sample before -> after | FLOP ratio |"
    sep = "|---:|---|---|---:|"
    for b in batches:
        head += f" ms b{b} collapsed -> pruned | speed-up b{b} (min-max) | speed-up / FLOP ratio b{b} | speed-up b{b} from fastest runs |"
        sep += "---|---|---:|---:|"
    lines = [head + " max abs diff |", sep + "---:|"]
    med = statistics.median
    for level in sorted({r["level"] for r in rows}):
        rs = [r for r in rows if r["level"] == level]
        fr = med(r["flop_ratio"] for r in rs)
        line = (f"| {level:.0%} | {med(r['params_before'] for r in rs):,.0f} -> {med(r['params_after'] for r in rs):,.0f} | "
                f"{med(r['macs_before'] for r in rs) / 1e6:.1f}M -> {med(r['macs_after'] for r in rs) / 1e6:.1f}M | {fr:.2f}x |")
        for b in batches:
            sp = [r[f"speedup_b{b}"] for r in rs]
            line += (f" {med(r[f'ms_collapsed_b{b}'] for r in rs):.2f} -> {med(r[f'ms_pruned_b{b}'] for r in rs):.2f} | "
                     f"{med(sp):.2f}x ({min(sp):.2f}-{max(sp):.2f}) | {med(s / r['flop_ratio'] for s, r in zip(sp, rs)):.2f} | "
                     f"{med(r[f'speedup_min_b{b}'] for r in rs):.2f}x |")
        lines.append(line + f" {max(r['max_abs_diff'] for r in rs):.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 levels, 1 seed, fewer repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats-small", type=int, default=60, help="timed runs per model for batches < 64 (cheap, noisier)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model for batches >= 64")
    parser.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm into the convolutions of both models before timing")
    parser.add_argument("--channels-last", action="store_true", help="time both models in channels-last (NHWC) layout")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    args.levels = QUICK_LEVELS if args.quick else LEVELS
    if args.quick:
        args.seeds, args.repeats, args.repeats_small = args.seeds[:1], 3, 20
    torch.set_num_threads(args.threads)
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"structured_speedup{'_fused' if args.fuse_bn else ''}{'_nhwc' if args.channels_last else ''}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"torch {torch.__version__}, {args.threads} thread(s), seeds {args.seeds}, {args.repeats} timed runs per model at batch >= 64, {args.repeats_small} below (models in turns), "
          f"input 3x32x32, widths {WIDTHS}, BatchNorm {'folded into the convs' if args.fuse_bn else 'separate'}, "
          f"layout {'NHWC (channels-last)' if args.channels_last else 'NCHW'}\n")
    print(summarise(rows, args.batches))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
