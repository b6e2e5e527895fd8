"""``spred run compression --dataset cifar10``: structured compression of a CIFAR ResNet, spred against channel baselines.

Protocol (per seed; every method gets the same epochs, batch size and optimizer, Adam):

1. **Dense pre-training**, shared by all methods: ``dense_epochs`` epochs (cosine learning
   rate), cached in the output folder (``cache/dense_<model>_seed<s>.pt``) and reused by a
   later run with the same settings. The ``dense`` row trains ``epochs + finetune_epochs``
   more (cosine) from it: the unpruned network at equal epochs.
2. **Sparse training**, ``epochs`` epochs from the dense weights, at ``sparse_lr`` (default: ``lr``) for
   every method alike:

   ``spred_d2`` / ``spred_d3``
       :func:`spred.sparsify` with ``groups="channels"`` (one gate of D-1 scalars per
       dependency group, each channel's penalty weighted by ``group_weight``: its
       multiply-adds by default, so that lam prices FLOPs), trained with
       :class:`spred.train.TargetSparsity` aiming at ``1 - r**-0.5`` zeros (removing a
       fraction ``s`` of the channels of every layer leaves about ``(1 - s)**2`` of the
       FLOPs), then :func:`spred.collapse`; one run per FLOPs target ``r``; the gates
       alone may train at ``spred_gate_lr`` (the weights at the rate of every method);
   ``slimming``
       Network Slimming: L1 (``slimming_lam``) on the BatchNorm scales; one run per seed;
   ``group_reg``
       Torch-Pruning's ``GroupNormPruner.regularize`` (``group_reg``); one run per seed;
   ``l1_filter``
       plain dense training (Li et al., 2017 prune a trained dense model).
3. **Cut to the FLOPs target**, the same for every method: its channels are scored (see
   :mod:`spred.experiments._baselines_slimming`) and the lowest are zeroed until the pruned
   model has at most ``dense FLOPs / r`` (a bisection on the number of channels). spred's
   exact zero channels score 0 and go first, so for spred the cut only tops up what its
   training left short (``flop_ratio_before_cut`` records what the training alone removed;
   a run past the target is not filled back: its ``flop_ratio`` is then above ``r``).
   The comparison is at equal FLOPs (at most the target), not along a lam sweep.
4. **Fine-tuning** ``finetune_epochs`` (cosine) with the zeros frozen, then
   :func:`spred.compress.prune_channels` removes them physically (``zero_channels_kept``:
   zero channels it had to keep, 0 when every one was removed).
5. **Timing**: once all jobs of a seed are done, every pruned model and the dense one are
   timed in turns in the main process (:func:`spred.compress.compare_latency`, batch 1 and
   256, NCHW and channels-last), so the speed-ups are ratios measured in one run.

Each (method, target, seed) is one job whose row and pruned model are saved in ``cache``: an
interrupted run resumes where it stopped. A cached job is reused only if the settings it
depends on and the library code behind it are unchanged (:func:`_key`: spred's rows are
recomputed after a change of ``spred.nn``, the baselines' after a change of their module).
``workers > 1`` runs the jobs of a seed in that many processes (one thread each) after its
dense model is trained.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spred.experiments import _baselines_slimming as bs
from spred.experiments import _common
from spred.experiments._outdir import CACHE

logger = logging.getLogger(__name__)

CIFAR_MODELS = ("resnet20", "resnet56", "vgg")
CIFAR_METHODS = ("spred_d2", "spred_d3", "slimming", "group_reg", "l1_filter")
CIFAR_COLUMNS = (
    "model", "method", "seed", "target_flop_ratio", "test_acc", "test_acc_before_finetune", "params", "flops", "flop_ratio",
    "latency_b1_ms", "latency_b256_ms", "latency_b1_cl_ms", "latency_b256_cl_ms", "speedup_b1", "speedup_b256",
    "speedup_b1_cl", "speedup_b256_cl", "flop_ratio_before_cut", "zero_channels_kept", "epochs", "wall_s", "train_size",
)  # fmt: skip
WHO = "CifarCompressionConfig"


@dataclass(frozen=True)
class CifarCompressionConfig:
    """Settings of the CIFAR-10 (JPEG) structured experiment (defaults: the full preset; ``CIFAR_QUICK``: the quick one).

    ``dense_epochs`` + ``epochs`` + ``finetune_epochs`` is every method's total; the dense
    row trains ``epochs + finetune_epochs`` more from the cached dense model.
    ``flop_targets``: FLOPs reduction factors r (the dense model's FLOPs / r at most).
    ``train_size`` / ``test_size``: random training subset / first test images (None: all).
    ``lam``: spred's starting lam (the controller adapts it) or, with ``spred_controller=False``, its
    fixed lam: spred then trains once per seed and depth and is cut to every target like the baselines.
    ``group_weight``: spred's weight of a channel's penalty (``"flops"``: its multiply-adds; ``"size"``).
    ``sparse_lr``: Adam's rate in the ``epochs`` of sparse training, the same for every method (None: ``lr``,
    which the dense pre-training and the dense reference row always use).
    ``spred_gate_lr``: the rate of spred's channel gates alone (``fit(..., gate_lr=...)``, :func:`spred.param_groups`);
    spred's weights keep the sparse-training rate of every method (None: the gates too).
    """

    model: str = "resnet20"
    methods: tuple[str, ...] = CIFAR_METHODS
    flop_targets: tuple[float, ...] = (2.0, 4.0, 8.0)
    dense_epochs: int = 60
    epochs: int = 30
    finetune_epochs: int = 20
    train_size: int | None = None
    test_size: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    sparse_lr: float | None = None
    spred_gate_lr: float | None = None
    lam: float = 1e-5
    threshold: float = 1e-3
    group_weight: str = "flops"
    spred_controller: bool = True
    slimming_lam: float = 1e-4
    group_reg: float = 1e-4
    latency_repeats: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 1
    device: str = "cpu"


#: ``--quick`` with ``--dataset cifar10``: 3,000 training images, 2,000 test images, one seed, targets 2x and 4x,
#: 12 dense epochs (cosine; shared) + 5 sparse-training + 1 fine-tuning epochs per method, batch 32, Adam lr 1e-3
#: for every method's weights. spred's gates train at ``spred_gate_lr`` = 1e-2: Adam moves a gate by about its lr per
#: step, and the median gate of the dense model is 0.29 (D=2) / 0.44 (D=3), so at 1e-3 a gate needs 290-440 of the
#: 470 steps to close and none does; at 1e-2, 30-45 steps. lam is adapted per target by the controller (one
#: training per target), starting from 1e-3. About 15-25 minutes on two cores with ``--workers 2`` (estimate);
#: docs/compression.md has the times measured on a loaded machine.
CIFAR_QUICK = {"train_size": 3000, "test_size": 2000, "dense_epochs": 12, "epochs": 5, "finetune_epochs": 1, "batch_size": 32,
               "lam": 1e-3, "spred_gate_lr": 1e-2, "spred_controller": True, "flop_targets": (2.0, 4.0), "latency_repeats": 5,
               "seeds": (0,)}  # fmt: skip

RULES = {
    "model": _common.one_of(CIFAR_MODELS),
    "methods": _common.some_of(CIFAR_METHODS),
    "flop_targets": _common.tuple_of(_common.a_float(1.0, low_open=True), "numbers > 1", distinct=True),
    "dense_epochs": _common.an_int(1), "epochs": _common.an_int(1), "finetune_epochs": _common.an_int(0),
    "train_size": _common.an_int(2, optional=True), "test_size": _common.an_int(2, optional=True),
    "batch_size": _common.an_int(1),
    "lr": _common.a_float(0.0, low_open=True), "finetune_lr": _common.a_float(0.0, low_open=True),
    "sparse_lr": _common.a_float(0.0, low_open=True, optional=True),
    "spred_gate_lr": _common.a_float(0.0, low_open=True, optional=True),
    "lam": _common.a_float(0.0, low_open=True), "threshold": _common.a_float(0.0, low_open=True),
    "group_weight": _common.one_of(("size", "flops")), "spred_controller": _common.a_bool(),
    "slimming_lam": _common.a_float(0.0, low_open=True), "group_reg": _common.a_float(0.0, low_open=True),
    "latency_repeats": _common.an_int(1), "seeds": _common.tuple_of(_common.an_int(0), "ints >= 0", distinct=True),
    "workers": _common.an_int(1), "device": _common.a_str(),
}  # fmt: skip


def check_cifar_config(cfg: CifarCompressionConfig) -> CifarCompressionConfig:
    """Validate every field (TypeError / ValueError naming the field); tuples as tuples of floats / ints."""
    values = _common.check_fields(cfg, RULES)
    return dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --------------------------------------------------------------------------- data and models


@dataclass(frozen=True)
class CifarData:
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def load_cifar(cfg: CifarCompressionConfig, seed: int) -> CifarData:
    """CIFAR-10 (JPEG) in [0, 1]: a random training subset drawn from ``seed`` and the first ``test_size`` test images."""
    from spred.experiments.compression import load_data

    d = load_data("cifar10", train_size=cfg.train_size, seed=seed)
    n = cfg.test_size or len(d.X_test)
    return CifarData(d.X_train, d.y_train, d.X_test[:n], d.y_test[:n])


def build_cifar_model(name: str, seed: int) -> nn.Module:
    """The network behind the CIFAR augmentation; ResNets with projection shortcuts (option B: prunable across stages)."""
    from spred.datasets import RandomCropFlip
    from spred.models import build

    kwargs = {"shortcut": "B"} if name.startswith("resnet") else {"batch_norm": True}
    return nn.Sequential(RandomCropFlip(), build(name if name != "vgg" else "smallvgg", seed=seed, **kwargs))


# --------------------------------------------------------------------------- one job


class _Job:
    """What the methods of one (config, seed) share: data, fit and evaluation."""

    def __init__(self, cfg: CifarCompressionConfig, seed: int, data: CifarData):
        self.cfg, self.seed, self.data = cfg, seed, data
        self.example = data.X_test[:8].to(cfg.device)
        self.trained: dict[str, tuple[nn.Module, str, float]] = {}  # target-free sparse training, shared by the targets

    def fit(self, model: nn.Module, epochs: int, **kwargs):
        from spred.train import fit

        kwargs.setdefault("optimizer", "adam")
        kwargs.setdefault("lr", self.cfg.lr)
        return fit(model, (self.data.X_train, self.data.y_train), epochs=epochs, batch_size=self.cfg.batch_size,
                   seed=self.seed, device=self.cfg.device, progress=False, **kwargs)  # fmt: skip

    def accuracy(self, model: nn.Module) -> float:
        from spred.train import evaluate

        return float(evaluate(model, (self.data.X_test, self.data.y_test), device=self.cfg.device)["acc"])


def _adam_with(model: nn.Module, lr: float, hook) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    optimizer.register_step_pre_hook(hook)
    return optimizer


def _sparse_train(job: _Job, method: str, dense: nn.Module, target: float) -> tuple[nn.Module, str]:
    """``epochs`` of the method's own training from the dense weights; returns the plain model and its score kind."""
    import spred
    from spred.train import TargetSparsity

    cfg, model = job.cfg, copy.deepcopy(dense)
    lr = cfg.lr if cfg.sparse_lr is None else cfg.sparse_lr
    if method.startswith("spred_d"):
        spred.sparsify(model, cfg.lam, groups="channels", example_inputs=job.example, depth=int(method[-1]),
                       group_weight=cfg.group_weight)  # fmt: skip
        control = TargetSparsity(1.0 - target**-0.5) if cfg.spred_controller else None  # None: lam fixed, one run for all targets
        job.fit(model, cfg.epochs, lr=lr, gate_lr=cfg.spred_gate_lr, target_sparsity=control, threshold=cfg.threshold)
        return spred.collapse(model, threshold=cfg.threshold), "group_l2"
    if method == "slimming":
        job.fit(model, cfg.epochs, optimizer=_adam_with(model, lr, bs.BNScaleL1(model, cfg.slimming_lam)))
        return model, "bn_scale"
    if method == "group_reg":
        hook = bs.GroupRegulariser(model, job.example, cfg.group_reg)
        job.fit(model, cfg.epochs, optimizer=_adam_with(model, lr, hook))
        return model, "group_l2"
    if method == "l1_filter":
        job.fit(model, cfg.epochs, lr=lr)
        return model, "filter_l1"
    raise ValueError(f"Unknown method {method!r}; expected one of {CIFAR_METHODS}.")


