"""``spred run compression``: the markdown tables, the comparisons and the figure."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spred.experiments import _common

#: Display names, in table order (dense, the six unstructured methods, the structured runs).
LABELS = {"dense": "dense", "spred": "spred", "magnitude": "magnitude (one-shot)", "gmp": "gradual magnitude",
          "synflow": "SynFlow", "str": "STR", "l1": "L1 in loss", "spred_group": "spred (groups)",
          "filter_norm": "filter norm"}  # fmt: skip
#: Colour of each unstructured method in the figure (its order is the legend's).
COLOURS = {"spred": "tab:red", "magnitude": "tab:blue", "gmp": "tab:cyan", "synflow": "tab:green", "str": "tab:purple", "l1": "tab:orange"}
#: Published (compression ratio, test error %) on MNIST; DESIGN.md section 4.
PUBLISHED = {
    "lenet300100": {"Sparse VD": (68.0, 1.92), "Han et al.": (12.0, 1.59)},
    "lenet5caffe": {"Sparse VD": (280.0, 0.75), "Han et al.": (12.0, 0.77)},
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def summary_table(summary: Sequence[Mapping]) -> str:
    """Markdown: one line per model, target ratio and method."""
    order = {m: i for i, m in enumerate(LABELS)}
    rows = sorted(summary, key=lambda r: (r["model"], r["target_ratio"], order.get(r["method"], 99)))
    return _common.markdown_table(rows, [
        ("model", "model"), ("target", lambda r: f"{r['target_ratio']:g}x"), ("method", lambda r: LABELS[r["method"]]),
        ("ratio (min)", lambda r: f"{r['compression_ratio']:.1f} ({r['compression_ratio_min']:.1f})"),
        ("test error %", lambda r: f"{_pct(r['test_error_mean'])} ± {_pct(r['test_error_std'])}"),
        ("before FT %", lambda r: _pct(r["test_error_before_finetune"])),
        ("epochs", "epochs"), ("prune steps", lambda r: f"{r['prune_steps']:g}"), ("wall s", lambda r: f"{r['wall_s']:.0f}"),
        ("seeds", "n_seeds"),
    ])  # fmt: skip


def _opt(r: Mapping, key: str, unit: str, divisor: float = 1.0, fmt: str = ".2f") -> str:
    """``r[key] / divisor`` (two decimals by default), or "-" for a CSV written before ``key`` existed."""
    return "-" if r.get(key) is None else f"{r[key] / divisor:{fmt}}{unit}"


def _widths_cell(r: Mapping) -> str:
    before, nonzero, after = r["widths_before"], r.get("widths_nonzero") or r["widths_after"], r["widths_after"]
    if nonzero == after:
        return f"{before} -> {after}"
    return f"{before} -> {nonzero} nonzero, {after} kept (multiples of {r.get('round_to')})"


def structured_table(rows: Sequence[Mapping]) -> str:
    """Markdown: one line per structured run."""
    return _common.markdown_table(rows, [
        ("method", lambda r: LABELS[r["method"]]), ("target", lambda r: f"{100 * float(r['target_sparsity']):g}%"), ("lam exponent", "lam_exponent"), ("seed", "seed"), ("widths", _widths_cell),
        ("params", lambda r: f"{r['params']} -> {r['params_pruned']} ({r['compression_ratio']:.1f}x)"),
        ("FLOPs", lambda r: f"{r['flop_ratio']:.2f}x fewer"),
        ("speed-up b1 (NCHW / NHWC)", lambda r: f"{r['speedup_b1']:.2f}x / {_opt(r, 'speedup_b1_cl', 'x')}"),
        ("speed-up b256 (NCHW / NHWC)", lambda r: f"{r['speedup_b256']:.2f}x / {_opt(r, 'speedup_b256_cl', 'x')}"),
        ("b256 / FLOP ratio (NCHW / NHWC)", lambda r: f"{r['speedup_b256'] / r['flop_ratio']:.2f} / {_opt(r, 'speedup_b256_cl', '', r['flop_ratio'])}"),
        ("max abs diff (fp32 / fp64)", lambda r: f"{r['max_abs_diff']:.1e} / {r['max_abs_diff_fp64']:.0e}"),
        ("fp32 error, collapsed / pruned", lambda r: f"{_opt(r, 'fp32_error_collapsed', '', fmt='.1e')} / {_opt(r, 'fp32_error_pruned', '', fmt='.1e')}"), ("test error %", lambda r: _pct(r["test_error"])),
        ("epochs", "epochs"), ("wall s", lambda r: f"{r['wall_s']:.0f}"),
    ])  # fmt: skip


def comparisons(summary: Sequence[Mapping]) -> list[str]:
    """One line per (model, target): spred against magnitude pruning, and against the published figure."""
    look = {(r["model"], r["target_ratio"], r["method"]): r for r in summary}
    lines = []
    for (model, target, method), r in sorted(look.items()):
        if method != "spred":
            continue
        line = f"{model} at {target:g}x: spred {_pct(r['test_error_mean'])}% at {r['compression_ratio']:.1f}x"
        mag = look.get((model, target, "magnitude"))
        if mag is not None:
            delta = 100 * (mag["test_error_mean"] - r["test_error_mean"])
            line += f"; magnitude pruning {_pct(mag['test_error_mean'])}% at {mag['compression_ratio']:.1f}x ({'spred ahead' if delta > 0 else 'spred behind'} by {abs(delta):.2f} points)"
        for ref, (ratio, err) in PUBLISHED.get(model, {}).items():
            if math.isclose(ratio, target):
                line += f"; {ref}: {err:.2f}% at {ratio:g}x"
        lines.append(line)
    return lines


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _plot_structured(ax_speed, ax_error, structured: Sequence[Mapping]) -> None:
    """Speed-up against FLOP reduction (with the 0.7x target line) and test error against FLOP reduction."""
    from matplotlib.ticker import FuncFormatter

    groups = defaultdict(list)
    for r in structured:
        groups[(r["method"], float(r["lam_exponent"]), float(r["target_sparsity"]))].append(r)

    def mean(rs, key, scale=1.0):
        return float(np.mean([scale * float(r[key]) for r in rs]))

    exponents = sorted({k[1] for k in groups})
    markers = dict(zip(exponents, "osD^v"))
    spred_runs = sorted(((k, rs) for k, rs in groups.items() if k[0] == "spred_group"), key=lambda kv: kv[0])
    top = max(mean(rs, "flop_ratio") for _, rs in spred_runs)
    line = np.geomspace(1.0, top * 1.5, 50)
    ax_speed.plot(line, line, color="grey", lw=1, label="speed-up = FLOP reduction")
    ax_speed.plot(line, 0.7 * line, color="grey", lw=1, ls="--", label="target: 0.7 x FLOP reduction")
    if "speedup_b256_cl" in structured[0]:
        series = [("b256_cl", "tab:red", "batch 256, NHWC"), ("b256", "tab:orange", "batch 256, NCHW"), ("b1_cl", "tab:blue", "batch 1, NHWC")]
    else:  # a CSV written before the channels-last columns: NCHW only
        series = [("b256", "tab:orange", "batch 256, NCHW"), ("b1", "tab:blue", "batch 1, NCHW")]
    for key, colour, text in series:
        for (_, e, sp), rs in spred_runs:
            x, y = mean(rs, "flop_ratio"), mean(rs, f"speedup_{key}")
            ax_speed.plot([x], [y], marker=markers[e], color=colour, ls="none",
                          label=f"{text}, exp. {e:g}" if sp == spred_runs[0][0][2] else None)  # fmt: skip
            if key == series[0][0]:
                ax_speed.annotate(f"{100 * sp:g}%", (x, y), textcoords="offset points", xytext=(4, -10), fontsize="x-small")
    for ax in (ax_speed, ax_error):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(_null_formatter())
        ax.set_xlabel("FLOP reduction (collapsed / pruned)")
    ax_speed.set_yscale("log")
    ax_speed.set_ylabel("measured speed-up (x, median)")
    rounding = structured[0].get("round_to")
    rounded = f" (round_to={rounding})" if rounding not in (None, "", 1, "1") else ""
    ax_speed.set_title(f"structured {structured[0]['model']}: latency after prune_channels{rounded}", fontsize="medium")
    ax_speed.legend(fontsize="x-small")
    for method, colour in (("spred_group", "tab:red"), ("filter_norm", "tab:grey")):
        for e in exponents:
            pts = sorted((mean(rs, "flop_ratio"), mean(rs, "test_error", 100), float(np.std([100 * float(r["test_error"]) for r in rs])))
                         for k, rs in groups.items() if k[0] == method and k[1] == e)  # fmt: skip
            if pts:
                xs, ys, es = zip(*pts)
                ax_error.errorbar(xs, ys, yerr=es, marker=markers[e], capsize=3, color=colour, label=f"{LABELS[method]}, exp. {e:g}")
    ax_error.set_ylabel("test error (%, mean ± std over seeds)")
    ax_error.set_title("same widths: spred groups vs filter norm", fontsize="medium")
    ax_error.legend(fontsize="x-small")


def plot(rows: Sequence[Mapping], structured: Sequence[Mapping], path: str | Path) -> Path:
    """Test error against compression ratio per method (one panel per model), and the structured latency and error."""
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    n_panels = len(models) + (2 if structured else 0)
    fig = Figure(figsize=(5.2 * n_panels, 4.2), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        for method in COLOURS:
            pts = defaultdict(list)
            for r in mine:
                if r["method"] == method:
                    pts[r["target_ratio"]].append((float(r["compression_ratio"]), 100 * float(r["test_error"])))
            if not pts:
                continue
            xs = [np.mean([p[0] for p in v]) for v in pts.values()]
            ys = [np.mean([p[1] for p in v]) for v in pts.values()]
            es = [np.std([p[1] for p in v]) for v in pts.values()]
            order = np.argsort(xs)
            ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(es)[order], marker="o", capsize=3,
                        color=COLOURS[method], label=LABELS[method], lw=2 if method == "spred" else 1)  # fmt: skip
        dense = [100 * float(r["test_error"]) for r in mine if r["method"] == "dense"]
        if dense:
            ax.axhline(np.mean(dense), color="grey", ls="--", lw=1, label="dense")
        for ref, (ratio, err) in PUBLISHED.get(model, {}).items():
            ax.plot([ratio], [err], marker="*", ms=12, ls="none", color="black" if ref == "Sparse VD" else "grey", label=f"{ref} (published)")
        ax.set_xscale("log")
        ticks = sorted({float(r["target_ratio"]) for r in mine if r["method"] != "dense"} | {r for r, _ in PUBLISHED.get(model, {}).values()})
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(_null_formatter())
        ax.set_xlabel("compression ratio (all weights and biases / nonzero)")
        ax.set_ylabel("test error (%)")
        size = mine[0]["train_size"] if mine else ""
        ax.set_title(f"{model} ({size} training images, mean ± std over seeds)", fontsize="medium")
        ax.legend(fontsize="x-small", ncols=2)
    if structured:
        _plot_structured(axes[-2], axes[-1], structured)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
