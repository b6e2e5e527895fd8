"""Re-time the pruned networks of a `compression_structured.csv` on an idle machine.

`spred run compression` times each pruned module right after training it, often while
other runs share the CPU; the same architecture can then show different speed-ups in
two rows. Dense-layer latency depends on the shapes only, not on the weight values, so
this script rebuilds every distinct (model, widths) of the CSV: the structured model
(`compression.build_model`) with the channels beyond each layer's width zeroed (weight
and bias), pruned by `spred.compress.prune_channels` exactly as in the experiment. It
checks that the rebuilt module has the CSV's FLOPs, then times collapsed and pruned in
turns (`compare_latency`, medians, batch 1 and 256), in the default NCHW layout and in
channels-last (NHWC, `channels_last=True`), and prints speed-up / FLOP ratio next to the
in-run figure. With `--round-to N` it also times `prune_channels(..., round_to=N)`, which keeps
enough zero channels for every pruned layer to be a multiple of N wide (its FLOP ratio is
that of the rounded model), in the same turns.

    python benchmarks/structured_retime.py RESULTS/compression_structured.csv [...] [--repeats 30] [--threads 1] [--round-to 8]

Run it alone on the machine: the point is an uncontended measurement.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch import nn

from spred.compress import compare_latency, count_flops, prune_channels
from spred.experiments import compression as C
from spred.experiments._common import read_csv


def rebuild(model_name: str, widths: list[int]) -> tuple[nn.Module, nn.Module]:
    """(collapsed, pruned): the model with channels beyond ``widths`` zeroed, and prune_channels' output."""
    model = C.build_model(model_name, 0).eval()
    hidden = C.grouped_layers(model)
    modules = dict(model.named_modules())
    if len(hidden) != len(widths):
        raise ValueError(f"{model_name} has {len(hidden)} grouped layers, the CSV row {len(widths)} widths")
    with torch.no_grad():
        for name, width in zip(hidden, widths):
            m = modules[name]
            m.weight[width:] = 0.0
            if m.bias is not None:
                m.bias[width:] = 0.0
    pruned, _ = prune_channels(model, torch.zeros(2, 1, 28, 28))
    return model, pruned.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="compression_structured.csv files")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-to", type=int, default=None, help="also time the pruned networks with every width rounded up to a multiple of this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [r for path in args.csv for r in read_csv(path)]
    in_run = defaultdict(list)
    for r in rows:
        in_run[(r["model"], str(r["widths_after"]))].append((r["speedup_b256"], r.get("speedup_b256_cl", float("nan")), r["flop_ratio"]))
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} timed runs per model (in turns), medians\n")
    print("| model | widths after | round_to | FLOP ratio | layout | ms b256 collapsed -> pruned | speed-up b1 | speed-up b256 | b256 / FLOP ratio | in the run (b256 / FLOP) |")
    print("|---|---|---|---:|---|---|---:|---:|---:|---|")
    for (model_name, widths), seen in sorted(in_run.items()):
        collapsed, pruned = rebuild(model_name, [int(w) for w in widths.split("-")])
        variants = {"pruned": pruned}
        if args.round_to:
            variants["rounded"] = prune_channels(collapsed, torch.zeros(2, 1, 28, 28), round_to=args.round_to)[0].eval()
        flops = {k: count_flops(collapsed, x[:1]) / count_flops(m, x[:1]) for k, m in variants.items()}
        if abs(flops["pruned"] - seen[0][2]) > 1e-6 * flops["pruned"]:
            raise RuntimeError(f"rebuilt {model_name} {widths} has FLOP ratio {flops['pruned']}, the CSV {seen[0][2]}")
        for layout, index in (("NCHW", 0), ("NHWC", 1)):
            lat = compare_latency({"collapsed": collapsed, **variants}, x, batch_sizes=(1, 256), repeats=args.repeats,
                                  channels_last=layout == "NHWC")  # fmt: skip
            for key, module in variants.items():
                s1, s256 = lat["collapsed"][1] / lat[key][1], lat["collapsed"][256] / lat[key][256]
                before = ", ".join(f"{row[index] / row[2]:.2f}" for row in seen) if key == "pruned" else "-"
                ms = f"{1e3 * lat['collapsed'][256]:.1f} -> {1e3 * lat[key][256]:.1f}"
                shown = "-".join(map(str, C._widths(module, C.grouped_layers(collapsed)))) if key == "rounded" else widths
                rounding = args.round_to if key == "rounded" else "-"
                print(f"| {model_name} | {shown} | {rounding} | {flops[key]:.2f}x | {layout} | {ms} | {s1:.2f}x | {s256:.2f}x | "
                      f"{s256 / flops[key]:.2f} | {before} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