def _per_target(cfg: CifarCompressionConfig, method: str) -> bool:
    """Whether ``method`` trains once per FLOPs target (spred with its controller) rather than once per seed."""
    return method.startswith("spred") and cfg.spred_controller


def run_method(job: _Job, method: str, dense: nn.Module, target: float) -> tuple[dict, nn.Module]:
    """One (method, FLOPs target) from the dense model: train, cut to the target, fine-tune, prune.

    Returns the row (accuracy, parameters, FLOPs, wall time; the latencies are measured
    later for all models of the seed at once, :func:`_time_models`) and the pruned model.
    """
    from spred.compress import prune_channels

    cfg, start = job.cfg, time.perf_counter()
    if method in job.trained:  # slimming, group_reg, l1_filter train once per seed; each target is charged the time
        model, kind, seconds = job.trained[method]
        model, start = copy.deepcopy(model), start - seconds
    else:
        model, kind = _sparse_train(job, method, dense, target)
        if not _per_target(cfg, method):
            job.trained[method] = (copy.deepcopy(model), kind, time.perf_counter() - start)
    model = model.to(cfg.device)
    dense_flops = bs.live_macs(dense, job.example)
    own = dense_flops / max(bs.live_macs(model, job.example), 1)  # what the training alone removed (spred: its exact zeros)
    zeroed, masks = bs.zero_to_flops(model, job.example, kind, dense_flops / target)
    acc_before = job.accuracy(zeroed)
    if cfg.finetune_epochs:
        job.fit(zeroed, cfg.finetune_epochs, lr=cfg.finetune_lr, mask=masks, scheduler="cosine")
    seconds = time.perf_counter() - start
    pruned, plan = prune_channels(zeroed.eval(), job.example)
    row = _row(job, method, target, pruned, _flops(job, dense), job.accuracy(pruned), acc_before, seconds)
    row.update(flop_ratio_before_cut=own, zero_channels_kept=len(plan.kept_nonzero_constant) + len(plan.kept_last))
    return row, pruned


