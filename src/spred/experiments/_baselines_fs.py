"""Feature selectors compared in ``spred run genes`` (the paper's gene-selection task).

Every selector has the signature ``select(X, y, X_test, ks, seed, cfg) -> {k: Selection}``:
it sees only the (standardised) training part ``X, y`` and returns, for each number
of features ``k`` in ``ks``, the indices of exactly ``k`` features, the test
predictions of its own ``k``-feature predictor when it has one, and the seconds
spent. A selector that ranks all features once (ANOVA, HSIC-Lasso, LassoNet, the
MLPs, random) returns prefixes of one ranking: the fit is timed once, on the
largest ``k``, and the smaller ``k`` are marked ``shared``.

Settings that differ from a package's defaults (to fit the benchmark's budget on a
laptop CPU) are stated in each docstring and in docs/feature_selection.md.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import types
import warnings
from dataclasses import dataclass

import numpy as np

from spred.experiments._common import quiet_logs

__all__ = ["BASELINES", "Selection", "l1_logistic_support", "select_anova", "select_hsic_lasso", "select_l1_logistic",
           "select_lassonet", "select_mlp_l1", "select_mlp_wd", "select_random"]  # fmt: skip


@dataclass(frozen=True)
class Selection:
    """The result of one selector for one ``k``."""

    indices: np.ndarray
    y_pred: np.ndarray | None  # own test predictions (None: the method has no k-feature predictor)
    seconds: float
    shared: bool = False  # True: taken from the fit of a larger k (its time is counted there)


def _from_ranking(order: np.ndarray, ks, seconds: float) -> dict[int, Selection]:
    """Prefixes of one ranking; the time goes to the largest k."""
    top = max(ks)
    return {k: Selection(np.sort(order[:k]), None, seconds if k == top else 0.0, k != top) for k in ks}


def _fill(first: list[int], scores: np.ndarray, k: int) -> np.ndarray:
    """``first`` (in order), then the remaining features by decreasing ``scores``, cut at ``k``."""
    seen = set(int(i) for i in first)
    rest = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen]
    return np.asarray([int(i) for i in first] + rest)[:k]


# --------------------------------------------------------------------------- filters


def select_anova(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """ANOVA F-test (``sklearn.feature_selection.f_classif``), top k by F statistic."""
    from sklearn.feature_selection import f_classif

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant features give F = nan
        F, _ = f_classif(X, y)
    order = np.argsort(-np.nan_to_num(F, nan=-1.0), kind="stable")
    return _from_ranking(order, ks, time.perf_counter() - t)


def select_random(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """k features drawn uniformly at random (seeded by the split's seed)."""
    t = time.perf_counter()
    order = np.random.default_rng(seed).permutation(X.shape[1])
    return _from_ranking(order, ks, time.perf_counter() - t)


@contextlib.contextmanager
def _hsic_numpy_compat(seed: int):
    """Let pyHSICLasso's fallback for a singular LARS step run under NumPy 2, reproducibly.

    Its ``nlars`` catches ``np.linalg.linalg.LinAlgError``, a path NumPy 2 removed, so a
    singular system (e.g. a split with duplicated genes) raised ``AttributeError``
    instead of taking the package's own fallback (a 1e-9 jitter drawn from NumPy's
    global generator). The alias is restored afterwards, and the global generator is
    seeded inside and given back its state.
    """
    missing = not hasattr(np.linalg, "linalg")
    if missing:
        np.linalg.linalg = types.SimpleNamespace(LinAlgError=np.linalg.LinAlgError)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
        if missing:
            del np.linalg.linalg


def select_hsic_lasso(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """HSIC-Lasso (pyHSICLasso, block HSIC with the package defaults B=20, M=3; one job).

    ``classification(num_feat=max(ks))`` runs its nonnegative LARS path once; the
    first ``k`` features to enter are the selection for each ``k``. When the path
    ends with fewer than ``k`` features, the rest are filled in by the marginal HSIC
    of each feature with the labels (the vector HSIC-Lasso itself computes).
    """
    from pyHSICLasso import HSICLasso

    t = time.perf_counter()
    model = HSICLasso()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _hsic_numpy_compat(seed):
        warnings.simplefilter("ignore")  # "B must be an exact divisor of the number of samples"
        model.input(np.asarray(X, dtype=np.float64), np.asarray(y))
        model.classification(num_feat=max(ks), B=cfg.hsic_block, M=cfg.hsic_permutations, n_jobs=1)
    order = _fill(list(model.get_index()), np.asarray(model.Xty).ravel(), X.shape[1])
    return _from_ranking(order, ks, time.perf_counter() - t)


def select_lassonet(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """LassoNet (lassonet 0.0.21): the path's feature importances, top k.

    Budget lower than the package defaults, which take hours per fit on a CPU here:
    hidden layer (32,), ``lambda_start = 2 * alpha_max`` (alpha_max of the linear
    group lasso; the package's automatic search costs minutes per fit; features start
    to leave at 17-90 times alpha_max on these data),
    ``path_multiplier=1.2``, ``n_iters=(200, 50)``, ``patience=(10, 5)``. The path
    runs until every feature is dropped; ``feature_importances_`` is the lambda at
    which each feature leaves.
    """
    import torch
    from lassonet import LassoNetClassifier

    from spred.feature_selection._selector import _alpha_max

    t = time.perf_counter()
    classes = np.unique(y)
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)
    start = cfg.lassonet_lambda_start * _alpha_max(np.asarray(X, dtype=np.float64), onehot)
    model = LassoNetClassifier(
        hidden_dims=(cfg.hidden,), lambda_start=start, path_multiplier=cfg.lassonet_path_multiplier, n_iters=(200, 50),
        patience=(10, 5), verbose=0, random_state=seed, torch_seed=seed, device="cpu",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        model.path(np.asarray(X, dtype=np.float32), np.asarray(y), return_state_dicts=False)
    importance = np.asarray(model.feature_importances_, dtype=np.float64)
    order = np.argsort(-importance, kind="stable")
    return _from_ranking(order, ks, time.perf_counter() - t)


# --------------------------------------------------------------------------- L1-logistic regression


def _l1_logistic(C: float, n_classes: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    est = LogisticRegression(solver="liblinear", l1_ratio=1.0, C=C, tol=1e-4, max_iter=1000, random_state=seed)
    return est if n_classes == 2 else OneVsRestClassifier(est)


def _coef_norms(model) -> np.ndarray:
    coefs = np.vstack([e.coef_ for e in model.estimators_]) if hasattr(model, "estimators_") else model.coef_
    return np.sqrt((coefs**2).sum(axis=0))


def l1_logistic_support(X, y, k: int, seed: int = 0, max_steps: int = 40) -> tuple[np.ndarray, object]:
    """Exactly ``k`` features from L1-logistic regression (liblinear; one-vs-rest for >2 classes).

    C grows geometrically from ``l1_min_c`` until at least ``k`` features have a
    nonzero coefficient, then is bisected (in log C) towards exactly ``k``; if no C
    gives exactly ``k``, the ``k`` largest coefficient norms of the fit with the
    fewest features above ``k`` are taken. Returns the indices and that fit.
    """
    from sklearn.svm import l1_min_c

    n_classes = np.unique(y).size
    c0 = l1_min_c(X, y, loss="log") * 1.01
    fits = {}

    def count(C):
        model = _l1_logistic(C, n_classes, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        norms = _coef_norms(model)
        fits[C] = (int((norms > 0).sum()), norms, model)
        return fits[C][0]

    lo, hi = None, c0
    for _ in range(max_steps):
        c = count(hi)
        if c == k:
            break
        if c > k:
            break
        lo, hi = hi, hi * 2.0
    if fits[hi][0] > k and lo is not None:
        for _ in range(max_steps // 2):
            mid = math.sqrt(lo * hi)
            c = count(mid)
            if c == k:
                hi = mid
                break
            lo, hi = (mid, hi) if c < k else (lo, mid)
    above = [C for C, (c, _, _) in fits.items() if c >= k]
    best = min(above, key=lambda C: (fits[C][0], C)) if above else max(fits)
    norms, model = fits[best][1], fits[best][2]
    order = np.argsort(-norms, kind="stable")
    return np.sort(order[:k]), model


def select_l1_logistic(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """L1-logistic regression tuned to exactly k features (see :func:`l1_logistic_support`)."""
    out = {}
    for k in ks:
        t = time.perf_counter()
        idx, _ = l1_logistic_support(X, y, k, seed)
        out[k] = Selection(idx, None, time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------- MLP baselines (spred.train.fit)


def _mlp_ranking(X, y, seed, cfg, l1: float) -> np.ndarray:
    """Train ``p -> hidden -> classes`` (ReLU) with Adam and weight decay (plus ``l1 * ||W1||_1`` in the loss);
    rank features by the L2 norm of their first-layer column."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from spred.experiments._common import torch_seed
    from spred.train import fit

    n_classes = int(np.max(y)) + 1
    with torch_seed(seed):
        net = nn.Sequential(nn.Linear(X.shape[1], cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_classes))
    first = net[0].weight

    def loss_fn(out, target):
        loss = F.cross_entropy(out, target)
        return loss + l1 * first.abs().sum() if l1 > 0 else loss

    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    with quiet_logs("spred.train"):
        fit(net, (Xt, yt), epochs=cfg.mlp_epochs, optimizer="adam", lr=cfg.mlp_lr, weight_decay=cfg.mlp_weight_decay,
            loss_fn=loss_fn, batch_size=len(Xt), seed=seed, progress=False)  # fmt: skip
    norms = torch.linalg.vector_norm(first.detach(), dim=0).double().numpy()
    return np.argsort(-norms, kind="stable")


def select_mlp_wd(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """MLP on all genes with weight decay (Adam, coupled decay ``mlp_weight_decay``), top k by first-layer column norm."""
    t = time.perf_counter()
    order = _mlp_ranking(X, y, seed, cfg, 0.0)
    return _from_ranking(order, ks, time.perf_counter() - t)


def select_mlp_l1(X, y, X_test, ks, seed, cfg) -> dict[int, Selection]:
    """MLP with ``mlp_l1 * ||W1||_1`` added to the loss (plain subgradient, Adam), top k by first-layer column norm."""
    t = time.perf_counter()
    order = _mlp_ranking(X, y, seed, cfg, cfg.mlp_l1)
    return _from_ranking(order, ks, time.perf_counter() - t)


BASELINES = {
    "hsic_lasso": select_hsic_lasso,
    "lassonet": select_lassonet,
    "l1_logistic": select_l1_logistic,
    "anova": select_anova,
    "mlp_wd": select_mlp_wd,
    "mlp_l1": select_mlp_l1,
    "random": select_random,
}
