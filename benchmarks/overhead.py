"""Training-step overhead of spred on real architectures: time and peak memory over dense.

Each case (model, batch, optimizer, groups) compares up to three kinds: ``dense`` (same
optimizer, same weight decay), ``spred`` (the fast path) and ``plain`` (the same spred
model with the fast path off, as ``SPRED_FASTPATH=0``: the weight-space implementation).
Step time: the three models live in one process and take their steps in turns (the
order rotating every round), so a change of load on the machine hits them alike, and a
step is timed in CPU seconds of the process (``time.process_time``: on a shared machine
the time the process waits for a core does not count); the table gives the median over
rounds of each kind's step over dense's in the same round, with the spread.
The CPU time includes the kernel's: a step whose tensors land on pages the allocator has just
returned to the system (glibc trims the top of its heap once more than a threshold is free,
and maps large blocks afresh) pays a page fault per 4 KiB page. Which of the models that share
a process pays them is a matter of where their tensors fall on the heap, so per kind the
table also gives the median system CPU milliseconds and minor page faults of a step;
``--malloc steady`` (glibc only) sets ``mallopt`` in the timing process so that freed memory
stays with the process (no trimming, no fresh maps below 32 MiB): the step times then hold
the work of the step alone.
Peak memory: each kind again, alone in a forked process, as the peak resident-set growth
over two training steps, model and optimizer included (Linux's ``VmHWM`` reset through
``/proc/self/clear_refs``, else ``resource.getrusage``). The parent only imports, so
forking is cheap and safe. Models (CIFAR-sized 32x32 inputs): a resnet18-style net
(BasicBlocks 2-2-2-2, 64-512 channels), VGG-11 with BatchNorm and a 512-4096-4096-10
classifier, a 2-layer BERT from ``transformers`` (hidden 128, sequence 64), a
MobileNetV2-style stack of inverted residual blocks (groups ``elementwise`` and
``out``), and :class:`spred.models.ResNet20` with ``shortcut="B"`` and channel groups
(``groups="channels"``; batches 64 and 128).

Per model one line gives the physical floor: the bytes an elementwise spred step must
move on top of dense (forward: read u, w, write v; backward: read dv, u, w, write du,
dw; the optimizer over the second copy of the weights), divided by the memory
bandwidth measured in the same run (a large tensor copy), as a ratio over dense.

    python benchmarks/overhead.py [--quick] [--threads 1] [--steps 6] [--malloc steady]
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import resource
import statistics
import time

import torch
from torch import nn

import spred
import spred.models
from spred.nn import _fastpath

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


def resnet20():
    return spred.models.build("resnet20", shortcut="B")


def _images(b):
    return torch.randn(b, 3, 32, 32)


MODELS = {  # name -> (factory, input maker, groups compared, default batches)
    "resnet18": (resnet18, _images, ("elementwise", "out"), (8, 64)),
    "vgg11_bn": (vgg11_bn, _images, ("elementwise", "out"), (8, 64)),
    "bert": (Bert, lambda b: torch.randint(0, 8000, (b, 64)), ("elementwise", "out"), (8, 64)),
    "mobilenet_v2": (mobilenet_v2, _images, ("elementwise", "out"), (8, 64)),
    "resnet20": (resnet20, _images, ("channels",), (64, 128)),
}
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
}

# ---------------------------------------------------------------- one case, in a forked process


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


def _trainer(model_name, batch, opt_name, groups, kind):
    """A function taking one training step of ``kind`` on a fresh model (seeded: every kind starts from the same weights)."""
    torch.manual_seed(0)
    factory, make_input, *_ = MODELS[model_name]
    x, y = make_input(batch), torch.randint(0, 10, (batch,))
    model = factory().train()
    if kind in ("dense", "control"):
        params = [{"params": list(model.parameters()), "weight_decay": 1e-4}]
    elif groups == "channels":
        spred.sparsify(model, 1e-4, groups="channels", example_inputs=x[:2])
        params = spred.param_groups(model, weight_decay=1e-4)
    else:
        spred.sparsify(model, 1e-4, groups=None if groups == "elementwise" else groups)
        params = spred.param_groups(model, weight_decay=1e-4)
    opt, loss_fn = OPTIMIZERS[opt_name](params), nn.CrossEntropyLoss()

    def step():
        _fastpath.ENABLED = kind != "plain"  # read at every call, so one process can hold both paths
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def _kinds(groups: str) -> tuple[str, ...]:
    return ("dense", "spred") if groups == "channels" else ("dense", "spred", "plain")  # the fast path has no channel part


def steady_malloc() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``: no heap trimming, no fresh maps below 32 MiB); False elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-1, 2**31 - 1)) and bool(libc.mallopt(-3, 32 * 2**20))  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def time_case(model_name, batch, opt_name, groups, steps, warmup, control=False, malloc="default") -> dict:
    """Per kind the median step time, system time and page faults, and the per-round ratios over dense: the kinds step
    in turns.

    ``control`` adds a second dense model, the same as the first: its ratio is what the method reads when there
    is no difference (the noise, and the bias of a model's placement in memory). ``malloc="steady"``: see
    :func:`steady_malloc`."""
    if malloc == "steady" and not steady_malloc():
        raise RuntimeError("--malloc steady needs glibc's mallopt")
    kinds = _kinds(groups) + (("control",) if control else ())
    trainers = {k: _trainer(model_name, batch, opt_name, groups, k) for k in kinds}
    times, system, faults = ({k: [] for k in kinds} for _ in range(3))
    for r in range(warmup + steps):
        for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            before, t = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            trainers[k]()
            if r >= warmup:
                times[k].append(time.process_time() - t)
                after = resource.getrusage(resource.RUSAGE_SELF)
                system[k].append(after.ru_stime - before.ru_stime)
                faults[k].append(after.ru_minflt - before.ru_minflt)
    ratios = {k: [a / d for a, d in zip(times[k], times["dense"])] for k in kinds}
    median = statistics.median
    return {
        "time": {k: median(v) for k, v in times.items()},
        "ratios": ratios,
        "system": {k: median(v) for k, v in system.items()},
        "faults": {k: median(v) for k, v in faults.items()},
    }


def peak_case(model_name, batch, opt_name, groups, kind, steps) -> int:
    """Peak resident-set growth over building the model and optimizer and ``steps`` training steps."""
    before = _reset_peak()
    step = _trainer(model_name, batch, opt_name, groups, kind)
    for _ in range(steps):
        step()
    return _peak() - before


def _child(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # report, so the parent says what failed
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _forked(fn, *args):
    """``fn(*args)`` in a forked process: its own peak memory, and the imports paid once, in the parent."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__}{args}: {value}")
    return value