def _flops(job: _Job, model: nn.Module) -> int:
    from spred.compress import count_flops

    return count_flops(model.eval(), job.example[:1])


def _row(job: _Job, method: str, target: float, model: nn.Module, dense_flops: float, acc: float, acc_before: float,
         seconds: float) -> dict:  # fmt: skip
    """The CSV row of a finished model (latencies and speed-ups come later, :func:`_time_models`)."""
    from spred.compress import count_parameters

    cfg, flops = job.cfg, _flops(job, model)
    return {"model": cfg.model, "method": method, "seed": job.seed, "target_flop_ratio": target, "test_acc": acc,
            "test_acc_before_finetune": acc_before, "params": count_parameters(model), "flops": flops,
            "flop_ratio": dense_flops / flops, "flop_ratio_before_cut": 1.0, "zero_channels_kept": 0,
            "epochs": cfg.dense_epochs + cfg.epochs + cfg.finetune_epochs, "wall_s": seconds,
            "train_size": len(job.data.X_train)}  # fmt: skip


# --------------------------------------------------------------------------- the seed, cached and resumable


def channel_groups_available() -> bool:
    """Whether :func:`spred.sparsify` takes ``groups="channels"`` (with ``example_inputs``)."""
    import inspect

    import spred

    return "example_inputs" in inspect.signature(spred.sparsify).parameters


