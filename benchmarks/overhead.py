"""Training-step overhead of spred on real architectures: time and peak memory over dense.

Each case (model, batch, optimizer, groups) runs up to three kinds, each in its own
subprocess so that peak memory (the peak resident-set growth over the training
steps, model and optimizer included: Linux's ``VmHWM`` reset through
``/proc/self/clear_refs``, else ``resource.getrusage``) is its own: ``dense`` (same optimizer,
same weight decay), ``spred`` (the fast path) and ``plain`` (the same spred model with
the fast path off, ``SPRED_FASTPATH=0``: the implementation before it). Step time is
the median over the timed steps. Models, all defined here (CIFAR-sized 32x32 inputs):
a resnet18-style net (BasicBlocks 2-2-2-2, 64-512 channels), VGG-11 with BatchNorm and
a 512-4096-4096-10 classifier, a 2-layer BERT from ``transformers`` (hidden 128,
sequence 64) and a MobileNetV2-style stack of inverted residual blocks.

Per model one line gives the physical floor: the bytes an elementwise spred step must
move on top of dense (forward: read u, w, write v; backward: read dv, u, w, write du,
dw; the optimizer over the second copy of the weights), divided by the memory
bandwidth measured in the same run (a large tensor copy), as a ratio over dense.

    python benchmarks/overhead.py [--quick] [--threads 1] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import spred

# ---------------------------------------------------------------- models


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet18():
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def vgg11_bn():
    layers, cin = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    head = [nn.Linear(512, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 10)]
    return nn.Sequential(*layers, nn.Flatten(), *head)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand=6):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


def mobilenet_v2():
    layers, cin = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 10)]
    return nn.Sequential(*layers)


class Bert(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, max_position_embeddings=128, num_labels=10)
        self.net = BertForSequenceClassification(cfg)

    def forward(self, ids):
        return self.net(input_ids=ids).logits


MODELS = {  # name -> (factory, input maker)
    "resnet18": (resnet18, lambda b: torch.randn(b, 3, 32, 32)),
    "vgg11_bn": (vgg11_bn, lambda b: torch.randn(b, 3, 32, 32)),
    "bert": (Bert, lambda b: torch.randint(0, 8000, (b, 64))),
    "mobilenet_v2": (mobilenet_v2, lambda b: torch.randn(b, 3, 32, 32)),
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
}

# ---------------------------------------------------------------- one case, in a subprocess


def _reset_peak() -> int:
    """Current resident bytes, after resetting the peak where Linux allows it (else the getrusage peak so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, so imports' peak does not hide the training's
        return _proc_status("VmRSS")
    except OSError:
        return _peak()


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _peak() -> int:
    try:
        return _proc_status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(model_name, batch, opt_name, groups, kind, steps):
    torch.manual_seed(0)
    factory, make_input = MODELS[model_name]
    x, y = make_input(batch), torch.randint(0, 10, (batch,))
    before = _reset_peak()
    model = factory().train()
    if kind == "dense":
        params = [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    else:
        spred.sparsify(model, 1e-4, groups=None if groups == "elementwise" else groups)
        params = spred.param_groups(model, weight_decay=1e-4)
    opt, loss_fn, times = OPTIMIZERS[opt_name](params), nn.CrossEntropyLoss(), []
    for i in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {"time": statistics.median(times), "peak": _peak() - before}


def _subprocess(args, case, kind):
    env = dict(os.environ, SPRED_FASTPATH="0" if kind == "plain" else "1", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--case", json.dumps([*case, kind]), "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the physical floor


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write)."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def floor_bytes(model_name: str, opt_name: str) -> int:
    """Extra bytes per step of elementwise spred, D=2, float32: 3P forward, 5P backward, the optimizer on P more."""
    model = MODELS[model_name][0]()
    p = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))
    optimizer_passes = 7 if opt_name == "adam" else 5  # Adam: read p, g, m, v, write p, m, v; SGD momentum: p, g, buf -> p, buf
    return 4 * p * (3 + 5 + optimizer_passes)


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, Adam, 2 steps: under 3 minutes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(*json.loads(args.case), args.steps)))
        return
    if args.quick:
        args.batches, args.optimizers, args.steps = [8], ["adam"], 2
    bw = bandwidth()
    print(f"torch {torch.__version__}, {args.threads} thread(s), fused optimizers, median of {args.steps} steps; copy bandwidth {bw / 1e9:.1f} GB/s")
    print("ratios over dense; 'plain' = the same spred model with SPRED_FASTPATH=0\n")
    print("| model | batch | optimizer | groups | dense ms | dense MiB | spred time | plain time | spred mem | plain mem |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    floors = {}
    for model_name in args.models:
        for batch in args.batches:
            for opt_name in args.optimizers:
                d = _subprocess(args, [model_name, batch, opt_name, "elementwise"], "dense")
                for groups in ("elementwise", "out"):
                    case = [model_name, batch, opt_name, groups]
                    r = {kind: _subprocess(args, case, kind) for kind in ("spred", "plain")}
                    print(
                        f"| {model_name} | {batch} | {opt_name} | {groups} | {1e3 * d['time']:.1f} | {d['peak'] / 2**20:.0f} | "
                        f"{r['spred']['time'] / d['time']:.2f} | {r['plain']['time'] / d['time']:.2f} | "
                        f"{r['spred']['peak'] / d['peak']:.2f} | {r['plain']['peak'] / d['peak']:.2f} |",
                        flush=True,
                    )
                    if groups == "elementwise":
                        floors[(model_name, batch, opt_name)] = (d["time"], r["spred"]["time"])
    print("\nphysical floor (elementwise): extra bytes / bandwidth, as a step-time ratio over dense")
    print("| model | batch | optimizer | extra MB/step | floor ratio | measured ratio | measured / floor |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for (model_name, batch, opt_name), (dense, sparse) in floors.items():
        extra = floor_bytes(model_name, opt_name)
        floor = (dense + extra / bw) / dense
        print(f"| {model_name} | {batch} | {opt_name} | {extra / 1e6:.0f} | {floor:.2f} | {sparse / dense:.2f} | {sparse / dense / floor:.2f} |")


if __name__ == "__main__":
    main()
