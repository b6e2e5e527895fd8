"""``spred run optimizers``, one run: train one model, collapse, prune, time and check its KKT conditions.

:func:`_sparse_row` and :func:`_dense_row` produce one CSV row each (``CSV_COLUMNS``);
:func:`kkt_statistics` measures how close a trained model is to an L1 stationary point
with the one KKT rule (:func:`spred.nn._rules.kkt_residuals`). The study around them
is in :mod:`spred.experiments._optimizers_study`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

import spred
from spred.experiments import _common
from spred.experiments._optimizers_floor import FINETUNE_LR, FINETUNE_OPTIMIZER
from spred.nn._rules import group_norms, kkt_residuals, reduce_dims, unit_dim

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw", "adamw_decoupled", "adagrad")
SPARSITY_TYPES = ("unstructured", "structured")
KINDS = (*SPARSITY_TYPES, "dense")
# The optimizer whose dense (not sparsified) run is the baseline of each study optimizer.
DENSE_OF = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "adamw_decoupled": "adamw", "adagrad": "adagrad"}
_TORCH_NAME = {"sgd": "sgd", "adam": "adam", "adamw": "adamw", "adagrad": "adagrad"}
CSV_COLUMNS = (
    "dataset", "optimizer", "sparsity_type", "target", "seed", "lr", "lr_source", "epochs", "diverged", "threshold",
    "lam_initial", "lam_final", "weight_sparsity", "sparsity_error", "reached_target",
    "param_sparsity", "zero_channels", "n_channels", "channel_sparsity", "compression_ratio", "test_acc",
    "test_acc_before_collapse", "dense_test_acc", "train_seconds", "params_total", "params_nonzero", "params_pruned",
    "macs_dense", "macs_pruned", "latency_dense_b1", "latency_collapsed_b1", "latency_pruned_b1", "latency_dense_bmax",
    "latency_collapsed_bmax", "latency_pruned_bmax", "latency_batch", "pruned_max_abs_diff", "kkt_max", "kkt_relative",
    "lam_fit", "lam_fit_ratio", "kkt_median", "zero_violations", "n_zero_units", "n_nonzero_units", "cpu_seconds",
    "model", "finetune_epochs", "finetune_optimizer", "finetune_lr", "test_acc_finetuned", "magnitude_acc", "magnitude_acc_finetuned",
)  # fmt: skip
#: Loggers whose INFO lines (one per epoch, one per pruning call) the study silences: it logs one line per run.
QUIET_LOGGERS = ("spred.train", "spred.compress")

# --------------------------------------------------------------------------- measurements


def _last_layer(model: nn.Module, include=(nn.Linear, nn.Conv1d, nn.Conv2d)) -> str:
    """Name of the last module (in registration order) whose weight spred would sparsify: the output layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, include) and getattr(m, "weight", None) is not None]
    if not names:
        raise ValueError(f"optimizer_study found no Linear / Conv layer to sparsify in {type(model).__name__}.")
    return names[-1]


STRUCTURED_GROUPS = ("channels", "out")


def _sparsify(model: nn.Module, sparsity_type: str, lam: float, output_layer: str, *, groups: str = "channels", example_inputs=None) -> None:
    """Sparsify in place: every weight (unstructured), or structured.

    Structured ``groups="channels"``: one gate per channel group of the model's dependency
    graph (a filter with its BatchNorm scale and shift and the input slices that read it;
    the classes of the output layer are never a group); ``"out"``: one group per filter /
    neuron of every tensor but the output layer's. ``example_inputs`` (a few inputs) trace the graph.
    """
    if sparsity_type == "unstructured":
        spred.sparsify(model, lam)
    elif groups == "channels":
        spred.sparsify(model, lam, groups="channels", example_inputs=example_inputs[:2])
    else:
        spred.sparsify(model, lam, groups="out", exclude=(output_layer,))


@dataclass(frozen=True)
class _Units:
    """The penalty units of one sparsified tensor or channel group: values, gradients and their L1 / group-L1 rule.

    A channel group is its (channels, entries) matrix with ``groups="out"``; its lam is weighted per
    channel (``scale``: ``effective_lam() / lam``, the group weights; 1 for a plain tensor), so ``push / scale`` is comparable to lam.
    """

    v: torch.Tensor
    g: torch.Tensor
    lam: float
    groups: str | None
    out_dim: int
    scale: torch.Tensor | float = 1.0