#: Bump when the protocol of a job changes in a way the settings do not show (stale cached rows are then recomputed).
PROTOCOL = 2


def _code_fingerprint(method: str) -> str:
    """sha256 of the library sources a method's result depends on beyond the settings.

    spred's rows depend on its parametrisation, gates, optimizer groups and controller
    (``spred/nn``, ``spred/train/_optim.py``, ``spred/train/_controller.py``); the baselines on
    :mod:`spred.experiments._baselines_slimming`. A change there recomputes those rows only.
    """
    import hashlib

    root = Path(__file__).resolve().parents[1]  # the spred package
    if method.startswith("spred"):
        files = sorted((root / "nn").glob("*.py")) + [root / "train" / "_optim.py", root / "train" / "_controller.py"]
    elif method in ("pretrain", "dense"):
        files = []
    else:
        files = [Path(bs.__file__)]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


_SHARED = ("model", "dense_epochs", "train_size", "test_size", "batch_size", "lr", "device")  # the dense pre-training
_FIELDS = {"pretrain": (), "dense": (), "slimming": ("slimming_lam",), "group_reg": ("group_reg",),
           "l1_filter": (), "spred": ("lam", "threshold", "group_weight", "spred_controller")}  # fmt: skip


def _key(cfg: CifarCompressionConfig, method: str = "pretrain") -> str:
    """The settings (and library code, :func:`_code_fingerprint`) a cached result of ``method`` depends on.

    ``"pretrain"``: the dense pre-training; every other job also depends on its epochs and
    fine-tuning and on its own settings, so changing spred's lam recomputes spred's rows only.
    """
    own = _FIELDS["spred" if method.startswith("spred") else method]
    fields = _SHARED + (() if method == "pretrain" else ("epochs", "finetune_epochs", "finetune_lr")) + own
    keep = {k: getattr(cfg, k) for k in fields}
    if method not in ("pretrain", "dense") and cfg.sparse_lr is not None:  # None (= lr) keeps the keys cached before it
        keep["sparse_lr"] = cfg.sparse_lr
    if method.startswith("spred") and cfg.spred_gate_lr is not None:  # likewise
        keep["spred_gate_lr"] = cfg.spred_gate_lr
    keep.update(method=method, protocol=PROTOCOL, code=_code_fingerprint(method))
    return json.dumps(keep, sort_keys=True, default=str)


