"""``spred run optimizers``: one run traced epoch by epoch (lam, zeros, accuracy, Adagrad's step sizes).

:func:`trace_run` is the measurement behind the two explanations in docs/optimizers.md
(the accuracy lost at 20% sparsity, Adagrad at 80%): it trains one sparsified model as
the study does and records after every epoch the controller's lam, the fraction of
zeros, the test accuracy of the model and of its collapsed copy, the mean ``|v|`` of the
nonzero weights (the L1 shrinkage), and for Adagrad the median effective step size
``lr / sqrt(accumulated squared gradients)`` of the factors. After the last epoch it adds
the accuracy after the study's masked fine-tune.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable

import torch
from torch import nn

import spred
from spred.experiments import _common
from spred.experiments._optimizers_floor import masked_finetune
from spred.experiments._optimizers_runs import _evaluate, _fit_optimizer, _quiet_logs, _Setup, _sparsify_for

__all__ = ["TRACE_COLUMNS", "plot_trace", "trace_run"]

TRACE_COLUMNS = ("optimizer", "sparsity_type", "target", "lr", "seed", "epoch", "lam", "zeros", "acc", "acc_collapsed", "mean_abs_nonzero",
                 "adagrad_step", "acc_finetuned")  # fmt: skip


def _adagrad_step(optimizer: torch.optim.Optimizer, params: set[int]) -> float:
    """Median over the spred factors of ``lr / (sqrt(sum of squared gradients) + eps)`` (NaN for other optimizers)."""
    if not isinstance(optimizer, torch.optim.Adagrad):
        return math.nan
    steps = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in params and "sum" in optimizer.state.get(p, {}):
                steps.append((group["lr"] / (optimizer.state[p]["sum"].sqrt() + group["eps"])).flatten())
    return float(torch.cat(steps).median()) if steps else math.nan


def _mean_abs_nonzero(model: nn.Module, threshold: float) -> float:
    values = [getattr(t.module, t.tensor_name).detach().abs().flatten() for t in spred.nn.sparsified_tensors(model)]
    v = torch.cat(values)
    kept = v[v > threshold]
    return float(kept.mean()) if kept.numel() else math.nan


def trace_run(model_factory: Callable[[], nn.Module], train_data, test_data, *, optimizer: str, lr: float, target: float, seed: int = 0,
              epochs: int = 8, sparsity_type: str = "unstructured", initial_lam: float = 1e-5, threshold: float = 1e-3, batch_size: int = 64,
              momentum: float = 0.9, finetune_epochs: int = 2, finetune_optimizer: str | None = None,
              finetune_lr: float | None = None) -> list[dict]:  # fmt: skip
    """Train one sparsified model as :func:`optimizer_study` does and return one row per epoch (``TRACE_COLUMNS``).

    The last row also has ``acc_finetuned``: the collapsed model after ``finetune_epochs``
    of masked fine-tuning by ``finetune_optimizer`` (default: the run's own, plain AdamW for
    decoupled AdamW) at ``finetune_lr`` (default ``lr``), without the study's rescale to a
    dense model's norms (no dense model is trained here). The study itself fine-tunes every
    run with one recipe (``_optimizers_floor.FINETUNE_OPTIMIZER`` at ``FINETUNE_LR``).
    """
    loss_fn = torch.nn.functional.cross_entropy
    setup = _Setup(model_factory, train_data, test_data, None, None, epochs, batch_size, threshold, momentum, loss_fn, (1,), 1, 0.02, None, "trace")
    with _common.torch_seed(seed):
        model = model_factory()
    _sparsify_for(setup, model, sparsity_type, initial_lam)
    factors = {id(p) for name, p in model.named_parameters() if ".parametrizations." in name}  # the factors u, w
    rows: list[dict] = []

    def record(state) -> None:
        was = state.model.training
        plain = spred.collapse(copy.deepcopy(state.model).cpu(), threshold=threshold)
        lams = list(spred.get_lam(state.model).values())
        rows.append({
            "optimizer": optimizer, "sparsity_type": sparsity_type, "target": target, "lr": lr, "seed": seed, "epoch": state.epoch,
            "lam": statistics.fmean(lams), "zeros": state.history[-1]["sparsity"], "acc": state.history[-1]["val_acc"],
            "acc_collapsed": _evaluate(setup, plain, test_data), "mean_abs_nonzero": _mean_abs_nonzero(state.model, threshold),
            "adagrad_step": _adagrad_step(state.optimizer, factors), "acc_finetuned": math.nan,
        })  # fmt: skip
        state.model.train(was)

    from spred.train import TargetSparsity, fit

    with _quiet_logs():
        fit(model, train_data, epochs=epochs, optimizer=_fit_optimizer(optimizer, model, lr), lr=lr, momentum=momentum, batch_size=batch_size,
            loss_fn=loss_fn, target_sparsity=TargetSparsity(target, threshold=threshold), threshold=threshold, seed=seed, progress=False,
            val_data=test_data, callbacks=[record])  # fmt: skip
    collapsed = spred.collapse(model.cpu(), threshold=threshold)
    own = "adamw" if optimizer == "adamw_decoupled" else optimizer
    tuned = masked_finetune(collapsed, train_data, optimizer=finetune_optimizer or own, lr=finetune_lr or lr, epochs=finetune_epochs, seed=seed,
                            batch_size=batch_size, momentum=momentum, loss_fn=loss_fn)  # fmt: skip
    rows[-1]["acc_finetuned"] = _evaluate(setup, tuned, test_data)
    return rows


def plot_trace(rows, path):
    """lam (log scale), zeros and test accuracy of the collapsed model against the epoch, one line per traced run.

    The accuracy panel marks the accuracy after the masked fine-tune at the last epoch (open symbol).
    """
    from pathlib import Path

    _common.import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_lam, ax_zero, ax_acc = fig.subplots(1, 3)
    runs: dict[tuple, list] = {}
    for r in rows:
        runs.setdefault((r["optimizer"], r["sparsity_type"], r["target"], r["lr"], r["seed"]), []).append(r)
    for (opt, kind, target, lr, _), rs in runs.items():
        rs = sorted(rs, key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in rs]
        name = f"{opt} lr {lr:g}, {kind} {100 * target:.0f}%"
        (line,) = ax_lam.semilogy(epochs, [r["lam"] for r in rs], marker="o", ms=3, label=name)
        ax_zero.plot(epochs, [100 * r["zeros"] for r in rs], marker="o", ms=3, color=line.get_color())
        ax_acc.plot(epochs, [100 * r["acc_collapsed"] for r in rs], marker="o", ms=3, color=line.get_color())
        if math.isfinite(rs[-1]["acc_finetuned"]):
            ax_acc.plot([epochs[-1] + 0.3], [100 * rs[-1]["acc_finetuned"]], marker="o", mfc="none", ms=7, color=line.get_color())
    ax_lam.set(xlabel="epoch", ylabel="lam (controller)", title="(a) lam")
    ax_zero.set(xlabel="epoch", ylabel="weights zero (%)", title="(b) zeros")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy, collapsed (%)", title="(c) accuracy (open: after the masked fine-tune)")
    ax_lam.legend(fontsize=7)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