def _grad_units(model: nn.Module, loss_fn, batch) -> list[_Units]:
    """Every penalty unit of ``model`` with ``v`` and ``dL/dv`` on ``batch`` (buffers restored afterwards)."""
    from spred.nn import channel_groups

    tensors = list(spred.nn.sparsified_tensors(model))
    groups = channel_groups(model)
    members = list({m.name: m for grp in groups for m in grp.members}.values())
    places = [(t.module, t.tensor_name) for t in tensors] + [(m.module, m.tensor_name) for m in members]
    inputs, targets = batch
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        with torch.enable_grad(), parametrize.cached():
            values = [getattr(module, name) for module, name in places]
            grads = torch.autograd.grad(loss_fn(model(inputs), targets), values, allow_unused=True)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    pairs = [(v.detach(), torch.zeros_like(v) if g is None else g.detach()) for v, g in zip(values, grads)]
    units = [_Units(v, g, t.spred.lam, t.spred.groups, t.spred.out_dim) for t, (v, g) in zip(tensors, pairs)]
    gated = dict(zip((m.name for m in members), pairs[len(tensors) :]))
    for grp in groups:
        gate = grp.spred
        v, g = (gate.slices({name: vg[i] for name, vg in gated.items()}) for i in (0, 1))
        units.append(_Units(v, g, gate.lam, "out", 0, gate.effective_lam() / gate.lam if gate.lam > 0 else 1.0))
    return units


def _unit_push(v: torch.Tensor, g: torch.Tensor, groups: str | None, out_dim: int) -> torch.Tensor:
    """Per penalty unit (weight, or group): ``-g . v/|v|`` (0 where ``v`` is 0), broadcastable against ``v``."""
    norms = group_norms(v, groups, out_dim)
    push = -(g * (v / torch.where(norms > 0, norms, torch.ones_like(norms))))
    keep = unit_dim(groups, out_dim)
    return push if keep is None else push.sum(dim=reduce_dims(v.dim(), keep), keepdim=True)


def kkt_statistics(model: nn.Module, loss_fn: Callable, batch, *, threshold: float) -> dict[str, float]:
    """How close a sparsified model is to an L1 (group-L1) stationary point, on one batch.

    The model is evaluated in eval mode (restored afterwards). Units are single weights
    (unstructured), groups (``groups="out"/"in"``) or the channels of channel groups (whose
    lam is weighted per channel: pushes and residuals are divided by that weight); a unit is
    zero when its norm is ``<= threshold``. With ``g = dL/dv`` and ``d = v / |v|``:

    * ``kkt_max``, ``kkt_relative``: :func:`spred.kkt_residual` at the model's lam
      (largest residual over all units; divided by lam);
    * ``lam_fit``: the median over nonzero units of ``-g . d``. At an L1 optimum every
      nonzero unit has ``g = -lam d``, so ``lam_fit = lam``; ``lam_fit_ratio = lam_fit / lam``;
    * ``kkt_median``: the median over nonzero units of ``|g + lam_fit d| / lam_fit``;
    * ``zero_violations``: the fraction of zero units with ``|g| > lam_fit``, zeros that
      the L1 problem with strength ``lam_fit`` would not have.

    Returns
    -------
    dict of str to float
        The keys above plus ``n_zero_units`` and ``n_nonzero_units``.
    """
    was_training = model.training
    model.eval()
    try:
        report = spred.kkt_residual(model, loss_fn, batch, threshold=threshold)
        items = _grad_units(model, loss_fn, batch)
    finally:
        model.train(was_training)
    lams = {u.lam for u in items}
    lam = sum(lams) / len(lams)
    units = [(u, kkt_residuals(u.v, u.g, u.lam * u.scale, groups=u.groups, out_dim=u.out_dim, threshold=threshold)[0]) for u in items]
    push = torch.cat([(_unit_push(u.v, u.g, u.groups, u.out_dim) / u.scale)[~zero] for u, zero in units])
    n_zero = sum(int(zero.sum()) for _, zero in units)
    lam_fit = float(push.median()) if push.numel() else math.nan
    if push.numel() and lam_fit > 0:
        resid, violation = [], []
        for u, zero in units:  # the one KKT rule at strength lam_fit
            _, resid_nz, resid_zero = kkt_residuals(u.v, u.g, lam_fit * u.scale, groups=u.groups, out_dim=u.out_dim, threshold=threshold)
            resid.append((resid_nz / (lam_fit * u.scale))[~zero])
            violation.append(resid_zero[zero] > 0)  # |g| > lam_fit
        kkt_median = float(torch.cat(resid).median())
        violations = float(torch.cat(violation).float().mean()) if n_zero else 0.0
    else:
        kkt_median, violations = math.nan, math.nan
    return {
        "kkt_max": report.max, "kkt_relative": report.relative, "lam_fit": lam_fit,
        "lam_fit_ratio": lam_fit / lam if lam > 0 else math.nan, "kkt_median": kkt_median, "zero_violations": violations,
        "n_zero_units": n_zero, "n_nonzero_units": int(push.numel()),
    }  # fmt: skip