def _dense(job: _Job, cache: Path) -> nn.Module:
    """The dense model after ``dense_epochs`` (trained once per seed, then read from ``cache``)."""
    cfg = job.cfg
    path = cache / f"dense_{cfg.model}_seed{job.seed}.pt"
    model = build_cifar_model(cfg.model, job.seed)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == _key(cfg):
            model.load_state_dict(saved["state"])
            return model.to(cfg.device)
    with _common.torch_seed(job.seed):
        job.fit(model, cfg.dense_epochs, scheduler="cosine")
    tmp = path.with_suffix(".tmp")
    torch.save({"key": _key(cfg), "state": model.state_dict()}, tmp)
    tmp.replace(path)
    return model


def _job_name(cfg: CifarCompressionConfig, method: str, target: float, seed: int) -> str:
    return f"{cfg.model}_dense_seed{seed}" if method == "dense" else f"{cfg.model}_{method}_x{target:g}_seed{seed}"


def _cached_row(cache: Path, name: str, cfg: CifarCompressionConfig, compute, method: str) -> dict:
    """The row of job ``name``: read from ``cache`` when its key matches, else ``compute()`` -> (row, model), both saved."""
    path, key = cache / f"{name}.json", _key(cfg, method)
    if path.exists() and (cache / f"{name}.model.pt").exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["row"]
    row, model = compute()
    tmp = cache / f"{name}.model.tmp"
    torch.save(model.cpu().eval(), tmp)  # the whole module: pruned widths differ from the constructor's
    tmp.replace(cache / f"{name}.model.pt")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "row": row}))
    tmp.replace(path)
    return row


_SEED_STATE: dict = {}  # per process: the (config, seed) loaded last, its job and dense model


def _seed_state(cfg: CifarCompressionConfig, seed: int, cache: Path) -> tuple[_Job, nn.Module]:
    if _SEED_STATE.get("id") != (cfg, seed, cache):
        _SEED_STATE.clear()
        job = _Job(cfg, seed, load_cifar(cfg, seed))
        _SEED_STATE.update(id=(cfg, seed, cache), job=job, dense=_dense(job, cache))
    return _SEED_STATE["job"], _SEED_STATE["dense"]


def _unit_rows(args) -> list[dict]:
    """Worker entry point: the rows of some (method, target) jobs of one seed, each cached.

    A baseline's targets form one unit (their sparse training is shared); a spred target is
    a unit of its own; ``("dense", 1.0)`` is the dense model at equal epochs.
    """
    cfg, seed, cache, jobs = args
    job, dense = _seed_state(cfg, seed, cache)
    rows = []
    for method, target in jobs:
        def compute(method=method, target=target):
            with _common.torch_seed(seed):
                return _dense_row(job, dense) if method == "dense" else run_method(job, method, dense, target)

        rows.append(_cached_row(cache, _job_name(cfg, method, target, seed), cfg, compute, method))
    return rows


def _dense_row(job: _Job, dense: nn.Module) -> tuple[dict, nn.Module]:
    """The dense reference at equal epochs: ``epochs + finetune_epochs`` more from the cached dense model."""
    cfg, start = job.cfg, time.perf_counter()
    model = copy.deepcopy(dense)
    job.fit(model, cfg.epochs + cfg.finetune_epochs, scheduler="cosine")
    return _row(job, "dense", 1.0, model, _flops(job, model), job.accuracy(model), job.accuracy(model), time.perf_counter() - start), model


