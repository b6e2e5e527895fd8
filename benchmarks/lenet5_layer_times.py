"""Where the time of a channel-pruned LeNet-5-Caffe goes on CPU, layer by layer.

Explains why its measured speed-up trails its FLOP reduction (docs/compression.md,
structured). For the dense widths 20-50-500 and each pruned width triple (random
weights: the time does not depend on the values), every layer of the network is timed
on its own input (eval, inference mode, medians of ``--repeats`` passes at batch 256,
one thread unless told), in NCHW and channels_last memory format. Prints per width:
the multiply-accumulates (the FLOP count of ``spred.compress.count_flops``), the
time of each layer, the whole-network speed-up over the dense widths in the same
format, and speed-up / FLOP reduction.

    python benchmarks/lenet5_layer_times.py [--widths 9-24-234 2-5-71 1-4-28] [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from spred.compress import count_flops

DENSE = (20, 50, 500)
LAYERS = ("conv1", "pool1", "conv2", "pool2", "flatten", "fc1", "relu", "fc2")


def lenet5(c1: int, c2: int, hidden: int) -> nn.Sequential:
    """LeNet-5-Caffe (spred.models.LeNet5Caffe) with the given widths, as one flat Sequential."""
    return nn.Sequential(nn.Conv2d(1, c1, 5), nn.MaxPool2d(2), nn.Conv2d(c1, c2, 5), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * c2, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()  # fmt: skip


def layer_times(model: nn.Sequential, x: torch.Tensor, repeats: int) -> list[float]:
    times: list[list[float]] = [[] for _ in model]
    with torch.inference_mode():
        for r in range(repeats + 3):  # 3 warm-up passes
            y = x
            for i, layer in enumerate(model):
                t = time.perf_counter()
                y = layer(y)
                if r >= 3:
                    times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", nargs="+", default=["9-24-234", "2-5-71", "1-4-28"], help="pruned widths c1-c2-hidden")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    widths = [DENSE] + [tuple(int(v) for v in w.split("-")) for w in args.widths]
    x = torch.randn(args.batch, 1, 28, 28)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats} passes; times in ms\n")
    print("| widths | format | MACs/sample | " + " | ".join(LAYERS) + " | total | speed-up | FLOP reduction | speed-up / FLOP |")
    print("|---" * (len(LAYERS) + 7) + "|")
    dense_total = {}
    macs = {w: count_flops(lenet5(*w), x[:1]) for w in widths}
    for fmt, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf = x.contiguous(memory_format=memory_format)
        for w in widths:
            ts = layer_times(lenet5(*w).to(memory_format=memory_format), xf, args.repeats)
            total = sum(ts)
            dense_total.setdefault(fmt, total)
            speed, flop = dense_total[fmt] / total, macs[DENSE] / macs[w]
            cells = " | ".join(f"{1e3 * t:.2f}" for t in ts)
            print(f"| {'-'.join(map(str, w))} | {fmt} | {macs[w]:,} | {cells} | {1e3 * total:.2f} | {speed:.2f}x | {flop:.1f}x | {speed / flop:.2f} |")


if __name__ == "__main__":
    main()