# ---------------------------------------------------------------- the physical floor


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per CPU second of a large tensor copy (read + write), the best of ``repeats``."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def _timed(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def floor_bytes(model_name: str, opt_name: str) -> int:
    """Extra bytes per step of elementwise spred, D=2, float32: 3P forward, 5P backward, the optimizer on P more."""
    model = MODELS[model_name][0]()
    p = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))
    optimizer_passes = 7 if opt_name == "adam" else 5  # Adam: read p, g, m, v, write p, m, v; SGD momentum: p, g, buf -> p, buf
    return 4 * p * (3 + 5 + optimizer_passes)


# ---------------------------------------------------------------- main


def _ratio(ratios: dict, kind: str) -> str:
    r = ratios.get(kind)
    return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})" if r else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smallest batch of each model, Adam, 2 rounds, 1 warm-up, memory over 1 step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (each kind one step per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--memory-steps", type=int, default=2, help="training steps of each memory measurement")
    parser.add_argument("--control", action="store_true", help="also time a second, identical dense model: the ratio of no difference")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, help="default: 8 and 64 (ResNet-20: 64 and 128)")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--malloc", default="default", choices=("default", "steady"), help="steady: glibc keeps freed memory (no trimming) while timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # the parent runs no tensor work: it only imports and forks
    if args.quick:
        args.optimizers, args.steps, args.warmup, args.memory_steps = ["adam"], 2, 1, 1
    if "bert" in args.models:
        from transformers import BertConfig, BertForSequenceClassification  # noqa: F401  (imported once, before the forks)
    bw = _forked(bandwidth)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fused optimizers, {args.steps} timed rounds after {args.warmup}; copy bandwidth {bw / 1e9:.1f} GB/s")
    print("step time (CPU seconds of the process): median over rounds of spred / dense in the same round (min-max); 'plain' = the fast path off")
    print("allocator: " + ("glibc keeps freed memory while timing (--malloc steady)" if args.malloc == "steady" else "as it is (trimming on)"))
    print(f"memory: peak resident-set growth over build + {args.memory_steps} step(s), each kind in its own process, over dense\n")
    control = " control time |" if args.control else ""
    print(f"| model | batch | optimizer | groups | dense ms | dense MiB | spred time | plain time |{control} spred mem | plain mem |")
    print("|---|---:|---|---|---:|---:|---:|---:|" + "---:|" * (3 if args.control else 2))
    floors, allocator = {}, []
    for model_name in args.models:
        _, _, model_groups, default_batches = MODELS[model_name]
        batches = default_batches[:1] if args.quick else (args.batches or default_batches)
        for batch in batches:
            for opt_name in args.optimizers:
                for groups in model_groups:
                    case = (model_name, batch, opt_name, groups)
                    t = _forked(time_case, *case, args.steps, args.warmup, args.control, args.malloc)
                    allocator.append((case, t))
                    mem = {k: _forked(peak_case, *case, k, args.memory_steps) for k in _kinds(groups)}
                    dense_ms, plain_mem = 1e3 * t["time"]["dense"], f"{mem['plain'] / mem['dense']:.2f}" if "plain" in mem else "-"
                    times = " | ".join(_ratio(t["ratios"], k) for k in ("spred", "plain", "control")[: 3 if args.control else 2])
                    print(
                        f"| {model_name} | {batch} | {opt_name} | {groups} | {dense_ms:.1f} | {mem['dense'] / 2**20:.0f} | {times} | "
                        f"{mem['spred'] / mem['dense']:.2f} | {plain_mem} |",
                        flush=True,
                    )
                    if groups == "elementwise":
                        floors[(model_name, batch, opt_name)] = (t["time"]["dense"], statistics.median(t["ratios"]["spred"]))
    print("\nper step, median: system CPU ms / minor page faults of each kind")
    print("| model | batch | optimizer | groups | " + " | ".join(_kinds("out") + (("control",) if args.control else ())) + " |")
    print("|---|---:|---|---|" + "---:|" * (4 if args.control else 3))
    for (model_name, batch, opt_name, groups), t in allocator:
        cells = [f"{1e3 * t['system'][k]:.1f} / {t['faults'][k]:.0f}" if k in t["system"] else "-" for k in _kinds("out") + (("control",) if args.control else ())]
        print(f"| {model_name} | {batch} | {opt_name} | {groups} | " + " | ".join(cells) + " |")
    if not floors:
        return
    print("\nphysical floor (elementwise): extra bytes / bandwidth, as a step-time ratio over dense")
    print("| model | batch | optimizer | extra MB/step | floor ratio | measured ratio | measured / floor |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for (model_name, batch, opt_name), (dense, ratio) in floors.items():
        extra = _forked(floor_bytes, model_name, opt_name)
        floor = (dense + extra / bw) / dense
        print(f"| {model_name} | {batch} | {opt_name} | {extra / 1e6:.0f} | {floor:.2f} | {ratio:.2f} | {ratio / floor:.2f} |")


if __name__ == "__main__":
    main()