def _units(cfg: CifarCompressionConfig, methods: Sequence[str]) -> list[list[tuple[str, float]]]:
    """The jobs of one seed grouped into units of work, longest first (in epochs: the order the pool takes them)."""
    units = [[("dense", 1.0)]]
    for m in methods:
        targets = [(m, t) for t in cfg.flop_targets]
        units += [[j] for j in targets] if _per_target(cfg, m) else [targets]
    cost = lambda u: cfg.epochs + cfg.finetune_epochs * len(u)  # noqa: E731
    return sorted(units, key=cost, reverse=True)


def _time_models(cfg: CifarCompressionConfig, seed: int, cache: Path, rows: list[dict]) -> None:
    """Latency of every model of the seed, timed in turns in this process (after all training), into ``rows``.

    The models are timed one forward pass each in turn (:func:`spred.compress.compare_latency`),
    so their ratios hold under a changing machine load; the dense row's model is the reference.
    """
    from spred.compress import compare_latency

    names = [_job_name(cfg, r["method"], r["target_flop_ratio"], seed) for r in rows]
    models = {n: torch.load(cache / f"{n}.model.pt", map_location=cfg.device, weights_only=False).eval() for n in names}
    batch = load_cifar(dataclasses.replace(cfg, test_size=256), seed).X_test.to(cfg.device)
    for cl in (False, True):
        medians = compare_latency(models, batch, batch_sizes=(1, 256), repeats=cfg.latency_repeats, warmup=2, channels_last=cl)
        for r, n in zip(rows, names):
            for b in (1, 256):
                r[f"latency_b{b}{'_cl' if cl else ''}_ms"] = 1e3 * medians[n][b]
    ref = next(r for r in rows if r["method"] == "dense")
    for r in rows:
        for key in ("b1", "b256", "b1_cl", "b256_cl"):
            r[f"speedup_{key}"] = ref[f"latency_{key}_ms"] / r[f"latency_{key}_ms"]


def run_cifar(cfg: CifarCompressionConfig, cache: Path) -> list[dict]:
    """Every seed's dense reference and (method, target) rows; jobs already in ``cache`` are read back.

    Per seed: the dense pre-training (in this process, with its threads: ``--threads``),
    the jobs (in ``workers`` processes of one thread each when ``workers > 1``), then the
    latencies of all its models, timed in turns in this process.
    """
    cfg = check_cifar_config(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    methods = [m for m in cfg.methods if not m.startswith("spred") or channel_groups_available()]
    if len(methods) < len(cfg.methods):
        logger.warning("this spred has no channel groups (spred.sparsify(groups='channels')): the spred rows are skipped")
    units = _units(cfg, methods)
    for seed in cfg.seeds:
        _seed_state(cfg, seed, cache)  # the dense model, before any worker needs it
        if cfg.workers == 1:
            parts = [_unit_rows((cfg, seed, cache, u)) for u in units]
        else:
            import concurrent.futures as cf
            import multiprocessing

            with cf.ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                parts = list(pool.map(_unit_rows, [(cfg, seed, cache, u) for u in units]))
        order = {j: i for i, j in enumerate([("dense", 1.0)] + [(m, t) for m in methods for t in cfg.flop_targets])}
        seed_rows = sorted((r for p in parts for r in p), key=lambda r: order[(r["method"], r["target_flop_ratio"])])
        _time_models(cfg, seed, cache, seed_rows)
        rows += seed_rows
    _SEED_STATE.clear()
    return rows


# --------------------------------------------------------------------------- summary


def summarise_cifar(rows: Sequence[Mapping]) -> list[dict]:
    """Mean (and std) of accuracy, FLOPs and speed-ups over seeds per (method, target)."""
    import statistics

    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["target_flop_ratio"])), []).append(r)
    out = []
    for (method, target), rs in groups.items():
        acc = [float(r["test_acc"]) for r in rs]
        mean = lambda k: statistics.mean(float(r[k]) for r in rs)  # noqa: E731
        out.append({"method": method, "target_flop_ratio": target, "n_seeds": len(rs), "test_acc": statistics.mean(acc),
                    "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "flop_ratio": mean("flop_ratio"),
                    "params": mean("params"), "speedup_b1": mean("speedup_b1"), "speedup_b256": mean("speedup_b256"),
                    "speedup_b256_cl": mean("speedup_b256_cl"), "flop_ratio_before_cut": mean("flop_ratio_before_cut"),
                    "epochs": rs[0]["epochs"], "wall_s": mean("wall_s")})  # fmt: skip
    return sorted(out, key=lambda r: (r["target_flop_ratio"], r["method"]))


