"""Data-parallel fit: 2 CPU processes under torchrun (gloo, 127.0.0.1) against one process.

The two-process runs launch ``examples/ddp_train.py`` (the script docs/scaling_out.md
shows) with ``python -m torch.distributed.run`` on a port the OS says is free; each
launch has a timeout after which its whole process group is killed. The one-process
references run in this process through the same script's ``train`` function.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import spred
from spred.train import checkpoint_path, fit, load_checkpoint
from spred.train._data import TensorBatches
from spred.train._distributed import Distributed, check_loader, context, is_distributed_loader, loss_scale, rank_seed, shard_indices, unwrap
from spred.train._loop import _count_batches

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_train.py"
# 512 samples, global batch 64: 8 steps per epoch; the target-sparsity controller moves lam every 5 steps
# (from 3e-3 to about 0.1) and about 75% of the weights end below the threshold.
ARGS = ["--epochs", "6", "--dtype", "float64", "--samples", "512", "--features", "20", "--hidden", "16", "--batch-size", "64",
        "--lr", "0.2", "--lam", "3e-3", "--target-sparsity", "0.7", "--threshold", "1e-3", "--seed", "0", "--threads", "1"]
THRESHOLD = 1e-3
LAUNCH_TIMEOUT = 120  # seconds per torchrun launch; measured 7 s (idle machine) to 25 s (loaded)
READY = "process group ready: 2 processes (gloo)"  # what the example prints once every rank is connected


# --------------------------------------------------------------------------- helpers


def load_example():
    spec = importlib.util.spec_from_file_location("spred_ddp_train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, nproc: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(EXAMPLE), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT} s; its process group was killed. Output:\n{explain(out)}")
    return proc.returncode, out


def torchrun(*args: str, nproc: int = 2) -> tuple[int, str, float]:
    """Run the example under torchrun; (exit code, output, seconds). A hung launch is killed with its process group.

    A launch whose processes never got connected (no "process group ready" line: the
    free port taken by another program before torchrun bound it, or a gloo connection
    error) is retried once, with a warning; a failure during training never is.
    """
    t0 = time.perf_counter()
    rc, out = launch(args, nproc)
    if rc != 0 and READY not in out:
        warnings.warn(f"torchrun failed before its processes were connected; retrying once. Output:\n{explain(out)}", UserWarning, stacklevel=2)
        rc, out = launch(args, nproc)
    return rc, out, time.perf_counter() - t0


def explain(out: str) -> str:
    """The part of a failed launch's output that says why: the workers' own lines, without torchrun's banner."""
    lines = [line for line in out.splitlines() if not line.startswith("W1") and "*****" not in line]
    return "\n".join(lines[-120:])


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def tensors(model: nn.Module) -> dict:
    return {k: v.detach() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def zero_masks(state: dict, example) -> dict:
    """The exact zeros that spred.collapse(threshold) writes, per weight."""
    model = example.make_model(20, 16, 1e-4, 0, torch.float64)
    model.load_state_dict(state, strict=False)  # lam is extra state, not in the saved tensors; collapse ignores it
    plain = spred.collapse(model, threshold=THRESHOLD)
    return {n: p == 0 for n, p in plain.named_parameters() if n.endswith("weight")}


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, example):
    """Every run the tests compare, made once: 3 torchrun launches and 2 one-process runs."""
    tmp = tmp_path_factory.mktemp("ddp")
    runs = SimpleNamespace(seconds={})  # launch durations, for the report when a test fails
    # 1. two processes, uninterrupted
    rc, out, runs.seconds["two"] = torchrun(*ARGS, "--out", str(tmp / "two.pt"))
    assert rc == 0, explain(out)
    runs.two = weights(tmp / "two.pt")
    # 2. two processes, the last rank killed (SIGKILL) at its 21st step: in epoch 3 of 6, after the epoch-2 checkpoint
    rc, runs.crash_output, runs.seconds["crash"] = torchrun(*ARGS, "--checkpoint-dir", str(tmp / "ck"), "--kill-at-step", "21")
    runs.crash_rc = rc
    runs.checkpoint = load_checkpoint(checkpoint_path(tmp / "ck"))
    shutil.copytree(tmp / "ck", tmp / "ck1")
    # 3. resume it on two processes
    rc, out, runs.seconds["resume_two"] = torchrun(*ARGS, "--checkpoint-dir", str(tmp / "ck"), "--resume", "--out", str(tmp / "resumed.pt"))
    assert rc == 0, explain(out)
    runs.resumed_two = weights(tmp / "resumed.pt")
    # 4. one process, uninterrupted, and 5. one process resuming the two-process checkpoint
    t0 = time.perf_counter()
    runs.one = example.train(example.parser().parse_args(ARGS), torch.device("cpu"))
    runs.resumed_one = example.train(example.parser().parse_args([*ARGS, "--checkpoint-dir", str(tmp / "ck1"), "--resume"]), torch.device("cpu"))
    runs.seconds["one_process_runs"] = time.perf_counter() - t0
    return runs


