"""``spred run lasso``: the paper's Lasso experiment (Figure 3), on the torch API.

An orthogonal design ``X`` (``X^T X / n = I``, :func:`spred.datasets.make_orthogonal_design`)
makes the Lasso solvable in closed form: for scikit-learn's objective
``(1/(2n))||y - Xv||^2 + alpha*||v||_1`` the minimiser is
``v*(alpha) = soft_threshold(X^T y / n, alpha)``. For every alpha of a grid, an
``nn.Linear`` is sparsified with ``spred.sparsify(lam=alpha)`` and trained by
:func:`spred.train.fit` on ``mean(r^2)/2`` with ``torch.optim.SGD`` / ``Adam`` built
from ``spred.param_groups`` (coupled weight decay, i.e. exactly ``alpha*||v||_1``;
DESIGN.md section 1), at the learning rates of the paper, for a fixed budget of
full-batch steps. The baseline adds ``alpha*||v||_1`` to the loss and follows its
subgradient with the same optimizers, learning rates, steps and loop. All (lr, alpha,
seed) runs of one method and optimizer train at once (``_lasso_fit``); a run whose
loss becomes non-finite is recorded as diverged, not raised.

Zeros. After training, ``spred.collapse(threshold=0)`` gives the weights; ``n_zero``
counts exact zeros, ``n_zero_thr`` entries with ``|v| <= threshold``. With SGD a
pruned weight decays like ``exp(-2*lr*m*t)``, where ``m = alpha - |dL/dv|`` is its
margin at the optimum, and becomes an exact float64 zero only once
``lr*m*t > ~370`` (float32: ~51); coordinates close to the KKT boundary therefore
stay tiny but nonzero for a long time. ``kkt`` and ``kkt_thr`` are
``spred.kkt_residual(...).relative`` (residual / alpha) at thresholds 0 and
``threshold``: a small value certifies the zeros as those of the L1 optimum.

Outputs under ``--out`` (written as one set, see ``_outdir``): ``lasso.csv`` (one row
per method, optimizer, lr, alpha, seed), ``lasso_coefs.csv`` (coefficients of the
first seed), ``lasso.png`` and ``lasso_lr_sweep.png`` (``_lasso_plots``),
``summary.md`` and ``config.json``; :func:`load_results` reads them back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from spred.datasets import make_orthogonal_design, make_sparse_target
from spred.experiments import _common
from spred.experiments._common import a_float, an_int, check_relation, mapping_of, one_of, some_of, tuple_of
from spred.experiments._lasso_fit import Fit, KKTProbe, coef_rows_for, fit_l1, fit_spred, rows_for
from spred.experiments._lasso_plots import METHOD_LABELS, plot_lr_sweep, plot_main

logger = logging.getLogger(__name__)

__all__ = [
    "Fit",
    "LassoConfig",
    "LassoProblem",
    "LassoResults",
    "QUICK",
    "add_arguments",
    "check_config",
    "config_from_args",
    "fit_l1",
    "fit_spred",
    "load_results",
    "make_problem",
    "orthogonal_design",
    "plot_lr_sweep",
    "plot_main",
    "run",
    "run_experiment",
    "soft_threshold",
    "summarise",
    "summary_table",
]

NAME = "lasso"
METHODS = ("spred", "l1")
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float64", "float32")
_GRID_TOP = 1.05  # the alpha grid ends at 1.05 * alpha_max (the largest over seeds)
CSV_COLUMNS = (
    "method", "optimizer", "lr", "alpha", "seed", "alpha_max", "alpha_ratio", "n_features", "n_steps",
    "error", "n_zero", "n_zero_thr", "n_zero_true", "n_nonzero_true", "n_zero_found", "n_zero_thr_found",
    "support_exact", "support_thr",
    "kkt", "kkt_thr", "threshold", "margin", "smallest_coef", "diverged", "diverged_step",
)  # fmt: skip


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LassoConfig:
    """Settings of the Lasso experiment (defaults: the full run, 1-2 minutes on one CPU core).

    Parameters
    ----------
    n_samples, n_features : int
        Size of the orthogonal design ``X`` (``n_samples >= n_features``).
    n_informative : int
        Number of nonzero true coefficients.
    coef_range : (float, float)
        Magnitudes of the true coefficients are uniform in this range (random signs).
    noise : float
        Standard deviation of the Gaussian noise on ``y``.
    n_alphas, eps : int, float
        The alpha grid: ``n_alphas`` values log-spaced from ``eps * top`` to
        ``top = 1.05 * alpha_max``, ``alpha_max = max_s max|X^T y_s| / n`` (the
        largest over seeds; every seed shares the grid, so one ``lam`` per tensor).
    methods : tuple of {"spred", "l1"}
        ``"spred"``: the sparsified ``nn.Linear``; ``"l1"``: ``alpha*||v||_1`` added to
        the loss and minimised by (sub)gradient steps.
    optimizers : tuple of {"sgd", "adam"}
        Plain ``torch.optim.SGD`` and ``torch.optim.Adam`` (no momentum, default betas).
    lrs : tuple of float
        Learning rates; every optimizer runs at every one.
    main_lrs : mapping of str to float
        The learning rate per optimizer shown in the main figure (must be in ``lrs``).
    n_steps : int
        Full-batch steps per run.
    threshold : float
        Entries with ``|v| <= threshold`` count as zero in ``n_zero_thr`` / ``kkt_thr``.
    seeds : tuple of int
        One repetition per seed: the true coefficients and the noise.
    design_seed : int
        Seed of the design ``X`` and of the initial weights (one default-initialised
        ``nn.Linear``), shared by every run.
    dtype : {"float64", "float32"}
        Floating point type of the training.
    """

    n_samples: int = 200
    n_features: int = 100
    n_informative: int = 10
    coef_range: tuple[float, float] = (0.2, 0.6)
    noise: float = 0.25
    n_alphas: int = 20
    eps: float = 0.01
    methods: tuple[str, ...] = METHODS
    optimizers: tuple[str, ...] = OPTIMIZERS
    lrs: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001)
    main_lrs: Mapping[str, float] = field(default_factory=lambda: {"sgd": 1.0, "adam": 0.01})
    n_steps: int = 3000
    threshold: float = 1e-8
    seeds: tuple[int, ...] = (0, 1, 2)
    design_seed: int = 0
    dtype: str = "float64"


#: ``--quick``: a small problem that still shows everything, in a few seconds.
QUICK = {
    "n_samples": 60,
    "n_features": 20,
    "n_informative": 5,
    "n_alphas": 5,
    "eps": 0.1,
    "lrs": (1.0, 0.01),
    "n_steps": 800,
    "seeds": (0,),
}


_RULES = {
    "n_samples": an_int(1),
    "n_features": an_int(1),
    "n_informative": an_int(0),
    "coef_range": tuple_of(a_float(0.0, low_open=True), "a pair (low, high) of floats > 0", length=2),
    "noise": a_float(0.0),
    "n_alphas": an_int(1),
    "eps": a_float(0.0, 1.0, low_open=True, high_open=True),
    "methods": some_of(METHODS),
    "optimizers": some_of(OPTIMIZERS),
    "lrs": tuple_of(a_float(0.0, low_open=True), "a non-empty tuple of floats > 0"),
    "main_lrs": mapping_of(a_float(0.0, low_open=True), "a mapping optimizer -> learning rate"),
    "n_steps": an_int(0),
    "threshold": a_float(0.0),
    "seeds": tuple_of(an_int(0), "a non-empty tuple of ints >= 0", distinct=True),
    "design_seed": an_int(0),
    "dtype": one_of(DTYPES),
}


def check_config(cfg: LassoConfig) -> LassoConfig:
    """Validate every field of ``cfg`` and return it (sequences as tuples).

    Raises
    ------
    TypeError
        A field of the wrong type.
    ValueError
        A field with a wrong value; the message names the field and the value.
    """
    cfg = replace(cfg, **_common.check_fields(cfg, _RULES))
    check_relation(cfg.n_samples >= cfg.n_features, cfg, "n_samples", f"an int >= n_features={cfg.n_features} (an orthogonal design)")
    check_relation(cfg.n_informative <= cfg.n_features, cfg, "n_informative", f"an int <= n_features={cfg.n_features}")
    check_relation(cfg.coef_range[0] <= cfg.coef_range[1], cfg, "coef_range", "a pair (low, high) with low <= high")
    for opt in cfg.optimizers:
        check_relation(opt in cfg.main_lrs, cfg, "main_lrs", f"a mapping with a learning rate for each optimizer {cfg.optimizers}")
        picked = any(math.isclose(cfg.main_lrs[opt], lr) for lr in cfg.lrs)
        check_relation(picked, cfg, "main_lrs", f"a mapping whose learning rates are in lrs={cfg.lrs}")
    return cfg


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LassoProblem:
    """One orthogonal design and one response per seed.

    ``X`` is (n, p) with ``X^T X / n = I``; ``Y`` is (n_seeds, n); ``coef`` the true
    coefficients (n_seeds, p); ``alphas`` the grid shared by all seeds.
    """

    X: np.ndarray
    Y: np.ndarray
    coef: np.ndarray
    seeds: tuple[int, ...]
    alphas: np.ndarray
    design_seed: int = 0

    @property
    def z(self) -> np.ndarray:
        """``X^T y / n`` per seed, shape (n_seeds, p): the least-squares solution."""
        return self.Y @ self.X / self.X.shape[0]

    @property
    def alpha_max(self) -> np.ndarray:
        """Per seed, the smallest alpha whose Lasso solution is all zero."""
        return np.abs(self.z).max(axis=1)


def orthogonal_design(n_samples: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """Kept for existing code: :func:`spred.datasets.make_orthogonal_design` with ``random_state=rng``."""
    return make_orthogonal_design(n_samples, n_features, random_state=rng)


def soft_threshold(z: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """The Lasso solution for an orthogonal design, for every alpha.

    ``argmin_v (1/(2n))||y - Xv||^2 + alpha*||v||_1 = sign(z) * max(|z| - alpha, 0)``
    with ``z = X^T y / n`` when ``X^T X / n = I``.

    Parameters
    ----------
    z : ndarray
        ``X^T y / n`` (any shape, e.g. (n_seeds, p)).
    alphas : array-like
        Penalty strengths (any shape).

    Returns
    -------
    ndarray of shape ``alphas.shape + z.shape``
    """
    a = np.asarray(alphas, dtype=float).reshape(np.shape(alphas) + (1,) * np.ndim(z))
    return np.sign(z) * np.maximum(np.abs(z) - a, 0.0)


def make_problem(cfg: LassoConfig) -> LassoProblem:
    """The design (from ``design_seed``), one sparse truth and noise per seed, and the alpha grid.

    The design is ``make_orthogonal_design(random_state=design_seed)``; seed ``s``'s
    response is ``make_sparse_target(X, random_state=[design_seed, s])``.
    """
    X = make_orthogonal_design(cfg.n_samples, cfg.n_features, random_state=cfg.design_seed)
    targets = [
        make_sparse_target(X, cfg.n_informative, coef_range=cfg.coef_range, noise=cfg.noise, random_state=[cfg.design_seed, seed])
        for seed in cfg.seeds
    ]
    Y = np.stack([y for y, _ in targets])
    # At alpha_max itself the largest coordinate sits exactly on the KKT boundary (zero
    # with margin 0), which no finite run resolves; end the grid just above it instead.
    top = _GRID_TOP * float(np.abs(Y @ X / cfg.n_samples).max())
    alphas = np.geomspace(cfg.eps * top, top, cfg.n_alphas) if cfg.n_alphas > 1 else np.array([top])
    return LassoProblem(X, Y, np.stack([c for _, c in targets]), tuple(cfg.seeds), alphas, cfg.design_seed)


# --------------------------------------------------------------------------- the experiment


@dataclass
class LassoResults:
    """What :func:`run_experiment` produced: tidy rows, the summary and the files written."""

    config: LassoConfig
    rows: list[dict]
    coef_rows: list[dict]
    summary: list[dict]
    seconds: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def _train_all(cfg: LassoConfig, problem: LassoProblem, probes, progress: bool | None) -> tuple[list[dict], list[dict], dict]:
    """Every (method, optimizer): rows and coefficient rows (closed form first), and the seconds per training."""
    from tqdm.auto import tqdm

    truth = soft_threshold(problem.z, problem.alphas)  # (n_alphas, n_seeds, p)
    no_divergence = np.full((len(problem.alphas), len(problem.seeds)), -1)
    rows = rows_for("closed_form", "", math.nan, truth, no_divergence, problem, truth, cfg.threshold, 0, probes)
    coef_rows = coef_rows_for("closed_form", "", math.nan, truth, problem)
    runs = [(m, o) for m in cfg.methods for o in cfg.optimizers]
    seconds = {}
    fitters = {"spred": fit_spred, "l1": fit_l1}
    with tqdm(total=len(runs) * cfg.n_steps, desc="spred run lasso", unit="step", disable=None if progress is None else not progress) as bar:
        for method, optimizer in runs:
            bar.set_postfix_str(f"{method} {optimizer}")
            fits = fitters[method](problem, optimizer, cfg.lrs, n_steps=cfg.n_steps, dtype=getattr(torch, cfg.dtype), bar=bar)
            seconds[f"{method}/{optimizer}"] = fits[0].seconds
            for fit in fits:
                if fit.diverged.any():
                    logger.info("%s %s lr=%g: the loss became non-finite for %d of %d (alpha, seed) runs",
                                method, optimizer, fit.lr, int(fit.diverged.sum()), fit.diverged.size)  # fmt: skip
                rows += rows_for(method, optimizer, fit.lr, fit.coefs, fit.diverged_step, problem, truth, cfg.threshold, cfg.n_steps, probes)
                coef_rows += coef_rows_for(method, optimizer, fit.lr, fit.coefs, problem)
    return rows, coef_rows, seconds


def run_experiment(cfg: LassoConfig, out: str | Path | None = None, *, plot: bool = True, progress: bool | None = None) -> LassoResults:
    """Run the Lasso experiment for ``cfg`` and write its outputs under ``out``.

    Parameters
    ----------
    cfg : LassoConfig
    out : path, optional
        Output folder; ``results/lasso`` when None. A new or empty folder, or one that
        spred run wrote; it is checked and locked before anything is computed, and the
        outputs replace the previous set only once all of them are written.
    plot : bool, default=True
        Draw ``lasso.png`` and ``lasso_lr_sweep.png`` (needs matplotlib).
    progress : bool or None
        Show a progress bar (None: only on a terminal).

    Returns
    -------
    LassoResults
    """
    cfg = check_config(cfg)
    with _common.output_folder(out, NAME) as folder:
        start = time.perf_counter()
        problem = make_problem(cfg)
        probes = [KKTProbe(problem.X, y) for y in problem.Y]
        rows, coef_rows, seconds = _train_all(cfg, problem, probes, progress)
        seconds["total"] = time.perf_counter() - start
        summary = summarise(rows)
        results = LassoResults(cfg, rows, coef_rows, summary, seconds)
        results.files["csv"] = folder.write_csv(rows, "lasso.csv", CSV_COLUMNS)
        results.files["coefs"] = folder.write_csv(coef_rows, "lasso_coefs.csv")
        results.files["summary"] = folder.write_text("summary.md", summary_table(summary, cfg) + "\n")
        if plot:
            plot_main(rows, coef_rows, cfg, folder.file("lasso.png"))
            plot_lr_sweep(rows, cfg, folder.file("lasso_lr_sweep.png"))
            results.files["figure"], results.files["lr_sweep"] = folder.final("lasso.png"), folder.final("lasso_lr_sweep.png")
        seconds["with_outputs"] = time.perf_counter() - start
        files = {k: p.name for k, p in results.files.items()} | {"config": "config.json"}
        results.files["config"] = folder.write_config(cfg, extra={"seconds": seconds, "files": files})
    return results


def load_results(out: str | Path) -> tuple[LassoConfig, list[dict], list[dict]]:
    """Read back what :func:`run_experiment` wrote under ``out``: (config, rows, coefficient rows).

    The files are checked against the manifest of the run that wrote them: results of
    an interrupted run, of two runs mixed, or edited by hand are refused
    (``OutputFolderError``, a ``ValueError``). Redraw the figures from saved results with
    ``plot_main(rows, coef_rows, cfg, path)`` and ``plot_lr_sweep(rows, cfg, path)``.
    """
    saved = _common.open_results(out, NAME)
    cfg = check_config(_common.config_from_text(LassoConfig, saved.text("config.json"), str(Path(out) / "config.json")))
    return cfg, _common.read_csv_text(saved.text("lasso.csv")), _common.read_csv_text(saved.text("lasso_coefs.csv"))


# --------------------------------------------------------------------------- summary


def _err_for_median(row: Mapping) -> float:
    return math.inf if row["diverged"] else float(row["error"])


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """One row per (method, optimizer, lr): errors and support recovery over alphas and seeds.

    ``error`` is the median over seeds of each seed's median (over alphas) max error
    (a diverged run counts as infinite), with the range over seeds; the fractions
    are over all (alpha, seed) runs.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for key, group in groups.items():
        seeds = sorted({r["seed"] for r in group})
        per_seed = [float(np.median([_err_for_median(r) for r in group if r["seed"] == s])) for s in seeds]
        kkt = [r["kkt_thr"] for r in group if not r["diverged"]]
        out.append({
            "method": key[0],
            "optimizer": key[1],
            "lr": math.nan if key[2] is None else key[2],
            "runs": len(group),
            "median_error": float(np.median(per_seed)),
            "error_min_seed": float(np.min(per_seed)),
            "error_max_seed": float(np.max(per_seed)),
            "support_exact": float(np.mean([r["support_exact"] for r in group])),
            "support_thr": float(np.mean([r["support_thr"] for r in group])),
            "zero_frac_exact": _zero_fraction(group, "n_zero_found"),
            "zero_frac_thr": _zero_fraction(group, "n_zero_thr_found"),
            "median_kkt_thr": float(np.median(kkt)) if kkt else math.nan,
            "diverged": int(sum(r["diverged"] for r in group)),
        })  # fmt: skip
    return out