def within_one_point(summary: Sequence[Mapping]) -> dict[str, float]:
    """Per method, the largest measured FLOPs reduction whose mean accuracy is within 1 point of the dense one."""
    dense = [r["test_acc"] for r in summary if r["method"] == "dense"]
    if not dense:
        return {}
    best: dict[str, float] = {}
    for r in summary:
        if r["method"] != "dense" and r["test_acc"] >= dense[0] - 0.01:
            best[r["method"]] = max(best.get(r["method"], 1.0), float(r["flop_ratio"]))
    return best


def cifar_table(summary: Sequence[Mapping]) -> str:
    """Markdown: accuracy (mean ± std), FLOPs reduction, parameters and speed-ups per method and target."""
    cols = [("method", "method"), ("target", lambda r: f"{r['target_flop_ratio']:g}x"),
            ("test acc %", lambda r: f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}"),
            ("FLOPs red.", lambda r: f"{r['flop_ratio']:.2f}x"), ("before cut", lambda r: f"{r['flop_ratio_before_cut']:.2f}x"),
            ("params", lambda r: f"{r['params']:,.0f}"),
            ("speed-up b1", lambda r: f"{r['speedup_b1']:.2f}x"), ("b256", lambda r: f"{r['speedup_b256']:.2f}x"),
            ("b256 CL", lambda r: f"{r['speedup_b256_cl']:.2f}x"), ("epochs", "epochs"),
            ("wall s", lambda r: f"{r['wall_s']:.0f}"), ("seeds", "n_seeds")]  # fmt: skip
    return _common.markdown_table(summary, cols)


def plot_cifar(summary: Sequence[Mapping], path: Path) -> None:
    """Test accuracy against FLOPs reduction, one line per method (the dense model dashed)."""
    _common.import_matplotlib()
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in summary):
        rs = sorted((r for r in summary if r["method"] == method), key=lambda r: r["flop_ratio"])
        if method == "dense":
            ax.axhline(100 * rs[0]["test_acc"], ls="--", c="k", label="dense")
        else:
            ax.errorbar([r["flop_ratio"] for r in rs], [100 * r["test_acc"] for r in rs],
                        yerr=[100 * r["test_acc_std"] for r in rs], marker="o", label=method)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set(xlabel="FLOPs reduction (x)", ylabel="test accuracy (%)", title="CIFAR-10 (JPEG), structured")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_cifar(cfg: CifarCompressionConfig, summary: Sequence[Mapping], seconds: float) -> str:
    lines = [f"CIFAR-10 (JPEG) {cfg.model}, structured; {cfg.dense_epochs} dense + {cfg.epochs} sparse + "
             f"{cfg.finetune_epochs} fine-tune epochs, train size {cfg.train_size or 50000}, seeds {list(cfg.seeds)}:", "",
             cifar_table(summary), ""]  # fmt: skip
    best = within_one_point(summary)
    if best:
        lines.append("Largest FLOPs reduction within 1 point of dense (of the targets run): "
                     + ", ".join(f"{m} {r:.2f}x" for m, r in sorted(best.items())))  # fmt: skip
    lines.append(f"Total wall time: {seconds:.0f} s.")
    return "\n".join(lines)


def run_cifar_experiment(cfg: CifarCompressionConfig, out: str | Path | None, *, plot_figure: bool = True) -> tuple[list[dict], str]:
    """Run (or resume) the experiment and write ``compression_cifar.csv``, ``..._summary.csv``, the figure and ``summary.md``."""
    cfg = check_cifar_config(cfg)
    out_path = Path("results/compression" if out is None else out)
    with _common.output_folder(out_path, "compression") as folder:
        start = time.perf_counter()
        rows = run_cifar(cfg, out_path / CACHE)
        summary = summarise_cifar(rows)
        folder.write_csv(rows, "compression_cifar.csv", CIFAR_COLUMNS)
        folder.write_csv(summary, "compression_cifar_summary.csv")
        if plot_figure:
            plot_cifar(summary, folder.file("compression_cifar.png"))
        text = report_cifar(cfg, summary, time.perf_counter() - start)
        folder.write_text("summary.md", text + "\n")
        folder.write_config(cfg, extra={"wall_seconds": time.perf_counter() - start})
    return rows, text


def is_finite_row(row: Mapping) -> bool:
    return all(math.isfinite(float(row[k])) for k in ("test_acc", "flops", "params"))
