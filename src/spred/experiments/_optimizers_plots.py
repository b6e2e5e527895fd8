"""``spred run optimizers``: the summary over seeds, the markdown table and the 2x2 figure of one dataset and sparsity type."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

from spred.experiments import _common
from spred.experiments._optimizers_runs import DENSE_OF, OPTIMIZERS, SPARSITY_TYPES

LABELS = {
    "sgd": "SGD (momentum 0.9)", "adam": "Adam", "adamw": "AdamW + penalty in loss (L1)",
    "adamw_decoupled": "AdamW, decoupled decay (not L1)", "adagrad": "Adagrad",
}  # fmt: skip
_COLORS = {"sgd": "tab:blue", "adam": "tab:orange", "adamw": "tab:green", "adamw_decoupled": "tab:red", "adagrad": "tab:purple"}
_MARKERS = {"sgd": "o", "adam": "s", "adamw": "^", "adamw_decoupled": "v", "adagrad": "D"}


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _mean_std(values) -> tuple[float, float]:
    vals = [float(v) for v in values if isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


SUMMARY_METRICS = {
    "weight_sparsity": lambda r: r["weight_sparsity"],
    "channel_sparsity": lambda r: r["channel_sparsity"],
    "test_acc": lambda r: r["test_acc"],
    "acc_change": lambda r: r["test_acc"] - r["dense_test_acc"],
    "test_acc_before_collapse": lambda r: r["test_acc_before_collapse"],
    "test_acc_finetuned": lambda r: r.get("test_acc_finetuned", math.nan),
    "acc_change_finetuned": lambda r: r.get("test_acc_finetuned", math.nan) - r["dense_test_acc"],
    "magnitude_acc": lambda r: r.get("magnitude_acc", math.nan),
    "magnitude_acc_finetuned": lambda r: r.get("magnitude_acc_finetuned", math.nan),
    "latency_collapsed_b1": lambda r: r["latency_collapsed_b1"],
    "latency_pruned_b1": lambda r: r["latency_pruned_b1"],
    "latency_dense_b1": lambda r: r["latency_dense_b1"],
    "train_seconds": lambda r: r["train_seconds"],
    "latency_collapsed_bmax": lambda r: r["latency_collapsed_bmax"],
    "latency_pruned_bmax": lambda r: r["latency_pruned_bmax"],
    "latency_dense_bmax": lambda r: r["latency_dense_bmax"],
    "speed_collapsed_b1": lambda r: _ratio(r["latency_dense_b1"], r["latency_collapsed_b1"]),
    "speed_pruned_b1": lambda r: _ratio(r["latency_dense_b1"], r["latency_pruned_b1"]),
    "speed_collapsed_bmax": lambda r: _ratio(r["latency_dense_bmax"], r["latency_collapsed_bmax"]),
    "speed_pruned_bmax": lambda r: _ratio(r["latency_dense_bmax"], r["latency_pruned_bmax"]),
    "flop_ratio": lambda r: _ratio(r["macs_dense"], r["macs_pruned"]),
    "lam_final": lambda r: r["lam_final"],
    "kkt_relative": lambda r: r["kkt_relative"],
    "lam_fit_ratio": lambda r: r["lam_fit_ratio"],
    "kkt_median": lambda r: r["kkt_median"],
    "zero_violations": lambda r: r["zero_violations"],
}


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and std over seeds per (dataset, sparsity type, optimizer, target), dense baselines included.

    ``acc_change`` is the test accuracy minus that of the dense run of the same
    optimizer and seed; ``speed_*`` are dense latency / collapsed (pruned) latency of
    the same run (the models were timed in turns); ``n_reached`` counts the seeds whose
    sparsity is within the tolerance of the target.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["sparsity_type"], r["optimizer"], float(r["target"]))].append(r)
    out = []
    for (dataset, kind, optimizer, target), rs in groups.items():
        row = {"dataset": dataset, "sparsity_type": kind, "optimizer": optimizer, "target": target, "lr": rs[0]["lr"], "n_seeds": len(rs),
               "n_reached": sum(bool(r["reached_target"]) for r in rs), "n_diverged": sum(bool(r["diverged"]) for r in rs)}  # fmt: skip
        for name, get in SUMMARY_METRICS.items():
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(get(r) for r in rs)
        out.append(row)
    order = {k: i for i, k in enumerate(("dense", *SPARSITY_TYPES))}
    out.sort(key=lambda r: (r["dataset"], order.get(r["sparsity_type"], 9), OPTIMIZERS.index(r["optimizer"]), r["target"]))
    return out



def _pm(mean: float, std: float, fmt: str = ".3f", scale: float = 1.0) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{format(scale * mean, fmt)} ± {format(scale * std, fmt)}"


def summary_table(summary: Sequence[Mapping], dataset: str, sparsity_type: str) -> str:
    """One markdown table per dataset and sparsity type (mean ± std over seeds)."""
    rows = [r for r in summary if r["dataset"] == dataset and r["sparsity_type"] in (sparsity_type, "dense")]
    rows = [r for r in rows if r["sparsity_type"] == sparsity_type or any(DENSE_OF[o] == r["optimizer"] for o in _opts(summary))]
    structured = sparsity_type == "structured"
    cols = [
        ("optimizer", lambda r: r["optimizer"] + (" (dense)" if r["sparsity_type"] == "dense" else "")),
        ("lr", lambda r: f"{r['lr']:g}"),
        ("target", lambda r: "-" if r["sparsity_type"] == "dense" else f"{100 * r['target']:.0f}%"),
        ("weights zero (%)", lambda r: _pm(r["weight_sparsity_mean"], r["weight_sparsity_std"], ".1f", 100)),
        ("reached", lambda r: f"{r['n_reached']}/{r['n_seeds']}"),
        ("channels zero (%)", lambda r: _pm(r["channel_sparsity_mean"], r["channel_sparsity_std"], ".1f", 100)),
        ("test acc (%)", lambda r: _pm(r["test_acc_mean"], r["test_acc_std"], ".2f", 100)),
        ("vs dense (pts)", lambda r: _pm(r["acc_change_mean"], r["acc_change_std"], "+.2f", 100)),
        ("fine-tuned acc (%)", lambda r: _pm(r.get("test_acc_finetuned_mean", math.nan), r.get("test_acc_finetuned_std", math.nan), ".2f", 100)),
        ("fine-tuned vs dense (pts)", lambda r: _pm(r.get("acc_change_finetuned_mean", math.nan), r.get("acc_change_finetuned_std", math.nan), "+.2f", 100)),
        ("magnitude acc (%)", lambda r: _pm(r.get("magnitude_acc_mean", math.nan), r.get("magnitude_acc_std", math.nan), ".2f", 100)),
        ("magnitude fine-tuned (%)", lambda r: _pm(r.get("magnitude_acc_finetuned_mean", math.nan), r.get("magnitude_acc_finetuned_std", math.nan), ".2f", 100)),
        ("train s", lambda r: _pm(r["train_seconds_mean"], r["train_seconds_std"], ".1f")),
        ("speed-up collapsed b=max", lambda r: _pm(r["speed_collapsed_bmax_mean"], r["speed_collapsed_bmax_std"], ".2f")),
    ]
    if structured:
        cols += [
            ("speed-up pruned b=1", lambda r: _pm(r["speed_pruned_b1_mean"], r["speed_pruned_b1_std"], ".2f")),
            ("speed-up pruned b=max", lambda r: _pm(r["speed_pruned_bmax_mean"], r["speed_pruned_bmax_std"], ".2f")),
            ("FLOP ratio", lambda r: _pm(r["flop_ratio_mean"], r["flop_ratio_std"], ".2f")),
        ]
    cols += [
        ("lam", lambda r: "-" if not math.isfinite(r["lam_final_mean"]) else f"{r['lam_final_mean']:.2g}"),
        ("KKT max/lam", lambda r: "-" if not math.isfinite(r["kkt_relative_mean"]) else f"{r['kkt_relative_mean']:.3g}"),
        ("lam_fit/lam", lambda r: _pm(r["lam_fit_ratio_mean"], r["lam_fit_ratio_std"], ".3g")),
        ("KKT median", lambda r: _pm(r["kkt_median_mean"], r["kkt_median_std"], ".2f")),
        ("zero viol. (%)", lambda r: _pm(r["zero_violations_mean"], r["zero_violations_std"], ".1f", 100)),
    ]
    return _common.markdown_table(rows, cols)


def _opts(summary: Sequence[Mapping]) -> list[str]:
    present = {r["optimizer"] for r in summary if r["sparsity_type"] != "dense"}
    return [o for o in OPTIMIZERS if o in present]


def plot_panel(summary: Sequence[Mapping], dataset: str, sparsity_type: str, path: str | Path) -> Path:
    """The 2x2 panel of one dataset and sparsity type, one line per optimizer (mean ± std over seeds).

    (a) test accuracy, (b) inference time at the largest batch (collapsed model; for
    structured also the pruned one, solid), (c) accuracy change against the dense model
    of the same optimizer (points), (d) inference time relative to the dense
    architecture timed in turns with it (%), all against the fraction of zero weights reached.
    The dense run sits at sparsity 0.
    """
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8.2), layout="constrained")
    (ax_acc, ax_lat), (ax_dacc, ax_dlat) = fig.subplots(2, 2, sharex=True)
    structured = sparsity_type == "structured"
    lat_key = "latency_pruned_bmax" if structured else "latency_collapsed_bmax"
    speed_key = "speed_pruned_bmax" if structured else "speed_collapsed_bmax"
    for opt in _opts(summary):
        rs = sorted((r for r in summary if r["dataset"] == dataset and r["sparsity_type"] == sparsity_type and r["optimizer"] == opt), key=lambda r: r["target"])
        if not rs:
            continue
        dense = [r for r in summary if r["dataset"] == dataset and r["sparsity_type"] == "dense" and r["optimizer"] == DENSE_OF[opt]]
        style = {"color": _COLORS[opt], "marker": _MARKERS[opt], "capsize": 3, "label": LABELS[opt], "ms": 5}
        x = [0.0] * bool(dense) + [100 * r["weight_sparsity_mean"] for r in rs]
        xerr = [0.0] * bool(dense) + [100 * r["weight_sparsity_std"] for r in rs]
        acc = dense[:1] + rs
        ax_acc.errorbar(x, [100 * r["test_acc_mean"] for r in acc], yerr=[100 * r["test_acc_std"] for r in acc], xerr=xerr, **style)
        ax_dacc.errorbar(x, [0.0] * bool(dense) + [100 * r["acc_change_mean"] for r in rs], yerr=[0.0] * bool(dense) + [100 * r["acc_change_std"] for r in rs], xerr=xerr, **style)
        xs = [100 * r["weight_sparsity_mean"] for r in rs]
        ax_lat.errorbar(xs, [1e3 * r[f"{lat_key}_mean"] for r in rs], yerr=[1e3 * r[f"{lat_key}_std"] for r in rs], **style)
        ax_dlat.errorbar(xs, [100 * (1 / r[f"{speed_key}_mean"] - 1) for r in rs], **style)
        ax_lat.plot(xs, [1e3 * r["latency_dense_bmax_mean"] for r in rs], color=_COLORS[opt], ls=":", lw=1)
        if structured:
            ax_lat.plot(xs, [1e3 * r["latency_collapsed_bmax_mean"] for r in rs], color=_COLORS[opt], ls="--", lw=1)
    what = "pruned (solid), collapsed (dashed)" if structured else "collapsed (solid)"
    ax_acc.set(ylabel="test accuracy (%)", title="(a) accuracy (dense run at 0)")
    ax_lat.set(ylabel="ms per forward pass, largest batch", title=f"(b) inference time: {what}, dense (dotted)")
    ax_dacc.set(xlabel="weights zero (%)", ylabel="accuracy change vs dense (points)", title="(c) relative accuracy")
    ax_dlat.set(xlabel="weights zero (%)", ylabel="inference time vs dense (%)", title=f"(d) relative inference time ({'pruned' if structured else 'collapsed'})")
    for ax in (ax_dacc, ax_dlat):
        ax.axhline(0, color="0.7", lw=0.8)
    ax_acc.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"spred {sparsity_type} on {dataset}: optimizers (mean ± std over seeds)")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path