def _zero_fraction(group: Sequence[Mapping], column: str) -> float:
    """Zeros of the closed form that the run also has, pooled over the group (1.0: all found)."""
    true = sum(r["n_zero_true"] for r in group)
    return sum(r[column] for r in group) / true if true else math.nan


def _key(row: Mapping) -> tuple:
    lr = row["lr"]
    return row["method"], row["optimizer"], None if lr is None or math.isnan(lr) else lr


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "diverged"
    if isinstance(x, float) and math.isnan(x):
        return "-"
    return f"{x:.1e}"


def summary_table(summary: Sequence[Mapping], cfg: LassoConfig) -> str:
    """The markdown table printed at the end of ``spred run lasso``."""
    tau = f"{cfg.threshold:g}"
    columns = [
        ("method", lambda r: METHOD_LABELS[r["method"]]),
        ("optimizer", lambda r: r["optimizer"] or "-"),
        ("lr", lambda r: "-" if math.isnan(r["lr"]) else f"{r['lr']:g}"),
        ("max\\|v - v*\\| [seed range]", lambda r: f"{_fmt(r['median_error'])} [{_fmt(r['error_min_seed'])}, {_fmt(r['error_max_seed'])}]"),
        ("support, exact zeros", lambda r: f"{100 * r['support_exact']:.0f}%"),
        (f"support, \\|v\\| <= {tau}", lambda r: f"{100 * r['support_thr']:.0f}%"),
        ("zeros found, exact", lambda r: f"{100 * r['zero_frac_exact']:.0f}%"),
        (f"zeros found, \\|v\\| <= {tau}", lambda r: f"{100 * r['zero_frac_thr']:.0f}%"),
        ("KKT/alpha", lambda r: _fmt(r["median_kkt_thr"])),
        ("diverged", lambda r: f"{r['diverged']}/{r['runs']}"),
    ]
    head = (
        f"Lasso, orthogonal design n={cfg.n_samples}, p={cfg.n_features}: {cfg.n_alphas} alphas x {len(cfg.seeds)} seed(s), "
        f"{cfg.n_steps} full-batch steps, {cfg.dtype}.\n"
        "max|v - v*|: median over alphas (seed median [min, max]; diverged runs count as infinite). "
        "support: fraction of (alpha, seed) runs whose zero pattern is the closed form's. "
        "zeros found: closed-form zeros the run also has. "
        f"KKT/alpha: median of spred.kkt_residual(threshold={tau}).relative."
    )
    return head + "\n\n" + _common.markdown_table(summary, columns)


