"""Lasso benchmark: spred vs scikit-learn (CD), skglm, celer and SGDRegressor(penalty='l1').

All solvers minimise the same objective, scikit-learn's Lasso
``P(w, b) = (1/(2n)) ||y - Xw - b||^2 + alpha ||w||_1`` (SGDRegressor's
``squared_error`` loss is ``(p - y)^2 / 2``, so its ``alpha`` is the same).

How time-to-suboptimality is measured
-------------------------------------
* Reference ``P*``: the best objective reached by any solver at its tightest setting
  (spred ``tol=1e-12``, scikit-learn / skglm / celer ``tol=1e-12``).
* Each solver runs on a ladder of settings of increasing accuracy: ``tol`` from 1e-1
  down to 1e-12 (spred, scikit-learn, skglm, celer) or ``max_iter`` epochs from 1 to 200
  with ``tol=None`` (SGDRegressor). Every run is a fresh ``fit`` (no warm start); its
  wall-clock time and objective ``P`` are recorded. The ladder of a solver stops when
  three consecutive settings give the same objective (to 1e-14, i.e. converged), or
  when one fit takes longer than ``--time-cap`` seconds.
* The time to reach ``eps`` is the smallest fit time among the settings whose relative
  suboptimality ``(P - P*) / |P*|`` is ``<= eps`` ("-" when none is). The settings that
  decide a time are re-timed so that each time is the median of ``--repeats`` fits.
* Runs are single-threaded (``OMP/MKL/OPENBLAS/NUMBA`` threads and torch threads = 1)
  and the numba-compiled solvers (skglm, celer) are warmed up before timing. ``--clock cpu``
  times each fit by the CPU time of the process (``time.process_time``) instead of the wall
  clock: on a shared, loaded machine the wall clock also counts the time the process waits
  for a core.

Problems: (a) orthogonal design n=2000, p=1000; (b) correlated Gaussian (AR(1),
rho=0.6) n=500, p=5000, 20 true nonzeros, alpha_max/10 and /100; (c) n=20000, p=500;
(d) scikit-learn's diabetes data; (e) a gene-expression data set (ALLAML, 72 x 7129,
standardised, targets = labels +-1) through ``spred.datasets`` (set SPRED_DATA);
(f) a sparse design (scipy.sparse CSC, n=2000, p=20000, density 0.5%, 40 true nonzeros),
alpha_max/20. ``--large`` adds (g), the large case of the official spred implementation's
README: Gaussian design n=100, p=400,000, 20 true nonzeros, alpha_max/10 (X alone is
320 MB; a ladder of every solver takes minutes, so it is off by default).
Then a minibatch case: support recovery of spred's SGD/Adagrad/Adam minibatch solvers
(streamed in chunks with ``partial_fit``, and ``fit``) against ``SGDRegressor(penalty='l1')``
on standardised and on raw-scale features. Every streamed solver's step size (SGDRegressor's
``eta0``) is tuned on seeds 0-2 and the table reports ``--minibatch-seeds`` other seeds.

    python benchmarks/lasso.py [--quick] [--large] [--repeats 3] [--clock wall|cpu] [--out DIR] [--problems a b ...]

Writes DIR/lasso_runs.csv (every fit), DIR/lasso_summary.csv (times to 1e-4 / 1e-6)
and DIR/lasso_minibatch.csv, and prints markdown tables.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import Lasso, SGDRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from spred.linear_model import SpredLasso, alpha_max  # noqa: E402

EPS = (1e-4, 1e-6)
TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8, 1e-10, 1e-12)
SGD_EPOCHS = (1, 2, 5, 10, 20, 50, 100, 200)


# ------------------------------------------------------------------------------ problems
def _correlated(n, p, rho, k, seed):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, p))
    X = np.empty_like(Z)
    X[:, 0] = Z[:, 0]
    c = np.sqrt(1 - rho**2)
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + c * Z[:, j]
    w = np.zeros(p)
    idx = rng.choice(p, k, replace=False)
    w[idx] = rng.choice([-1.0, 1.0], k) * (1 + rng.random(k))
    y = X @ w
    y += rng.standard_normal(n) * np.linalg.norm(y) / np.sqrt(n) / 3  # SNR 3
    return X, y


def _orthogonal(n, p, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, p)))
    X = Q * np.sqrt(n)
    w = np.zeros(p)
    w[rng.choice(p, 50, replace=False)] = 3 * rng.standard_normal(50)
    return X, X @ w + rng.standard_normal(n)


def _tall(n, p, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[rng.choice(p, 30, replace=False)] = rng.standard_normal(30)
    return X, X @ w + rng.standard_normal(n)


def _gene():
    try:
        from spred.datasets import load_dataset

        X, y = load_dataset("ALLAML", return_X_y=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "skip (e)"
        print(f"(e) skipped: the gene-expression data could not be loaded ({type(exc).__name__}: "
              f"{exc}). Set SPRED_DATA to the folder with the staged datasets.")
        return None
    X = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    return X, 2.0 * (np.asarray(y) == np.unique(y)[1]) - 1.0


def _sparse(n, p, density, k, seed):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = sp.random(n, p, density=density, format="csc", random_state=seed, data_rvs=rng.standard_normal)
    w = np.zeros(p)
    w[rng.choice(p, k, replace=False)] = rng.choice([-1.0, 1.0], k) * (1 + rng.random(k))
    y = X @ w
    return X, y + rng.standard_normal(n) * np.linalg.norm(y) / np.sqrt(n) / 3


def _large(seed=0):
    rng = np.random.default_rng(seed)
    n, p, k = 100, 400_000, 20
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[rng.choice(p, k, replace=False)] = rng.choice([-1.0, 1.0], k) * (1 + rng.random(k))
    return X, X @ w + 0.5 * rng.standard_normal(n)


def problems(quick, large=False):
    s = 4 if quick else 1
    out = {}
    X, y = _orthogonal(2000 // s, 1000 // s, 0)
    out["a"] = [("(a) orthogonal %dx%d" % X.shape, X, y, 10)]
    X, y = _correlated(500 // (2 if quick else 1), 5000 // s, 0.6, 20, 0)
    out["b"] = [("(b) correlated %dx%d" % X.shape, X, y, 10), ("(b) correlated %dx%d" % X.shape, X, y, 100)]
    X, y = _tall(20000 // s, 500 // (2 if quick else 1), 1)
    out["c"] = [("(c) tall %dx%d" % X.shape, X, y, 10)]
    X, y = load_diabetes(return_X_y=True)
    out["d"] = [("(d) diabetes %dx%d" % X.shape, X, y, 10), ("(d) diabetes %dx%d" % X.shape, X, y, 100)]
    gene = _gene()
    if gene is not None:
        X, y = gene
        out["e"] = [("(e) ALLAML %dx%d" % X.shape, X, y, 10), ("(e) ALLAML %dx%d" % X.shape, X, y, 100)]
    X, y = _sparse(2000 // s, 20000 // s, 0.005, 40, 2)
    out["f"] = [("(f) sparse %dx%d" % X.shape, X, y, 20)]
    if large:
        X, y = _large()
        out["g"] = [("(g) large %dx%d" % X.shape, X, y, 10)]
    return out


# ------------------------------------------------------------------------------ solvers
def objective(X, y, coef, intercept, alpha):
    r = y - np.asarray(X @ coef).ravel() - intercept
    return 0.5 * float(r @ r) / X.shape[0] + alpha * float(np.abs(coef).sum())


def _solvers():
    solvers = {
        "spred": lambda a, tol: SpredLasso(alpha=a, tol=tol, max_iter=100_000),
        "sklearn": lambda a, tol: Lasso(alpha=a, tol=tol, max_iter=1_000_000),
    }
    try:
        import skglm

        solvers["skglm"] = lambda a, tol: skglm.Lasso(alpha=a, tol=tol, max_iter=1000, max_epochs=1_000_000)
    except ImportError:
        print("skglm not installed: skipped")
    try:
        import celer

        solvers["celer"] = lambda a, tol: celer.Lasso(alpha=a, tol=tol, max_iter=1000, max_epochs=1_000_000)
    except ImportError:
        print("celer not installed: skipped")
    solvers["SGDRegressor"] = lambda a, ep: SGDRegressor(penalty="l1", alpha=a, max_iter=ep, tol=None,
                                                          random_state=0)
    return solvers


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def _fit(make, X, y):
    est = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = _clock()
        est.fit(X, y)
        elapsed = _clock() - t
    return elapsed, np.asarray(est.coef_, dtype=np.float64).ravel(), float(np.ravel(est.intercept_)[0])


def warm_up(solvers):
    X, y = _tall(60, 40, 5)
    SpredLasso(alpha=0.01, solver="adam").partial_fit(X, y)  # torch start-up
    import scipy.sparse as sp

    for make in solvers.values():
        for setting, Xw in ((1e-3, X), (1, X), (1e-3, sp.csc_matrix(X))):  # dense and sparse kernels
            try:
                _fit(lambda: make(0.01, setting), Xw, y)
            except Exception:  # noqa: BLE001 - the ladder of one solver type only
                pass


def run_problem(name, X, y, div, solvers, repeats, time_cap):
    a = alpha_max(X, y) / div
    rows = []
    for solver, make in solvers.items():
        ladder = SGD_EPOCHS if solver == "SGDRegressor" else TOLS
        for setting in ladder:
            factory = (lambda mk=make, s=setting: mk(a, s))  # bind now, not at call time
            elapsed, coef, b = _fit(factory, X, y)
            rows.append({"problem": name, "alpha": f"alpha_max/{div}", "solver": solver,
                         "setting": setting, "time": elapsed, "objective": objective(X, y, coef, b, a),
                         "nnz": int(np.count_nonzero(coef)), "times": [elapsed],
                         "make": factory})
            if elapsed > time_cap:
                break
            prev = [r["objective"] for r in rows if r["solver"] == solver]
            if len(prev) >= 3 and abs(prev[-1] - prev[-2]) <= 1e-14 * abs(prev[-1]) \
                    and abs(prev[-2] - prev[-3]) <= 1e-14 * abs(prev[-1]):
                break  # converged to machine precision: tighter settings only cost time
    p_star = min(r["objective"] for r in rows)
    for r in rows:
        r["subopt"] = (r["objective"] - p_star) / abs(p_star)
    # stop counting a solver past its first 1e-6 setting; re-time the deciding settings
    summary = {}
    for solver in solvers:
        mine = [r for r in rows if r["solver"] == solver]
        for eps in EPS:
            hits = [r for r in mine if r["subopt"] <= eps]
            if not hits:
                summary[(solver, eps)] = None
                continue
            best = min(hits, key=lambda r: r["time"])
            while len(best["times"]) < repeats:
                best["times"].append(_fit(best["make"], X, y)[0])
            best["time"] = statistics.median(best["times"])
            summary[(solver, eps)] = best
        # re-select after re-timing
        for eps in EPS:
            hits = [r for r in mine if r["subopt"] <= eps and len(r["times"]) >= repeats]
            summary[(solver, eps)] = min(hits, key=lambda r: r["time"]) if hits else None
    return rows, summary, p_star


# ------------------------------------------------------------------------------ minibatch
# Step sizes of the streamed solvers are tuned on seeds 0-2 (TUNE_SEEDS) over these grids, for each feature type,
# and the table reports the other seeds. SGDRegressor keeps its default schedule (invscaling, power_t=0.25) and
# gets its eta0 tuned the same way.
MB_GRIDS = {
    "standardised": {"sgd": (0.03, 0.1, 0.3), "adagrad": (0.03, 0.1, 0.3), "adam": (0.003, 0.01, 0.03),
                     "SGDRegressor": (0.001, 0.01, 0.1)},
    "raw scales": {"sgd": (0.003, 0.01, 0.03), "adagrad": (0.03, 0.1, 0.3), "adam": (0.003, 0.01, 0.03),
                   "SGDRegressor": (0.0001, 0.001, 0.01)},
}
TUNE_SEEDS = (0, 1, 2)


def minibatch_problem(quick, scaled, seed):
    """A correlated problem with a sparse truth and the alpha where the exact Lasso is closest to it."""
    rng = np.random.default_rng(seed)
    n, p, k = (5000, 100, 8) if quick else (20000, 200, 10)
    X, _ = _correlated(n, p, 0.5, 1, seed)
    w = np.zeros(p)
    true = rng.choice(p, k, replace=False)
    w[true] = rng.choice([-1.0, 1.0], k) * (0.5 + rng.random(k))
    y = X @ w + rng.standard_normal(n)
    if not scaled:  # raw features on different scales (no StandardScaler)
        X = X * np.exp(rng.uniform(np.log(0.2), np.log(5.0), p))
    support = w != 0
    # alpha: the middle of the range where the exact Lasso support is closest to the truth
    amax = alpha_max(X, y)
    grid = amax * np.geomspace(0.5, 0.005, 40)
    dist = np.array([np.count_nonzero((SpredLasso(alpha=a).fit(X, y).coef_ != 0) != support) for a in grid])
    good = grid[dist == dist.min()]
    return X, y, support, good[len(good) // 2]


def _streamed(solver, step, a, seed):
    if solver == "SGDRegressor":
        return SGDRegressor(penalty="l1", alpha=a, eta0=step, random_state=seed)
    return SpredLasso(alpha=a, solver=solver, learning_rate=step, batch_size=256, random_state=seed)


def _label(solver, step):
    name = "SGDRegressor(l1)" if solver == "SGDRegressor" else f"spred {solver.upper() if solver == 'sgd' else solver.capitalize()}"
    return f"{name} ({'eta0' if solver == 'SGDRegressor' else 'lr'} {step:g})"


def minibatch_case(quick, scaled, seeds, steps=None):
    """Support recovery of minibatch solvers on streamed problems, one row per method and seed.

    Streamed: the data arrive in 20 chunks, each seen once per pass, ``partial_fit`` per chunk
    (5 passes; 3 with ``--quick``). In memory: ``fit`` with the same number of epochs.
    ``steps`` maps solver -> one step size, or -> several (a tuning grid: every value is run).
    """
    features = "standardised" if scaled else "raw scales"
    steps = MB_GRIDS[features] if steps is None else steps
    epochs = 3 if quick else 5
    results = []
    for seed in seeds:
        X, y, support, a = minibatch_problem(quick, scaled, seed)
        exact = SpredLasso(alpha=a, tol=1e-10).fit(X, y).coef_ != 0
        chunks = np.array_split(np.arange(len(y)), 20)

        def record(method, solver, step, how, est, elapsed):
            nz = est.coef_.ravel() != 0 if est is not None else np.ones_like(support)
            results.append({"features": features, "method": method, "solver": solver, "step": step, "how": how,
                            "seed": seed, "alpha": a, "epochs": epochs, "time": elapsed, "diverged": est is None,
                            "true_pos": int((nz & support).sum()), "false_pos": int((nz & ~support).sum()),
                            "false_neg": int((~nz & support).sum()),
                            "true_support": bool(np.array_equal(nz, support)),
                            "lasso_support": bool(np.array_equal(nz, exact))})

        runs = [(solver, step, "partial_fit") for solver, vals in steps.items() for step in np.atleast_1d(vals)]
        for solver in ("sgd", "SGDRegressor"):  # fit on the data in memory, at the same step size
            runs += [(solver, step, "fit") for step in np.atleast_1d(steps[solver])]
        for solver, step, how in runs:
            est = _streamed(solver, float(step), a, seed)
            if how == "fit":
                est.set_params(max_iter=epochs, **({"tol": None} if solver == "SGDRegressor" else {}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                t = time.perf_counter()
                try:
                    if how == "fit":
                        est.fit(X, y)
                    else:
                        for _ in range(epochs):
                            for c in chunks:
                                est.partial_fit(X[c], y[c])
                    if not np.all(np.isfinite(est.coef_)):
                        est = None
                except (FloatingPointError, ValueError):  # spred raises the former, SGDRegressor the latter
                    est = None
                extra = ", fit (+ polish)" if how == "fit" and solver == "sgd" else f", {how}"
                record(_label(solver, float(step)) + extra, solver, float(step), how, est, time.perf_counter() - t)
    return results


def tune_minibatch(quick, scaled):
    """The step size of each streamed solver with the most tuning seeds on the exact-Lasso support (ties: fewer errors)."""
    rows = minibatch_case(quick, scaled, TUNE_SEEDS)
    chosen = {}
    for solver in MB_GRIDS["standardised"]:
        def score(step):
            rs = [r for r in rows if r["solver"] == solver and r["step"] == step and r["how"] == "partial_fit"]
            return (sum(r["lasso_support"] for r in rs), -np.mean([r["false_pos"] + r["false_neg"] for r in rs]), -step)
        chosen[solver] = max({r["step"] for r in rows if r["solver"] == solver}, key=score)
    return chosen, rows


def minibatch_table(rows):
    """Markdown lines: per features and method, seeds on the true / Lasso support, mean FP and FN."""
    lines = ["| features | method | seeds with the true support | with the Lasso support | FP (mean, max) | "
             "FN (mean, max) | time (s, median) |", "|---|---|---:|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["features"], r["method"]) for r in rows):
        rs = [r for r in rows if (r["features"], r["method"]) == key]
        fp = [r["false_pos"] for r in rs]
        fn = [r["false_neg"] for r in rs]
        div = sum(r["diverged"] for r in rs)
        lines.append(
            f"| {key[0]} | {key[1]} | {sum(r['true_support'] for r in rs)}/{len(rs)} | "
            f"{sum(r['lasso_support'] for r in rs)}/{len(rs)} | {np.mean(fp):.1f}, {max(fp)} | "
            f"{np.mean(fn):.1f}, {max(fn)} | {statistics.median(r['time'] for r in rs):.2f}"
            + (f" ({div} diverged)" if div else "") + " |")
    return lines


# ------------------------------------------------------------------------------ main
def _fmt(r):
    return "-" if r is None else f"{r['time']:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-cap", type=float, default=60.0, help="stop a ladder after a fit this long (s)")
    parser.add_argument("--problems", nargs="+", default=list("abcdefg"))
    parser.add_argument("--large", action="store_true", help="add (g), n=100, p=400,000 (minutes)")
    parser.add_argument("--no-minibatch", action="store_true")
    parser.add_argument("--solvers", nargs="+", default=None,
                        help="time only these solvers (default: all installed; spred is always run)")
    parser.add_argument("--minibatch-seeds", type=int, default=8,
                        help="held-out seeds of the minibatch case, after the 3 tuning seeds (default 8)")
    parser.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                        help="time the fits by wall clock, or by the CPU time of this process (robust on a "
                             "loaded machine; the runs are single-threaded, so both count the same work)")
    parser.add_argument("--out", default="results/bench_lasso")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCK[args.clock]
    repeats = 1 if args.quick else args.repeats
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    solvers = _solvers()
    if args.solvers is not None:
        solvers = {k: v for k, v in solvers.items() if k == "spred" or k in args.solvers}
    warm_up(solvers)
    all_rows, table = [], []
    for key, plist in problems(args.quick, args.large).items():
        if key not in args.problems:
            continue
        for name, X, y, div in plist:
            rows, summary, p_star = run_problem(name, X, y, div, solvers, repeats, args.time_cap)
            all_rows += rows
            table.append((name, div, summary))
    names = list(solvers)
    print(f"\nTime (s, {args.clock} clock, median of {repeats}) to reach relative suboptimality 1e-4 / 1e-6; "
          "single thread.\n")
    others = [s for s in ("skglm", "celer", "sklearn") if s in names]
    print("| problem | alpha | " + " | ".join(names) + " | "
          + " | ".join(f"spred/{o} 1e-6" for o in others) + " |")
    print("|---|---|" + "---:|" * (len(names) + len(others)))
    ratios = {(o, eps): [] for o in others for eps in EPS}
    summary_rows = []
    for name, div, summary in table:
        cells = [f"{_fmt(summary[(s, 1e-4)])} / {_fmt(summary[(s, 1e-6)])}" for s in names]
        rat = {}
        for o in others:
            for eps in EPS:
                sp_, ot = summary.get(("spred", eps)), summary.get((o, eps))
                if sp_ is not None and ot is not None:
                    ratios[(o, eps)].append(sp_["time"] / ot["time"])
                    rat[(o, eps)] = f"{sp_['time'] / ot['time']:.2f}"
        print(f"| {name} | alpha_max/{div} | " + " | ".join(cells) + " | "
              + " | ".join(rat.get((o, 1e-6), "-") for o in others) + " |")
        for s in names:
            for eps in EPS:
                r = summary[(s, eps)]
                summary_rows.append({"problem": name, "alpha": f"alpha_max/{div}", "solver": s, "eps": eps,
                                     "time": None if r is None else r["time"],
                                     "setting": None if r is None else r["setting"]})
    for (o, eps), vals in ratios.items():
        if vals:
            print(f"median spred/{o} at {eps:g}: {statistics.median(vals):.2f}, max {max(vals):.2f} "
                  f"(over {len(vals)} problems)")
    with open(out / "lasso_runs.csv", "w", newline="") as fh:
        fields = ["problem", "alpha", "solver", "setting", "time", "objective", "subopt", "nnz"]
        wr = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(all_rows)
    with open(out / "lasso_summary.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["problem", "alpha", "solver", "eps", "time", "setting"])
        wr.writeheader()
        wr.writerows(summary_rows)
    if not args.no_minibatch:
        eval_seeds = range(len(TUNE_SEEDS), len(TUNE_SEEDS) + args.minibatch_seeds)
        mb, tuning = [], []
        for scaled in (True, False):
            chosen, rows = tune_minibatch(args.quick, scaled)
            tuning += rows
            print(f"\nMinibatch step sizes tuned on seeds {list(TUNE_SEEDS)} "
                  f"({'standardised' if scaled else 'raw scales'}): {chosen}")
            mb += minibatch_case(args.quick, scaled, eval_seeds, chosen)
        print(f"\nMinibatch case on seeds {list(eval_seeds)} (held out from the tuning): support recovery (the true "
              "support; the exact-Lasso support at the same alpha).\n")
        print("\n".join(minibatch_table(mb)))
        for name, rows in (("lasso_minibatch.csv", mb), ("lasso_minibatch_tuning.csv", tuning)):
            with open(out / name, "w", newline="") as fh:
                wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
    print(f"\nCSV files written to {args.out}")


if __name__ == "__main__":
    main()