def _channel_counts(report: spred.SparsityReport, output_layer: str) -> tuple[int, int]:
    """(zero, total) channels: of the channel groups, or output channels / neurons over every weight with ndim >= 2 except the output layer's."""
    if report.groups:
        return sum(g.zero for g in report.groups), sum(g.n for g in report.groups)
    rows = [r for r in report.rows if r.n_groups and r.name != f"{output_layer}.weight" and r.groups != "in"]
    return sum(r.zero_groups for r in rows), sum(r.n_groups for r in rows)


def _latencies(models: Mapping[str, nn.Module], example_inputs, batch_sizes, repeats) -> dict[str, dict[int, float]]:
    from spred.compress import compare_latency

    return compare_latency(dict(models), example_inputs, batch_sizes=tuple(batch_sizes), repeats=repeats, warmup=3)


def _prune(model: nn.Module, example_inputs):
    """``(pruned, plan)``, or ``(None, None)`` without Torch-Pruning."""
    from spred.compress import prune_channels

    try:
        with _quiet_logs():
            return prune_channels(model, example_inputs)
    except ImportError as exc:
        logger.warning("no physical pruning: %s", exc)
        return None, None


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Setup:
    """What every run of one study shares."""

    model_factory: Callable[[], nn.Module]
    train_data: Any
    test_data: Any
    kkt_batch: tuple[torch.Tensor, torch.Tensor]
    example_inputs: Any
    epochs: int
    batch_size: int
    threshold: float
    momentum: float
    loss_fn: Callable
    latency_batch_sizes: tuple[int, ...]
    latency_repeats: int
    tolerance: float
    device: Any
    dataset: str
    model: str = ""
    finetune_epochs: int = 0
    finetune_optimizer: str = FINETUNE_OPTIMIZER  # the fine-tune of every sparse run and its floor (see _optimizers_floor)
    finetune_lr: float = FINETUNE_LR
    structured_groups: str = "channels"  # "channels" (channel groups across layers) or "out" (per tensor)
    lam_update_every: int = 10  # optimizer steps between two lam updates of the target-sparsity controller


def _sparsify_for(setup: _Setup, model: nn.Module, sparsity_type: str, lam: float) -> str:
    """Sparsify ``model`` in place as the study does (:func:`_sparsify` with the setup's groups); returns its output layer."""
    output_layer = _last_layer(model)
    inputs = setup.example_inputs if setup.example_inputs is not None else _first_inputs(setup.train_data)
    _sparsify(model, sparsity_type, lam, output_layer, groups=setup.structured_groups, example_inputs=inputs)
    return output_layer


def _first_inputs(data) -> torch.Tensor:
    """Two inputs of ``(X, y)`` tensors or of a DataLoader's first batch (to trace the model's graph)."""
    x = data[0] if isinstance(data, (tuple, list)) else next(iter(data))[0]
    return x[:2].cpu()


def _controller(setup: _Setup, target: float):
    """The study's target-sparsity controller for one run."""
    from spred.train import TargetSparsity

    return TargetSparsity(target, threshold=setup.threshold, update_every=setup.lam_update_every)


