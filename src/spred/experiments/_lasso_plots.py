"""The figures of ``spred run lasso``: the Figure 3 analogue and the learning-rate sweep.

Both are drawn from the tidy rows (``lasso.csv``, ``lasso_coefs.csv``) and the config,
so saved results can be redrawn: ``plot_main(rows, coef_rows, cfg, path)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spred.experiments import _common

if TYPE_CHECKING:
    from spred.experiments.lasso import LassoConfig

__all__ = ["METHOD_LABELS", "plot_lr_sweep", "plot_main"]

METHOD_LABELS = {"spred": "spred", "l1": "L1 in loss", "closed_form": "closed form"}
_COLORS = {("spred", "sgd"): "tab:blue", ("spred", "adam"): "tab:orange", ("l1", "sgd"): "tab:red", ("l1", "adam"): "tab:purple"}
_MARKERS = {("spred", "sgd"): "o", ("spred", "adam"): "x", ("l1", "sgd"): "s", ("l1", "adam"): "^"}


def _select(rows, method, optimizer=None, lr=None):
    return [
        r for r in rows
        if r["method"] == method and (optimizer is None or r["optimizer"] == optimizer) and (lr is None or math.isclose(r["lr"], lr))
    ]  # fmt: skip


def _by_alpha(rows, value: Callable[[Mapping], float]):
    """alphas, median, min and max over seeds of ``value(row)`` (NaN where every seed is NaN)."""
    alphas = sorted({r["alpha"] for r in rows})
    med, lo, hi = [], [], []
    for a in alphas:
        vals = np.array([value(r) for r in rows if r["alpha"] == a], dtype=float)
        vals = vals[np.isfinite(vals)]
        med.append(np.median(vals) if vals.size else np.nan)
        lo.append(vals.min() if vals.size else np.nan)
        hi.append(vals.max() if vals.size else np.nan)
    return np.array(alphas), np.array(med), np.array(lo), np.array(hi)


def _label(method: str, optimizer: str, lr: float | None = None) -> str:
    base = f"{METHOD_LABELS[method]}, {'SGD' if optimizer == 'sgd' else 'Adam'}"
    return base if lr is None else f"{base}, lr={lr:g}"


def _underflow_budget(dtype: str) -> float:
    """``lr * margin * steps`` after which an SGD-pruned weight is an exact zero (|v| below the smallest subnormal)."""
    tiny = 4.9e-324 if dtype == "float64" else 1.4e-45
    return 0.5 * (math.log(0.1) - math.log(tiny))  # |v| ~ 0.1 * exp(-2 lr m t)


def _no_minor_labels(*axes) -> None:
    from matplotlib.ticker import NullFormatter

    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_main(rows: Sequence[Mapping], coef_rows: Sequence[Mapping], cfg: LassoConfig, path: str | Path) -> Path:
    """The Figure 3 analogue at the main learning rates.

    (a) coefficients of the first seed against alpha: closed form as lines, spred as
    markers; (b) number of zero coefficients (median over seeds): closed form, exact
    zeros (solid) and zeros at ``threshold`` (dashed); (c) max error to the closed form.
    """
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 5.4))
    fig.subplots_adjust(left=0.045, right=0.99, bottom=0.14, top=0.87, wspace=0.2)
    ax_coef, ax_zero, ax_err = fig.subplots(1, 3)
    seed = cfg.seeds[0]
    # (a) coefficient paths
    closed = [r for r in coef_rows if r["method"] == "closed_form"]
    paths: dict[int, list] = {}
    for r in closed:
        paths.setdefault(r["feature"], []).append((r["alpha"], r["coef"], r["true_coef"] != 0))
    for pts in paths.values():
        pts.sort()
        ax_coef.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color="black" if pts[0][2] else "0.65", lw=1.0, zorder=1)
    ax_coef.plot([], [], color="black", lw=1.0, label="closed form (grey: true zeros)")
    if "spred" in cfg.methods:
        for opt in cfg.optimizers:
            lr = cfg.main_lrs[opt]
            pts = [r for r in coef_rows if r["method"] == "spred" and r["optimizer"] == opt and math.isclose(r["lr"], lr)]
            color = _COLORS[("spred", opt)]
            style = {"marker": "o", "s": 26, "facecolors": "none", "edgecolors": color} if opt == "sgd" else {"marker": "x", "s": 16, "color": color}
            ax_coef.scatter([r["alpha"] for r in pts], [r["coef"] for r in pts], label=_label("spred", opt, lr), zorder=2, **style)
    ax_coef.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax_coef.set(xscale="log", xlabel="alpha", ylabel="coefficient", title=f"(a) Lasso path (seed {seed})")
    ax_coef.legend(loc="upper right", fontsize=8)
    # (b) zeros
    a, med, _, _ = _by_alpha(_select(rows, "closed_form"), lambda r: r["n_zero_true"])
    ax_zero.plot(a, med, color="black", lw=3.0, alpha=0.8, label="closed form", zorder=1)
    for method in cfg.methods:
        for opt in cfg.optimizers:
            sel = _select(rows, method, opt, cfg.main_lrs[opt])
            color, marker = _COLORS[(method, opt)], _MARKERS[(method, opt)]
            a, med, _, _ = _by_alpha(sel, lambda r: r["n_zero"] if not r["diverged"] else np.nan)
            ax_zero.plot(a, med, color=color, marker=marker, lw=1.2, ms=5, label=_label(method, opt, cfg.main_lrs[opt]))
            a, med, _, _ = _by_alpha(sel, lambda r: r["n_zero_thr"] if not r["diverged"] else np.nan)
            ax_zero.plot(a, med, color=color, ls="--", lw=1.2)
    ax_zero.plot([], [], color="0.3", lw=1.2, label="solid: exact zeros")
    ax_zero.plot([], [], color="0.3", ls="--", lw=1.2, label=f"dashed: |v| <= {cfg.threshold:g}")
    ax_zero.set(xscale="log", ylabel=f"zero coefficients of {cfg.n_features} (median over seeds)",
                xlabel=f"alpha\n(SGD: a pruned weight is an exact zero once lr x margin x steps > ~{_underflow_budget(cfg.dtype):.0f})",
                title=f"(b) sparsity after {cfg.n_steps} steps ({cfg.dtype})")  # fmt: skip
    ax_zero.legend(loc="center right", fontsize=7.5)
    # (c) error
    for method in cfg.methods:
        for opt in cfg.optimizers:
            sel = _select(rows, method, opt, cfg.main_lrs[opt])
            a, med, lo, hi = _by_alpha(sel, lambda r: r["error"])
            color = _COLORS[(method, opt)]
            ax_err.plot(a, np.maximum(med, 1e-17), color=color, marker=_MARKERS[(method, opt)], ms=5, label=_label(method, opt, cfg.main_lrs[opt]))
            ax_err.fill_between(a, np.maximum(lo, 1e-17), np.maximum(hi, 1e-17), color=color, alpha=0.15, lw=0)
    ax_err.set(xscale="log", yscale="log", xlabel="alpha", ylabel="max |v - v*|  (median; band: min-max over seeds)",
               title="(c) distance to the closed form")  # fmt: skip
    ax_err.legend(loc="center right", fontsize=8)
    _no_minor_labels(ax_coef, ax_zero, ax_err)
    fig.suptitle(
        f"spred vs. the closed-form Lasso: orthogonal design, n={cfg.n_samples}, p={cfg.n_features}, "
        f"{len(cfg.seeds)} seed(s), {cfg.n_steps} full-batch steps",
        fontsize=12,
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_lr_sweep(rows: Sequence[Mapping], cfg: LassoConfig, path: str | Path) -> Path:
    """Every learning rate: error (top) and zeros (bottom) against alpha, one column per method and optimizer.

    Diverged runs are left out of the curves and counted on the panel.
    """
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    combos = [(m, o) for m in cfg.methods for o in cfg.optimizers]
    fig = Figure(figsize=(4.2 * len(combos), 7.6))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.07, top=0.88, wspace=0.25, hspace=0.22)
    axes = np.asarray(fig.subplots(2, len(combos), squeeze=False))
    palette = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    colors = dict(zip(sorted(cfg.lrs, reverse=True), palette * 4))
    a_true, n_true, _, _ = _by_alpha(_select(rows, "closed_form"), lambda r: r["n_zero_true"])
    for col, (method, opt) in enumerate(combos):
        ax_err, ax_zero = axes[0, col], axes[1, col]
        ax_zero.plot(a_true, n_true, color="black", lw=3.0, alpha=0.8, zorder=1)
        notes = []
        for lr in cfg.lrs:
            sel = _select(rows, method, opt, lr)
            n_div = sum(r["diverged"] for r in sel)
            if n_div:
                notes.append(f"lr={lr:g}: {n_div}/{len(sel)} diverged")
            a, med, lo, hi = _by_alpha(sel, lambda r: r["error"])
            ax_err.plot(a, np.maximum(med, 1e-17), color=colors[lr], marker="o", ms=3, label=f"lr={lr:g}")
            ax_err.fill_between(a, np.maximum(lo, 1e-17), np.maximum(hi, 1e-17), color=colors[lr], alpha=0.12, lw=0)
            a, med, _, _ = _by_alpha(sel, lambda r: r["n_zero"] if not r["diverged"] else np.nan)
            ax_zero.plot(a, med, color=colors[lr], marker="o", ms=3)
            a, med, _, _ = _by_alpha(sel, lambda r: r["n_zero_thr"] if not r["diverged"] else np.nan)
            ax_zero.plot(a, med, color=colors[lr], ls="--", lw=1.0)
        if notes:
            ax_err.text(0.02, 0.02, "\n".join(notes), transform=ax_err.transAxes, fontsize=7.5, va="bottom", color="0.2")
        ax_err.set(xscale="log", yscale="log", title=_label(method, opt))
        ax_zero.set(xscale="log", xlabel="alpha")
    _no_minor_labels(*axes.flat)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[lr], marker="o", ms=3, label=f"lr={lr:g}") for lr in cfg.lrs]
    handles += [
        Line2D([], [], color="black", lw=3.0, alpha=0.8, label="closed form"),
        Line2D([], [], color="0.3", marker="o", ms=3, label="exact zeros"),
        Line2D([], [], color="0.3", ls="--", label=f"|v| <= {cfg.threshold:g}"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=len(handles), fontsize=8.5, frameon=False)
    axes[0, 0].set_ylabel("max |v - v*|  (median over seeds)")
    axes[1, 0].set_ylabel(f"zero coefficients of {cfg.n_features}")
    fig.suptitle(f"Learning-rate sweep: {cfg.n_steps} full-batch steps, {cfg.dtype}, {len(cfg.seeds)} seed(s)", fontsize=12, y=0.99)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path