# --------------------------------------------------------------------------- two processes under torchrun


def test_two_processes_give_the_one_process_weights_in_float64(runs):
    two, one = runs.two, runs.one
    assert two["world_size"] == 2 and two["rank_difference"] == 0.0  # every rank ends with rank 0's weights, bit for bit
    assert max_difference(two["state"], tensors(one.model)) <= 1e-6  # measured: 2.2e-16
    assert [r["lam"] for r in two["history"]] == [r["lam"] for r in one.history]  # the controller saw the same weights
    assert [r["step"] for r in two["history"]] == [r["step"] for r in one.history] == [8, 16, 24, 32, 40, 48]
    for a, b in zip(two["history"], one.history):  # the losses are summed over the ranks
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
        assert a["sparsity"] == b["sparsity"]
    assert one.history[-1]["lam"] > 10 * one.history[0]["lam"]  # lam did move: the comparison covers the controller


def test_two_processes_give_the_same_zeros_after_collapse(runs, example):
    two, one = zero_masks(runs.two["state"], example), zero_masks(tensors(runs.one.model), example)
    assert two.keys() == one.keys() == {"1.weight", "3.weight"}
    assert all(torch.equal(two[k], one[k]) for k in two)
    zeros, numel = sum(int(m.sum()) for m in two.values()), sum(m.numel() for m in two.values())
    assert 0.5 * numel < zeros < numel  # most weights are zero, not all: the masks say something


def test_an_interrupted_two_process_run_resumes_exactly(runs):
    assert runs.crash_rc != 0 and READY in runs.crash_output and "SIGKILL" in runs.crash_output  # it died while training
    ckpt = runs.checkpoint
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped: loads into a plain model
    resumed, full = runs.resumed_two, runs.two
    assert resumed["state"].keys() == full["state"].keys()
    assert all(torch.equal(resumed["state"][k], full["state"][k]) for k in full["state"])  # bit for bit
    assert [r["lam"] for r in resumed["history"]] == [r["lam"] for r in full["history"]]
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in full["history"]]


def test_a_two_process_checkpoint_resumes_on_one_process(runs):
    assert max_difference(tensors(runs.resumed_one.model), runs.two["state"]) <= 1e-6  # measured: 2.2e-16
    assert [r["lam"] for r in runs.resumed_one.history] == [r["lam"] for r in runs.two["history"]]


# --------------------------------------------------------------------------- the pieces, in one process


@pytest.mark.parametrize("n, world", [(64, 2), (10, 4), (3, 2), (1, 2), (7, 3)])
def test_shards_partition_a_batch_in_rank_order(n, world):
    parts = [shard_indices(n, r, world) for r in range(world)]
    assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == n
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("sizes", [(32, 32), (3, 2), (1, 0), (5, 5, 4)])
def test_loss_scale_turns_the_ddp_average_into_the_global_mean(sizes):
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand(n, generator=g, dtype=torch.float64) for n in sizes]
    total, world = sum(sizes), len(sizes)
    ddp_average = sum(loss_scale(n, total, world) * (l.mean() if n else 0.0) for n, l in zip(sizes, losses)) / world
    assert float(ddp_average) == pytest.approx(float(torch.cat(losses).mean()), rel=1e-14)
    if len(set(sizes)) == 1:
        assert loss_scale(sizes[0], total, world) == 1.0  # even split: the loss is not touched


