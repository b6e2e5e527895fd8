"""Spred against celer on the panel's closest cells, fits interleaved, many of them.

``benchmarks/lasso.py`` times each setting by the median of ``--repeats`` fits, one solver
after the other. On a loaded machine a fit of the diabetes data (about 1 ms) varies by a
factor of two from one fit to the next, so three fits do not settle a ratio near 1.5. Here
spred and celer alternate fit by fit in one process (CPU time of the process, single thread),
so that both see the same load, and each gets many fits. celer runs at the tolerance at
which its ladder in ``lasso.py`` reached a relative suboptimality of 1e-6 (printed, with
spred's, against spred's ``tol=1e-12`` solution).

    python benchmarks/lasso_interleaved.py [--fits-small 301] [--fits-large 21]
"""

from __future__ import annotations

import argparse
import time

from lasso import _correlated, objective  # first: sets the single-thread variables before NumPy loads

import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402

from spred.linear_model import SpredLasso, alpha_max  # noqa: E402


def compare(name, X, y, div, celer_tol, fits):
    import celer

    a = alpha_max(X, y) / div
    ref = SpredLasso(alpha=a, tol=1e-12, max_iter=100_000).fit(X, y)
    p_star = objective(X, y, ref.coef_, ref.intercept_, a)
    make = {"spred": lambda: SpredLasso(alpha=a, tol=1e-6, max_iter=100_000),
            "celer": lambda: celer.Lasso(alpha=a, tol=celer_tol, max_iter=1000, max_epochs=1_000_000)}
    subopt = {}
    for key, new in make.items():  # also the warm-up
        m = new().fit(X, y)
        subopt[key] = (objective(X, y, m.coef_, m.intercept_, a) - p_star) / abs(p_star)
    times = {key: [] for key in make}
    for _ in range(fits):
        for key, new in make.items():
            t = time.process_time()
            new().fit(X, y)
            times[key].append(time.process_time() - t)
    med = {key: float(np.median(v)) for key, v in times.items()}
    cells = []
    for key in make:
        lo, hi = np.percentile(times[key], [25, 75])
        tol = "" if key == "spred" else f" (tol={celer_tol:g})"
        cells.append(f"{key}{tol} {1e3 * med[key]:.3f} ms [IQR {1e3 * lo:.3f}-{1e3 * hi:.3f}], "
                     f"subopt {subopt[key]:.1e}")
    print(f"{name}: " + "; ".join(cells) + f"; spred/celer {med['spred'] / med['celer']:.2f} ({fits} fits each)",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits-small", type=int, default=301, help="fits of each solver on the diabetes data")
    parser.add_argument("--fits-large", type=int, default=21, help="fits of each solver on (b)")
    args = parser.parse_args(argv)
    Xd, yd = load_diabetes(return_X_y=True)
    compare("(d) diabetes, alpha_max/10", Xd, yd, 10, 1e-2, args.fits_small)
    compare("(d) diabetes, alpha_max/100", Xd, yd, 100, 1e-4, args.fits_small)
    Xb, yb = _correlated(500, 5000, 0.6, 20, 0)
    compare("(b) correlated 500x5000, alpha_max/100", Xb, yb, 100, 1e-5, args.fits_large)


if __name__ == "__main__":
    main()