def _fit_optimizer(name: str, model: nn.Module, lr: float):
    """What :func:`spred.train.fit` gets as ``optimizer``: a name, or AdamW with decoupled decay on the factors."""
    if name != "adamw_decoupled":
        return _TORCH_NAME[name]
    if not spred.is_sparsified(model):
        return "adamw"
    return torch.optim.AdamW(spred.param_groups(model, 0.0), lr=lr)  # decoupled decay lam on u and w: deliberately not L1


def _train(setup: _Setup, model: nn.Module, optimizer: str, lr: float, seed: int, target, threshold: float, val_data=None):
    from spred.train import fit

    opt = _fit_optimizer(optimizer, model, lr)
    with warnings.catch_warnings(), _quiet_logs():
        if optimizer == "adamw_decoupled":  # the point of this variant: silence the warning that says it is not L1
            warnings.filterwarnings("ignore", message=".*decoupled.*", category=UserWarning)
        return fit(
            model, setup.train_data, epochs=setup.epochs, optimizer=opt, lr=lr, momentum=setup.momentum, batch_size=setup.batch_size,
            loss_fn=setup.loss_fn, target_sparsity=target, threshold=threshold, seed=seed, device=setup.device, progress=False,
            val_data=val_data,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_logs():
    """Raise ``QUIET_LOGGERS`` to WARNING for the duration (their INFO lines are per epoch / per call)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _evaluate(setup: _Setup, model: nn.Module, data) -> float:
    from spred.train import evaluate

    acc = evaluate(model, data, setup.loss_fn)["acc"]  # where the model is (the CPU after training)
    return math.nan if acc is None else float(acc)


def _dense_row(setup: _Setup, optimizer: str, lr: float, lr_source: str, seed: int) -> tuple[dict, nn.Module]:
    """Train the plain model: its row and the trained model (the magnitude floor of the sparse runs starts from it)."""
    with _common.torch_seed(seed):
        model = setup.model_factory()
    result = _train(setup, model, optimizer, lr, seed, None, setup.threshold)
    model.cpu()
    acc = _evaluate(setup, model, setup.test_data)
    lat = _latencies({"dense": model}, setup.example_inputs, setup.latency_batch_sizes, setup.latency_repeats)["dense"]
    from spred.compress import count_flops, count_parameters

    b_lo, b_hi = min(setup.latency_batch_sizes), max(setup.latency_batch_sizes)
    n_params = count_parameters(model)
    row = {c: math.nan for c in CSV_COLUMNS}
    row.update({
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": "dense", "target": 0.0, "seed": seed, "lr": lr,
        "lr_source": lr_source, "epochs": setup.epochs, "diverged": False, "threshold": setup.threshold, "weight_sparsity": 0.0, "reached_target": True,
        "test_acc": acc, "test_acc_before_collapse": acc, "dense_test_acc": acc, "train_seconds": result.wall_time_s,
        "params_total": n_params, "params_nonzero": count_parameters(model, nonzero=True), "macs_dense": count_flops(model, setup.example_inputs[:1]),
        "latency_dense_b1": lat[b_lo], "latency_dense_bmax": lat[b_hi], "latency_batch": b_hi, "model": setup.model, "finetune_epochs": 0,
    })  # fmt: skip
    return row, model


def _sparse_row(setup: _Setup, optimizer: str, sparsity_type: str, target: float, lr: float, lr_source: str, seed: int, initial_lam: float,
                dense_trained: nn.Module | None = None) -> dict:  # fmt: skip
    """Train one sparsified model to ``target`` and measure it: one row of the study.

    ``dense_trained``: the dense model of the same optimizer and seed, for the magnitude floor.
    """
    from spred.compress import count_flops, count_parameters
    from spred.experiments._optimizers_floor import finetune_and_floor

    with _common.torch_seed(seed):
        model = setup.model_factory()
    dense = copy.deepcopy(model)
    output_layer = _sparsify_for(setup, model, sparsity_type, initial_lam)
    result = _train(setup, model, optimizer, lr, seed, _controller(setup, target), setup.threshold)
    model.cpu()
    acc_before = _evaluate(setup, model, setup.test_data)
    report = spred.sparsity_report(model, threshold=setup.threshold)
    kkt = kkt_statistics(model, setup.loss_fn, setup.kkt_batch, threshold=setup.threshold)
    lam_final = statistics.fmean(spred.get_lam(model).values())
    collapsed = spred.collapse(model, threshold=setup.threshold)
    acc = _evaluate(setup, collapsed, setup.test_data)
    zero_ch, n_ch = _channel_counts(report, output_layer)
    models = {"dense": dense, "collapsed": collapsed}
    pruned = plan = None
    if sparsity_type == "structured":
        pruned, plan = _prune(collapsed, setup.example_inputs)
        if pruned is not None:
            models["pruned"] = pruned
    lat = _latencies(models, setup.example_inputs, setup.latency_batch_sizes, setup.latency_repeats)
    b_lo, b_hi = min(setup.latency_batch_sizes), max(setup.latency_batch_sizes)
    one = setup.example_inputs[:1]
    reached = report.sparsified_sparsity
    row = {
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": sparsity_type, "target": target, "seed": seed,
        "lr": lr, "lr_source": lr_source, "epochs": setup.epochs, "diverged": False, "threshold": setup.threshold,
        "lam_initial": initial_lam, "lam_final": lam_final, "weight_sparsity": reached, "sparsity_error": reached - target,
        "reached_target": bool(abs(reached - target) <= setup.tolerance), "param_sparsity": report.sparsity,
        "zero_channels": zero_ch, "n_channels": n_ch, "channel_sparsity": zero_ch / n_ch if n_ch else math.nan,
        "compression_ratio": report.compression_ratio, "test_acc": acc, "test_acc_before_collapse": acc_before,
        "dense_test_acc": math.nan, "train_seconds": result.wall_time_s, "params_total": count_parameters(collapsed),
        "params_nonzero": count_parameters(collapsed, nonzero=True),
        "params_pruned": count_parameters(pruned) if pruned is not None else math.nan,
        "macs_dense": count_flops(collapsed, one), "macs_pruned": count_flops(pruned, one) if pruned is not None else math.nan,
        "latency_dense_b1": lat["dense"][b_lo], "latency_collapsed_b1": lat["collapsed"][b_lo],
        "latency_pruned_b1": lat["pruned"][b_lo] if pruned is not None else math.nan,
        "latency_dense_bmax": lat["dense"][b_hi], "latency_collapsed_bmax": lat["collapsed"][b_hi],
        "latency_pruned_bmax": lat["pruned"][b_hi] if pruned is not None else math.nan, "latency_batch": b_hi,
        "pruned_max_abs_diff": plan.max_abs_diff if plan is not None else math.nan, **kkt,
        **finetune_and_floor(setup, seed, collapsed, dense_trained, reached, sparsity_type == "structured", output_layer),
    }  # fmt: skip
    if not row["reached_target"]:
        logger.warning(
            "%s %s %s target %.0f%% seed %d: reached %.1f%% of zeros, not within %.0f points of the target (did not converge there)",
            setup.dataset, optimizer, sparsity_type, 100 * target, seed, 100 * reached, 100 * setup.tolerance,
        )
    return row


def _diverged_row(setup: _Setup, optimizer: str, kind: str, target, lr: float, source: str, seed: int, initial_lam: float) -> dict:
    row = {c: math.nan for c in CSV_COLUMNS}
    row.update({
        "dataset": setup.dataset, "optimizer": optimizer, "sparsity_type": kind, "target": 0.0 if target is None else target, "seed": seed,
        "lr": lr, "lr_source": source, "epochs": setup.epochs, "diverged": True, "threshold": setup.threshold,
        "lam_initial": math.nan if kind == "dense" else initial_lam, "reached_target": False, "model": setup.model,
        "finetune_epochs": setup.finetune_epochs if kind != "dense" else 0,
    })  # fmt: skip
    return row


def _attach_dense(rows: list[dict]) -> None:
    """Fill ``dense_test_acc`` of every sparse row from the dense run of its optimizer and seed."""
    dense = {(r["dataset"], r["optimizer"], r["seed"]): r["test_acc"] for r in rows if r["sparsity_type"] == "dense"}
    for r in rows:
        if r["sparsity_type"] != "dense":
            r["dense_test_acc"] = dense.get((r["dataset"], DENSE_OF[r["optimizer"]], r["seed"]), math.nan)

