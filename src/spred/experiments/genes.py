"""``spred run genes``: nonlinear gene selection (the paper's second experiment).

Protocol (docs/feature_selection.md has the long version):

* datasets: every dataset that :func:`spred.datasets.list_datasets` marks as gene
  expression and meant for benchmarks (``--datasets`` to choose);
* for each seed, one stratified 80/20 split (``StratifiedShuffleSplit(test_size=0.2,
  random_state=seed)``); 20 seeds by default;
* standardisation (``StandardScaler``) fitted on the training part only;
* every method selects ``k`` in {10, 50} genes from the training part only;
* scores: the test accuracy of (a) an RBF SVM (``SVC()``, C=1, gamma="scale") and
  (b) logistic regression (``LogisticRegression()``, L2, C=1) refitted on the
  selected genes, and (c) the selector's own prediction where it has one (spred:
  its network refitted on the k genes);
* methods: spred with the linear, MLP and ensemble networks
  (:class:`spred.feature_selection.SpredSelector`), HSIC-Lasso, LassoNet,
  L1-logistic regression tuned to k features, ANOVA F-test top-k, an MLP with weight
  decay on all genes and one with an L1 penalty in the loss (both top-k by
  first-layer column norm), and k random genes (see ``_baselines_fs``).

Outputs under ``--out``: ``genes_runs.csv`` (one row per dataset, seed, method and
k), ``genes_summary.csv`` (mean and std over seeds), ``genes_ranks.csv`` (average rank
of each method over datasets), ``genes.png`` and ``config.json`` (written as one set
when the run ends, see ``_outdir``); the terminal gets the markdown tables.
``genes_runs.csv`` is rewritten (staged) after every split, so an interrupted run
leaves its finished splits in ``--out``'s hidden staging folder (the log says where)
until the next run into ``--out``. A method that raises on a split is recorded (NaN
accuracies, the message in ``error``) and left out of means and ranks, and the run
goes on.

Ranks: for each dataset, k and score, methods are ranked by mean accuracy over the
seeds (1 = best, ties share the average rank); the average over datasets is the
average rank.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spred.experiments import _common
from spred.experiments._baselines_fs import BASELINES, Selection
from spred.experiments._common import a_float, a_str, an_int, check_relation, some_of, tuple_of

logger = logging.getLogger(__name__)

NAME = "genes"
SPRED_METHODS = ("spred_linear", "spred_mlp", "spred_ensemble")
METHODS = SPRED_METHODS + tuple(BASELINES)
LABELS = {
    "spred_linear": "spred linear", "spred_mlp": "spred MLP", "spred_ensemble": "spred ensemble", "hsic_lasso": "HSIC-Lasso",
    "lassonet": "LassoNet", "l1_logistic": "L1-logistic", "anova": "ANOVA F", "mlp_wd": "MLP + wd", "mlp_l1": "MLP + L1",
    "random": "random",
}  # fmt: skip
SCORES = ("svm", "logreg", "own")
CSV_COLUMNS = (
    "dataset", "n_samples", "n_features", "n_classes", "seed", "method", "k", "n_selected", "acc_svm", "acc_logreg",
    "acc_own", "fit_seconds", "shared_fit", "selected", "error",
)  # fmt: skip
# The quick preset: 3 splits of 5 datasets chosen to span the sizes (325 to 7129 genes, 2 to 7 classes).
QUICK_DATASETS = ("lung_discrete", "colon", "SRBCT", "GLIOMA", "ALLAML")


@dataclass(frozen=True)
class GenesConfig:
    """Settings of the gene-selection benchmark.

    Parameters
    ----------
    datasets : tuple of str
        Dataset names; empty means every gene-expression benchmark dataset of the registry.
    seeds : tuple of int
        One stratified 80/20 split per seed (the seed also seeds every method).
    ks : tuple of int
        Numbers of genes to select.
    methods : tuple of str
        Which of ``METHODS`` to run.
    test_size : float
        Test fraction of each split.
    spred_max_iter : int
        Epochs per path point of SpredSelector (``max_iter``).
    spred_lr, spred_weight_decay : float
        SpredSelector's ``lr`` and ``weight_decay``.
    hidden : int
        Width of the one hidden layer of every MLP (spred, LassoNet, MLP baselines).
    mlp_epochs, mlp_lr, mlp_weight_decay, mlp_l1 : int, float, float, float
        Training of the MLP baselines (full batch, Adam); ``mlp_l1`` is the L1 strength
        of the "MLP + L1" baseline.
    lassonet_lambda_start, lassonet_path_multiplier : float
        LassoNet's path starts at ``lassonet_lambda_start * alpha_max`` and grows by
        the multiplier.
    hsic_block, hsic_permutations : int
        HSIC-Lasso's ``B`` and ``M``.
    """

    datasets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = tuple(range(20))
    ks: tuple[int, ...] = (10, 50)
    methods: tuple[str, ...] = METHODS
    test_size: float = 0.2
    spred_max_iter: int = 200
    spred_lr: float = 1e-2
    spred_weight_decay: float = 1e-3
    hidden: int = 32
    mlp_epochs: int = 200
    mlp_lr: float = 1e-3
    mlp_weight_decay: float = 1e-3
    mlp_l1: float = 1e-4
    lassonet_lambda_start: float = 2.0
    lassonet_path_multiplier: float = 1.2
    hsic_block: int = 20
    hsic_permutations: int = 3


QUICK = {"datasets": QUICK_DATASETS, "seeds": (0, 1, 2)}


_RULES = {
    "datasets": tuple_of(a_str(), "a tuple of dataset names", allow_empty=True),
    "seeds": tuple_of(an_int(0), "a non-empty tuple of ints >= 0", distinct=True),
    "ks": tuple_of(an_int(1), "a non-empty tuple of ints >= 1", distinct=True),
    "methods": some_of(METHODS),
    "test_size": a_float(0.0, 1.0, low_open=True, high_open=True),
    "spred_max_iter": an_int(1),
    "spred_lr": a_float(0.0, low_open=True),
    "spred_weight_decay": a_float(0.0),
    "hidden": an_int(1),
    "mlp_epochs": an_int(1),
    "mlp_lr": a_float(0.0, low_open=True),
    "mlp_weight_decay": a_float(0.0),
    "mlp_l1": a_float(0.0),
    "lassonet_lambda_start": a_float(0.0, low_open=True),
    "lassonet_path_multiplier": a_float(1.0, low_open=True),
    "hsic_block": an_int(1),
    "hsic_permutations": an_int(1),
}


def check_config(cfg: GenesConfig) -> GenesConfig:
    """Validate every field of ``cfg`` and return it (sequences as tuples); messages name the field and the value."""
    cfg = replace(cfg, **_common.check_fields(cfg, _RULES))
    if cfg.datasets:
        from spred.datasets import list_datasets

        genes = {n.lower(): n for n in list_datasets(kind="gene expression")}
        known = all(d.lower() in genes for d in cfg.datasets)
        check_relation(known, cfg, "datasets", f"a tuple of gene-expression datasets from {sorted(genes.values())}")
    return cfg


def dataset_names(cfg: GenesConfig) -> list[str]:
    """The datasets to run: ``cfg.datasets`` or every gene-expression benchmark dataset."""
    from spred.datasets import list_datasets

    return list(cfg.datasets) or list_datasets(kind="gene expression", benchmark=True)


# --------------------------------------------------------------------------- spred as a method


def _select_spred(model: str):
    def select(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
        """SpredSelector(model), exactly k genes; the largest k first, then warm-started down to the smaller ones."""
        from spred.feature_selection import SpredSelector

        sel = SpredSelector(
            model, hidden_layer_sizes=(cfg.hidden,), max_iter=cfg.spred_max_iter, lr=cfg.spred_lr,
            weight_decay=cfg.spred_weight_decay, warm_start=True, random_state=seed,
        )  # fmt: skip
        out = {}
        for k in sorted(ks, reverse=True):
            t = time.perf_counter()
            sel.set_params(n_features_to_select=k).fit(X, y)
            seconds = time.perf_counter() - t
            out[k] = Selection(sel.get_support(indices=True), sel.predict(X_test), seconds)
        return out

    select.__name__ = f"select_{model}"
    return select


SELECTORS = {f"spred_{m}": _select_spred(m) for m in ("linear", "mlp", "ensemble")} | dict(BASELINES)


# --------------------------------------------------------------------------- one split


def _refit_accuracy(X, y, X_test, y_test, idx) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    if len(idx) == 0:
        return math.nan, math.nan
    svm = SVC(kernel="rbf", C=1.0, gamma="scale").fit(X[:, idx], y).score(X_test[:, idx], y_test)
    logreg = LogisticRegression(max_iter=5000).fit(X[:, idx], y).score(X_test[:, idx], y_test)
    return float(svm), float(logreg)


def run_split(name: str, X: np.ndarray, y: np.ndarray, seed: int, cfg: GenesConfig) -> list[dict]:
    """Every method on the split of ``seed``: one row per method and k."""
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.preprocessing import StandardScaler

    train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=cfg.test_size, random_state=seed).split(X, y))
    scaler = StandardScaler().fit(X[train])
    Xtr, Xte = scaler.transform(X[train]), scaler.transform(X[test])
    ytr, yte = y[train], y[test]
    ks = tuple(k for k in cfg.ks if k <= X.shape[1])
    split = {"dataset": name, "n_samples": len(y), "n_features": X.shape[1], "n_classes": int(np.unique(y).size), "seed": seed}
    rows = []
    for method in cfg.methods:
        try:
            with _common.torch_seed(seed):
                result = SELECTORS[method](Xtr, ytr, Xte, ks, seed, cfg)
        except Exception as exc:  # one method failing must not cost the other methods' results
            message = str(exc).splitlines()
            error = type(exc).__name__ + (f": {message[0]}" if message else "")
            logger.warning("%s failed on %s (seed %d), recorded as missing: %s", method, name, seed, error)
            rows += [{**split, "method": method, "k": k, "n_selected": 0, "acc_svm": math.nan, "acc_logreg": math.nan,
                      "acc_own": math.nan, "fit_seconds": math.nan, "shared_fit": False, "selected": "", "error": error}
                     for k in ks]  # fmt: skip
            continue
        for k in ks:
            s = result[k]
            if len(s.indices) != k:
                raise RuntimeError(f"{method} returned {len(s.indices)} features for k={k} on {name} (seed {seed}).")
            svm, logreg = _refit_accuracy(Xtr, ytr, Xte, yte, s.indices)
            own = float(np.mean(s.y_pred == yte)) if s.y_pred is not None else math.nan
            rows.append({
                **split, "method": method, "k": k, "n_selected": len(s.indices), "acc_svm": svm, "acc_logreg": logreg,
                "acc_own": own, "fit_seconds": s.seconds, "shared_fit": s.shared,
                "selected": " ".join(str(int(i)) for i in np.sort(s.indices)), "error": "",
            })  # fmt: skip
        logger.debug("%s seed %d %s: %s", name, seed, method, {k: round(result[k].seconds, 2) for k in ks})
    return rows


# --------------------------------------------------------------------------- summaries


def summarise(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and std over seeds per (dataset, method, k); fit time per split (all k together)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["method"], r["k"])].append(r)
    per_split = defaultdict(float)
    for r in rows:
        per_split[(r["dataset"], r["method"], r["seed"])] += r["fit_seconds"]  # NaN for a split where the method failed
    out = []
    for (dataset, method, k), rs in groups.items():
        row = {"dataset": dataset, "method": method, "k": k, "n_seeds": len(rs)}
        for score in SCORES:
            vals = np.array([r[f"acc_{score}"] for r in rs], dtype=float)
            ok = vals[np.isfinite(vals)]
            row[f"{score}_mean"] = float(ok.mean()) if ok.size else math.nan
            row[f"{score}_std"] = float(ok.std()) if ok.size else math.nan
        row["n_failed"] = sum(bool(r.get("error")) for r in rs)
        row["fit_seconds"] = _finite_mean([r["fit_seconds"] for r in rs])
        row["seconds_per_split"] = _finite_mean([per_split[(dataset, method, r["seed"])] for r in rs])
        out.append(row)
    return out


def _finite_mean(values) -> float:
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan


def average_ranks(summary: Sequence[Mapping], methods: Sequence[str]) -> list[dict]:
    """Average rank over datasets per (method, k, score); 1 = best mean accuracy."""
    from scipy.stats import rankdata

    table = defaultdict(dict)
    for r in summary:
        table[(r["dataset"], r["k"])][r["method"]] = r
    ranks = defaultdict(list)
    for (dataset, k), by_method in table.items():
        for score in ("svm", "logreg"):  # a method that failed on every split is left out of this dataset's ranking
            present = [m for m in methods if m in by_method and math.isfinite(by_method[m][f"{score}_mean"])]
            means = np.array([by_method[m][f"{score}_mean"] for m in present])
            for m, rank in zip(present, rankdata(-means, method="average")):
                ranks[(m, k, score)].append(float(rank))
    out = []
    for (m, k, score), rs in ranks.items():
        out.append({"method": m, "k": k, "score": score, "average_rank": float(np.mean(rs)), "n_datasets": len(rs)})
    return out


def spread_check(summary: Sequence[Mapping], k: int, score: str = "svm") -> list[dict]:
    """Per dataset: the best method, the best spred variant, and whether spred is within one std of the best."""
    by_dataset = defaultdict(dict)
    for r in summary:
        if r["k"] == k:
            by_dataset[r["dataset"]][r["method"]] = r
    out = []
    for dataset, rs in by_dataset.items():
        rs = {m: r for m, r in rs.items() if math.isfinite(r[f"{score}_mean"])}
        if not rs:
            continue
        best = max(rs.values(), key=lambda r: r[f"{score}_mean"])
        spred_rows = [r for m, r in rs.items() if m in SPRED_METHODS]
        if not spred_rows:
            continue
        top = max(spred_rows, key=lambda r: r[f"{score}_mean"])
        gap = best[f"{score}_mean"] - top[f"{score}_mean"]
        out.append({"dataset": dataset, "best": best["method"], "best_mean": best[f"{score}_mean"], "best_std": best[f"{score}_std"],
                    "spred": top["method"], "spred_mean": top[f"{score}_mean"], "gap": gap,
                    "within_std": bool(gap <= best[f"{score}_std"] + 1e-12)})  # fmt: skip
    return out


def _pm(mean: float, std: float) -> str:
    return "-" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def rank_table(ranks: Sequence[Mapping], summary: Sequence[Mapping], methods: Sequence[str], ks: Sequence[int]) -> str:
    """Methods x (average rank per k and score, mean accuracy over datasets, seconds per split)."""
    look = {(r["method"], r["k"], r["score"]): r["average_rank"] for r in ranks}
    acc = defaultdict(list)
    secs = defaultdict(list)
    for r in summary:
        acc[(r["method"], r["k"])].append(r["svm_mean"])
        secs[r["method"]].append(r["seconds_per_split"])
    cols = [("method", lambda r: LABELS[r["method"]])]
    for k in ks:
        cols += [
            (f"rank SVM k={k}", lambda r, k=k: f"{look.get((r['method'], k, 'svm'), math.nan):.2f}"),
            (f"rank LogReg k={k}", lambda r, k=k: f"{look.get((r['method'], k, 'logreg'), math.nan):.2f}"),
            (f"acc SVM k={k}", lambda r, k=k: f"{_finite_mean(acc[(r['method'], k)]):.3f}"),
        ]
    cols.append(("s / split (all k)", lambda r: f"{_finite_mean(secs[r['method']]):.1f}"))
    return _common.markdown_table([{"method": m} for m in methods], cols)


def dataset_table(summary: Sequence[Mapping], methods: Sequence[str], k: int, score: str) -> str:
    """Datasets x methods: mean ± std accuracy over seeds."""
    look = {(r["dataset"], r["method"]): r for r in summary if r["k"] == k}
    datasets = sorted({r["dataset"] for r in summary})
    cols = [("dataset", "dataset")] + [
        (LABELS[m], lambda row, m=m: _pm(look[(row["dataset"], m)][f"{score}_mean"], look[(row["dataset"], m)][f"{score}_std"]) if (row["dataset"], m) in look else "-")
        for m in methods
    ]  # fmt: skip
    return _common.markdown_table([{"dataset": d} for d in datasets], cols)


def plot(ranks: Sequence[Mapping], methods: Sequence[str], ks: Sequence[int], path: str | Path) -> Path:
    """Average rank (lower is better) of every method, one panel per k, SVM and LogReg side by side."""
    _common.import_matplotlib()
    from matplotlib.figure import Figure

    look = {(r["method"], r["k"], r["score"]): r["average_rank"] for r in ranks}
    fig = Figure(figsize=(5 * len(ks), 0.4 * len(methods) + 1.5), layout="constrained")
    axes = fig.subplots(1, len(ks), sharey=True, squeeze=False)[0]
    ypos = np.arange(len(methods))
    for ax, k in zip(axes, ks):
        for j, (score, colour) in enumerate((("svm", "tab:blue"), ("logreg", "tab:orange"))):
            vals = [look.get((m, k, score), np.nan) for m in methods]
            ax.barh(ypos + (j - 0.5) * 0.38, vals, height=0.38, color=colour, label={"svm": "RBF SVM", "logreg": "logistic regression"}[score])
        ax.set_yticks(ypos, [LABELS[m] for m in methods])
        ax.set_xlabel("average rank over datasets (lower is better)")
        ax.set_title(f"k = {k} genes")
    axes[0].invert_yaxis()  # the y axis is shared: invert it once, first method on top
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------- the experiment


@dataclass
class GenesResults:
    rows: list[dict]
    summary: list[dict]
    ranks: list[dict]
    files: dict[str, Path]
    seconds: float
    cpu_seconds: float = math.nan


def run_experiment(cfg: GenesConfig, out: str | Path | None = None, *, plot_figure: bool = True, progress: bool | None = None) -> GenesResults:
    """Run every (dataset, seed) and write the outputs; see the module docstring."""
    from tqdm.auto import tqdm

    from spred.datasets import load_dataset

    cfg = check_config(cfg)
    with _common.output_folder(out, NAME) as folder:
        names = dataset_names(cfg)
        start, cpu_start = time.perf_counter(), time.process_time()
        rows: list[dict] = []
        bar = tqdm(total=len(names) * len(cfg.seeds), desc="genes", unit="split", disable=progress is False)
        for name in names:
            X, y = load_dataset(name, return_X_y=True)
            X = np.asarray(X, dtype=np.float64)
            for seed in cfg.seeds:
                bar.set_postfix(dataset=name, seed=seed, refresh=False)
                rows += run_split(name, X, y, seed, cfg)
                folder.write_csv(rows, "genes_runs.csv", CSV_COLUMNS)  # an interrupted run keeps its finished splits (staged)
                bar.update(1)
        bar.close()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        summary = summarise(rows)
        methods = [m for m in METHODS if m in cfg.methods]
        ranks = average_ranks(summary, methods)
        files = {
            "runs": folder.final("genes_runs.csv"),
            "summary": folder.write_csv(summary, "genes_summary.csv"),
            "ranks": folder.write_csv(ranks, "genes_ranks.csv"),
        }
        if plot_figure:
            plot(ranks, methods, [k for k in cfg.ks if any(r["k"] == k for r in rows)], folder.file("genes.png"))
            files["figure"] = folder.final("genes.png")
        files["config"] = folder.write_config(cfg, extra={"datasets_run": names, "wall_seconds": seconds, "cpu_seconds": cpu_seconds})
    return GenesResults(rows, summary, ranks, files, seconds, cpu_seconds)


def report(results: GenesResults, cfg: GenesConfig) -> str:
    """The markdown printed at the end: average ranks, per-dataset SVM accuracy, the spread check."""
    methods = [m for m in METHODS if m in cfg.methods]
    ks = sorted({r["k"] for r in results.rows})
    parts = [f"Average rank over {len({r['dataset'] for r in results.rows})} datasets, {len(cfg.seeds)} splits each (1 = best):", "",
             rank_table(results.ranks, results.summary, methods, ks)]  # fmt: skip
    for k in ks:
        parts += ["", f"Test accuracy, RBF SVM on the selected genes, k = {k} (mean ± std over splits):", "",
                  dataset_table(results.summary, methods, k, "svm")]  # fmt: skip
        checks = spread_check(results.summary, k)
        if checks:
            within = sum(c["within_std"] for c in checks)
            parts += ["", f"k = {k}: best spred variant within one std of the best method on {within} of {len(checks)} datasets."]
    failed = sorted({(r["dataset"], r["seed"], r["method"], r["error"]) for r in results.rows if r.get("error")})
    if failed:
        parts += ["", f"{len(failed)} method run(s) failed and are left out of the means and ranks (error column of genes_runs.csv):"]
        parts += [f"- {m} on {d} (seed {seed}): {e}" for d, seed, m, e in failed]
    return "\n".join(parts)


def add_arguments(parser) -> None:
    """Options of ``spred run genes``."""
    _common.add_common_arguments(parser, NAME, "5 datasets x 3 splits (about 13 minutes on 2 cores)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="gene-expression datasets (default: all)")
    parser.add_argument("--ks", type=_common.positive_int, nargs="+", default=None, metavar="K", help="numbers of genes to select (default 10 50)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="methods to run (default: all)")
    parser.add_argument("--max-iter", dest="spred_max_iter", type=_common.positive_int, default=None, help="SpredSelector epochs per path point (default 200)")


def config_from_args(args) -> GenesConfig:
    """The resolved config: defaults, ``--quick``, ``--config FILE``, then the other options."""
    cli = {"seeds": args.seeds, "datasets": args.datasets, "ks": args.ks, "methods": args.methods, "spred_max_iter": args.spred_max_iter}
    cfg = _common.resolve_config(GenesConfig, quick=args.quick, quick_values=QUICK, config_file=args.config, cli_values=cli)
    return check_config(cfg)


def run(args) -> int:
    """``spred run genes``: run, write the outputs, print the tables; returns the exit code."""
    cfg = config_from_args(args)
    with _common.num_threads(args.threads):
        results = run_experiment(cfg, args.out, plot_figure=not args.no_plot)
    print(report(results, cfg))
    print()
    print(f"wrote {', '.join(str(p) for p in results.files.values())} in {results.seconds:.1f} s ({results.cpu_seconds:.1f} s CPU)")
    return 0