@pytest.mark.parametrize("shuffle", [True, False])
def test_tensor_batches_split_each_global_batch_by_rank(shuffle):
    X, y = torch.arange(50.0).unsqueeze(1), torch.arange(50)
    one = list(TensorBatches(X, y, 16, torch.device("cpu"), shuffle).epoch(torch.Generator().manual_seed(3)))
    ranks = [list(TensorBatches(X, y, 16, torch.device("cpu"), shuffle, r, 3).epoch(torch.Generator().manual_seed(3))) for r in range(3)]
    assert all(len(r) == len(one) == 4 for r in ranks)
    for b, (xb, yb) in enumerate(one):
        assert torch.equal(torch.cat([ranks[r][b][1] for r in range(3)]), yb)  # the union, in rank order, is the batch
    assert [len(ranks[r][3][1]) for r in range(3)] == [1, 1, 0]  # the last batch holds 2 samples: rank 2 gets none


def test_rank_seeds_keep_rank_0_and_differ_elsewhere():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(64)}) == 64
    assert all(0 <= rank_seed(2**64 - 1, r) < 2**64 for r in range(4))


def test_a_loader_without_distributed_sampler_warns():
    ds = TensorDataset(torch.zeros(8, 2), torch.zeros(8))
    with pytest.warns(UserWarning, match=r"'train_data' DataLoader of fit has no DistributedSampler, so each of the 2 ranks"):
        check_loader(DataLoader(ds, batch_size=4), "train_data", 2)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0)
    assert is_distributed_loader(DataLoader(ds, batch_size=4, sampler=sampler))
    assert is_distributed_loader(DataLoader(ds, batch_sampler=torch.utils.data.BatchSampler(sampler, 2, False)))


def test_unequal_batch_counts_across_ranks_are_refused():
    class TwoRanks:  # what gather_object answers when rank 1 has one batch more
        def gather_object(self, obj):
            return [obj, obj + 1]

    with pytest.raises(ValueError, match=r"gives a different number of batches per epoch on each rank \(\[3, 4\]\)"):
        _count_batches([0, 1, 2], TwoRanks())


def test_nccl_with_a_cpu_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match=r"NCCL process group but the 'device' is cpu: NCCL works on CUDA tensors only"):
        context(torch.device("cpu"))


def test_one_process_is_the_plain_loop():
    assert not torch.distributed.is_initialized()
    assert context(torch.device("cpu")) is None


@pytest.fixture
def world_of_one(tmp_path):
    """An initialised gloo process group of one process (fit then runs the single-process loop)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def small_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 6, generator=g)
    y = (X[:, 0] > 0).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    return X, y, net


def test_a_ddp_wrapped_model_is_accepted_and_returned(world_of_one, tmp_path):
    X, y, net = small_problem()
    ref = spred.sparsify(small_problem()[2], lam=1e-3)
    ddp = nn.parallel.DistributedDataParallel(spred.sparsify(net, lam=1e-3))
    assert context(torch.device("cpu")) is None  # a world of one runs the plain loop
    result = fit(ddp, (X, y), epochs=2, batch_size=32, progress=False, checkpoint_dir=tmp_path / "ck")
    plain = fit(ref, (X, y), epochs=2, batch_size=32, progress=False)
    assert result.model is ddp and unwrap(ddp) is net
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))
    assert set(load_checkpoint(checkpoint_path(tmp_path / "ck"))["model"]) == set(ref.state_dict())  # no "module." prefix


def test_a_ddp_model_wrapped_before_sparsify_is_refused(world_of_one):
    X, y, net = small_problem()
    ddp = nn.parallel.DistributedDataParallel(net)
    spred.sparsify(net, lam=1e-3)  # too late: DDP does not know the factors
    with pytest.raises(ValueError, match=r"does not synchronise 4 trainable parameter\(s\).*wrapped before they existed, e.g. before spred.sparsify"):
        fit(ddp, (X, y), epochs=1, progress=False)


def test_a_ddp_model_cannot_move(world_of_one):
    X, y, net = small_problem()
    ddp = nn.parallel.DistributedDataParallel(spred.sparsify(net, lam=1e-3))
    with pytest.raises(ValueError, match=r"'device' parameter of fit is 'cuda:1' but the DistributedDataParallel model was wrapped on cpu"):
        fit(ddp, (X, y), epochs=1, device="cuda:1", progress=False)


def test_distributed_sum_and_broadcast_in_a_world_of_one(world_of_one):
    d = Distributed(0, 1, torch.device("cpu"))
    assert d.sum([1.5, 2.0]) == [1.5, 2.0] and d.any(True) and not d.any(False)
    assert d.broadcast_float(0.1) == 0.1 and d.broadcast_object({"a": 1}) == {"a": 1} and d.gather_object(3) == [3]
    d.barrier()