# --------------------------------------------------------------------------- command line


def _parse_main_lrs(items: Sequence[str] | None) -> dict[str, float] | None:
    if items is None:
        return None
    out = {}
    for item in items:
        opt, sep, value = item.partition("=")
        try:
            out[opt] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--main-lrs expects OPTIMIZER=LR items such as sgd=1 adam=0.01. Got {item!r} instead.")
    return out


def add_arguments(parser) -> None:
    """Options of ``spred run lasso``."""
    _common.add_common_arguments(parser, NAME, "a small problem (60 x 20, 5 alphas, one seed) that runs in seconds")
    parser.add_argument("--steps", dest="n_steps", type=_common.nonnegative_int, default=None, help="full-batch steps per run (default 3000)")
    parser.add_argument("--n-alphas", type=_common.positive_int, default=None, help="size of the alpha grid (default 20)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates (default 1 0.1 0.01 0.001)")
    parser.add_argument("--main-lrs", nargs="+", default=None, metavar="OPT=LR", help="learning rates of the main figure (default sgd=1 adam=0.01)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="|v| <= threshold counts as zero in n_zero_thr (default 1e-8)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default float64")


def config_from_args(args) -> LassoConfig:
    """The resolved config: defaults, ``--quick``, ``--config FILE``, then the other options."""
    cli = {
        "seeds": args.seeds,
        "n_steps": args.n_steps,
        "n_alphas": args.n_alphas,
        "lrs": args.lrs,
        "main_lrs": _parse_main_lrs(args.main_lrs),
        "optimizers": args.optimizers,
        "methods": args.methods,
        "threshold": args.threshold,
        "dtype": args.dtype,
    }
    cfg = _common.resolve_config(LassoConfig, quick=args.quick, quick_values=QUICK, config_file=args.config, cli_values=cli)
    return check_config(cfg)


def run(args) -> int:
    """``spred run lasso``: run, write the outputs, print the summary table; returns the exit code."""
    cfg = config_from_args(args)
    with _common.num_threads(args.threads):
        results = run_experiment(cfg, args.out, plot=not args.no_plot)
    print(summary_table(results.summary, cfg))
    print()
    print(f"wrote {', '.join(str(p) for p in results.files.values())} in {results.seconds['with_outputs']:.1f} s")
    return 0
