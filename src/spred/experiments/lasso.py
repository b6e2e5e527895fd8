"""``spred run lasso``: the paper's Lasso experiment (Figure 3), on the torch API.

An orthogonal design ``X`` (``X^T X / n = I``) makes the Lasso solvable in closed form:
for scikit-learn's objective ``(1/(2n))||y - Xv||^2 + alpha*||v||_1`` the minimiser
is ``v*(alpha) = soft_threshold(X^T y / n, alpha)``. For every alpha of a grid, an
``nn.Linear`` is sparsified with ``spred.sparsify(lam=alpha)`` and trained on
``mean(r^2)/2`` by ``torch.optim.SGD`` / ``Adam`` built from ``spred.param_groups``
(coupled weight decay, i.e. exactly ``alpha*||v||_1``; DESIGN.md section 1), at the
learning rates of the paper, for a fixed budget of full-batch steps. The baseline
adds ``alpha*||v||_1`` to the loss and follows its subgradient with the same
optimizers, learning rates and steps.

Every (lr, alpha, seed) is an independent model, so all of them train at once: one
``nn.Linear(p, n_seeds)`` per (lr, alpha), row ``s`` fitting seed ``s``'s response on
the shared design, each sparsified with its own ``lam`` and handed to one optimizer
through ``spred.param_groups`` (one group per alpha, its ``lr`` set per learning
rate). Nothing couples the rows: the loss is a sum of per-row losses, SGD and Adam
act coordinate-wise, and every run starts from the same default-initialised
``nn.Linear`` weight, so each row is exactly the run of a lone ``nn.Linear(p, 1)``
(a test checks this).

Zeros. After training, ``spred.collapse(threshold=0)`` gives the weights; ``n_zero``
counts exact zeros, ``n_zero_thr`` entries with ``|v| <= threshold``. With SGD a
pruned weight decays like ``exp(-2*lr*m*t)``, where ``m = alpha - |dL/dv|`` is its
margin at the optimum, and becomes an exact float64 zero only once
``lr*m*t > ~370`` (float32: ~51); coordinates close to the KKT boundary therefore
stay tiny but nonzero for a long time. ``kkt`` and ``kkt_thr`` are
``spred.kkt_residual(...).relative`` (residual / alpha) at thresholds 0 and
``threshold``: a small value certifies the zeros as those of the L1 optimum.

Outputs under ``--out``: ``lasso.csv`` (one row per method, optimizer, lr, alpha,
seed), ``lasso_coefs.csv`` (coefficients of the first seed), ``lasso.png``
(coefficients, zeros and error against alpha at the main learning rates),
``lasso_lr_sweep.png`` (every learning rate), ``summary.md`` and ``config.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from torch import nn

import spred
from spred.experiments import _common

logger = logging.getLogger("spred")

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
METHOD_LABELS = {"spred": "spred", "l1": "L1 in loss", "closed_form": "closed form"}
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


def _check_int(cfg, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"The '{name}' parameter of LassoConfig must be an int >= {low}. Got {value!r} of type {type(value).__name__} instead.")
    if value < low:
        raise ValueError(f"The '{name}' parameter of LassoConfig must be an int >= {low}. Got {value!r} instead.")


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    what = "a float >= 0" if allow_zero else "a float > 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"The '{name}' parameter of LassoConfig must be {what}. Got {value!r} of type {type(value).__name__} instead.")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"The '{name}' parameter of LassoConfig must be {what}. Got {value!r} instead.")


def _check_choices(name: str, values, choices: tuple[str, ...]) -> None:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"The '{name}' parameter of LassoConfig must be a non-empty tuple of {choices}. Got {values!r} instead.")
    bad = [v for v in values if v not in choices]
    if bad:
        raise ValueError(f"The '{name}' parameter of LassoConfig must hold values from {choices}. Got {bad!r} instead.")


def check_config(cfg: LassoConfig) -> LassoConfig:
    """Validate every field of ``cfg`` and return it.

    Raises
    ------
    TypeError
        A field of the wrong type.
    ValueError
        A field with a wrong value; the message names the field and the value.
    """
    for name, low in (("n_samples", 1), ("n_features", 1), ("n_informative", 0), ("n_alphas", 1), ("n_steps", 0), ("design_seed", 0)):
        _check_int(cfg, name, low)
    if cfg.n_samples < cfg.n_features:
        raise ValueError(
            f"The orthogonal design needs n_samples >= n_features. Got n_samples={cfg.n_samples} and n_features={cfg.n_features}."
        )
    if cfg.n_informative > cfg.n_features:
        raise ValueError(f"The 'n_informative' parameter of LassoConfig must be <= n_features={cfg.n_features}. Got {cfg.n_informative} instead.")
    if not isinstance(cfg.coef_range, Sequence) or len(cfg.coef_range) != 2:
        raise TypeError(f"The 'coef_range' parameter of LassoConfig must be a pair (low, high). Got {cfg.coef_range!r} instead.")
    for v in cfg.coef_range:
        _check_positive("coef_range", v)
    if cfg.coef_range[0] > cfg.coef_range[1]:
        raise ValueError(f"The 'coef_range' parameter of LassoConfig must have low <= high. Got {tuple(cfg.coef_range)!r} instead.")
    _check_positive("noise", cfg.noise, allow_zero=True)
    _check_positive("eps", cfg.eps)
    if cfg.eps >= 1:
        raise ValueError(f"The 'eps' parameter of LassoConfig must be in (0, 1): the grid starts at eps * alpha_max. Got {cfg.eps!r} instead.")
    _check_choices("methods", cfg.methods, METHODS)
    _check_choices("optimizers", cfg.optimizers, OPTIMIZERS)
    if isinstance(cfg.lrs, str) or not isinstance(cfg.lrs, Sequence) or not cfg.lrs:
        raise TypeError(f"The 'lrs' parameter of LassoConfig must be a non-empty tuple of floats. Got {cfg.lrs!r} instead.")
    for lr in cfg.lrs:
        _check_positive("lrs", lr)
    if not isinstance(cfg.main_lrs, Mapping):
        raise TypeError(f"The 'main_lrs' parameter of LassoConfig must be a mapping optimizer -> lr. Got {cfg.main_lrs!r} instead.")
    for opt in cfg.optimizers:
        if opt not in cfg.main_lrs:
            raise ValueError(f"The 'main_lrs' parameter of LassoConfig has no learning rate for optimizer {opt!r}. Got {dict(cfg.main_lrs)!r}.")
        if not any(math.isclose(cfg.main_lrs[opt], lr) for lr in cfg.lrs):
            raise ValueError(
                f"The 'main_lrs' parameter of LassoConfig must pick learning rates from lrs={tuple(cfg.lrs)}. "
                f"Got {opt}={cfg.main_lrs[opt]!r} instead."
            )
    _check_positive("threshold", cfg.threshold, allow_zero=True)
    if isinstance(cfg.seeds, str) or not isinstance(cfg.seeds, Sequence) or not cfg.seeds:
        raise TypeError(f"The 'seeds' parameter of LassoConfig must be a non-empty tuple of ints. Got {cfg.seeds!r} instead.")
    if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 0 for s in cfg.seeds):
        raise ValueError(f"The 'seeds' parameter of LassoConfig must hold ints >= 0. Got {tuple(cfg.seeds)!r} instead.")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"The 'seeds' parameter of LassoConfig must not repeat a seed. Got {tuple(cfg.seeds)!r} instead.")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"The 'dtype' parameter of LassoConfig must be one of {DTYPES}. Got {cfg.dtype!r} instead.")
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
    """A random (n, p) design with ``X^T X / n = I`` exactly (up to rounding).

    Parameters
    ----------
    n_samples, n_features : int
        ``n_samples >= n_features``.
    rng : numpy.random.Generator

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        ``sqrt(n) * Q`` for the Q factor of a Gaussian matrix.
    """
    q, r = np.linalg.qr(rng.standard_normal((n_samples, n_features)))
    return q * np.sign(np.diag(r)) * math.sqrt(n_samples)


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

    Parameters
    ----------
    cfg : LassoConfig

    Returns
    -------
    LassoProblem
    """
    X = orthogonal_design(cfg.n_samples, cfg.n_features, np.random.default_rng(cfg.design_seed))
    coefs, ys = [], []
    for seed in cfg.seeds:
        rng = np.random.default_rng([cfg.design_seed, seed])
        coef = np.zeros(cfg.n_features)
        support = rng.choice(cfg.n_features, cfg.n_informative, replace=False)
        coef[support] = rng.choice([-1.0, 1.0], cfg.n_informative) * rng.uniform(*cfg.coef_range, cfg.n_informative)
        ys.append(X @ coef + cfg.noise * rng.standard_normal(cfg.n_samples))
        coefs.append(coef)
    Y = np.stack(ys)
    # At alpha_max itself the largest coordinate sits exactly on the KKT boundary (zero
    # with margin 0), which no finite run resolves; end the grid just above it instead.
    top = _GRID_TOP * float(np.abs(Y @ X / cfg.n_samples).max())
    alphas = np.geomspace(cfg.eps * top, top, cfg.n_alphas) if cfg.n_alphas > 1 else np.array([top])
    return LassoProblem(X, Y, np.stack(coefs), tuple(cfg.seeds), alphas, cfg.design_seed)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Fit:
    """The weights one (method, optimizer, lr) run reached for every alpha and seed."""

    method: str
    optimizer: str
    lr: float
    coefs: np.ndarray  # (n_alphas, n_seeds, p), float64
    diverged_step: np.ndarray  # (n_alphas, n_seeds), -1 where the loss stayed finite
    seconds: float  # training time of the optimizer run that produced it (shared by its lrs)

    @property
    def diverged(self) -> np.ndarray:
        return self.diverged_step >= 0


def _make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` or ``Adam`` (default betas, no momentum); every group carries its own lr."""
    if name == "sgd":
        return torch.optim.SGD(groups)
    return torch.optim.Adam(groups, fused=True)  # fused: the same update, fewer kernel launches


def _initial_weights(seed: int, n_features: int, n_seeds: int, dtype: torch.dtype) -> torch.Tensor:
    """The weight of one default-initialised ``nn.Linear(p, 1)``, repeated for every seed: (n_seeds, p).

    Every run (method, optimizer, lr, alpha, seed) starts from this same weight. That
    also makes the batched spred layers exact copies of single-seed runs: the default
    ``init="preserve"`` split ``u = c, w = v / c`` takes ``c`` from the whole tensor.
    """
    with _common.torch_seed(seed):
        weight = nn.Linear(n_features, 1, bias=False, dtype=dtype).weight.detach()
    return weight.expand(n_seeds, n_features).clone()


def _train(losses: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, n_steps: int, bar) -> np.ndarray:
    """``n_steps`` full-batch steps on ``losses().sum()``.

    Returns, for every entry of ``losses()``, the step at which it became non-finite
    (-1 if it never did). A diverged entry is recorded, not raised: the others keep
    training, since their gradients do not depend on it. Stops early when all diverged.
    """
    diverged = None
    for step in range(n_steps):
        loss = losses()
        bad = ~torch.isfinite(loss.detach())
        if diverged is None:
            diverged = torch.full(loss.shape, -1, dtype=torch.long)
        if bool(bad.any()):
            diverged[bad & (diverged < 0)] = step
            if bool((diverged >= 0).all()):
                bar.update(n_steps - step)
                break
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # entry (lr, alpha, seed) only gets its own gradient
        optimizer.step()
        bar.update(1)
    if diverged is None:  # n_steps == 0
        diverged = torch.full(losses().shape, -1, dtype=torch.long)
    return diverged.numpy()


def _squared_loss(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean((y_s - X v)^2) / 2`` for weights of shape (..., n_seeds, p): shape (..., n_seeds)."""
    return 0.5 * (Y - torch.einsum("np,...sp->...sn", X, weights)).pow(2).mean(dim=-1)


def fit_spred(problem: LassoProblem, optimizer: str, lrs: Sequence[float], *, n_steps: int,
              dtype: torch.dtype = torch.float64, bar=None) -> list[Fit]:
    """Train one sparsified ``nn.Linear(p, n_seeds)`` per (lr, alpha), with ``lam = alpha``.

    Row ``s`` of each layer minimises ``mean((y_s - X v)^2)/2 + alpha*||v||_1`` through
    spred: the optimizer is built from ``spred.param_groups`` (coupled weight decay
    ``alpha`` on the factors, one group per alpha) with each learning rate's groups set
    to that lr, and the result is ``spred.collapse(threshold=0)``. One optimizer holds
    every lr; since SGD and Adam update each tensor from its own gradient and state
    only, that is the same as one run per lr.

    Parameters
    ----------
    problem : LassoProblem
    optimizer : {"sgd", "adam"}
    lrs : sequence of float
        One run per learning rate.
    n_steps : int
        Full-batch steps.
    dtype : torch.dtype, default=torch.float64
    bar : object with ``update(n)``, optional
        Progress bar, advanced once per step.

    Returns
    -------
    list of Fit
        One per learning rate, in the order of ``lrs``.
    """
    bar = bar if bar is not None else _NoBar()
    X = torch.as_tensor(problem.X, dtype=dtype)
    Y = torch.as_tensor(problem.Y, dtype=dtype)  # (n_seeds, n)
    n_seeds, p = len(problem.seeds), problem.X.shape[1]
    init = _initial_weights(problem.design_seed, p, n_seeds, dtype)
    banks, groups = [], []
    for lr in lrs:
        bank = nn.ModuleList(nn.Linear(p, n_seeds, bias=False, dtype=dtype) for _ in problem.alphas)
        with torch.no_grad():
            for layer in bank:
                layer.weight.copy_(init)
        spred.sparsify(bank, {f"{i}.weight": float(alpha) for i, alpha in enumerate(problem.alphas)})
        groups += [dict(group, lr=lr) for group in spred.param_groups(bank)]
        banks.append(bank)
    opt = _make_optimizer(optimizer, groups)
    spred.check_optimizer(opt)

    def losses() -> torch.Tensor:  # (n_lrs, n_alphas, n_seeds)
        # The effective weight v = u * w of every layer (what layer(X) multiplies by).
        weights = torch.stack([torch.stack([layer.weight for layer in bank]) for bank in banks])
        return _squared_loss(X, Y, weights)

    start = time.perf_counter()
    diverged = _train(losses, opt, n_steps, bar)
    seconds = time.perf_counter() - start
    fits = []
    for i, (lr, bank) in enumerate(zip(lrs, banks)):
        collapsed = spred.collapse(bank, threshold=0.0)
        coefs = torch.stack([layer.weight.detach() for layer in collapsed]).double().numpy()
        fits.append(Fit("spred", optimizer, lr, coefs, diverged[i], seconds))
    return fits


def fit_l1(problem: LassoProblem, optimizer: str, lrs: Sequence[float], *, n_steps: int,
           dtype: torch.dtype = torch.float64, bar=None) -> list[Fit]:
    """The baseline: ``mean((y_s - X v)^2)/2 + alpha*||v||_1`` minimised directly.

    The same initial weights, optimizers, learning rates and steps as
    :func:`fit_spred`; autograd's (sub)gradient of the L1 term is ``alpha*sign(v)``.
    Per lr, all alphas and seeds are rows of one (n_alphas, n_seeds, p) parameter.
    Parameters and returns as :func:`fit_spred`.
    """
    bar = bar if bar is not None else _NoBar()
    X = torch.as_tensor(problem.X, dtype=dtype)
    Y = torch.as_tensor(problem.Y, dtype=dtype)  # (n_seeds, n)
    n_alphas = len(problem.alphas)
    init = _initial_weights(problem.design_seed, problem.X.shape[1], len(problem.seeds), dtype)
    weights = [nn.Parameter(init.expand(n_alphas, *init.shape).clone()) for _ in lrs]
    alphas = torch.as_tensor(problem.alphas, dtype=dtype)[:, None]
    opt = _make_optimizer(optimizer, [{"params": [w], "lr": lr} for w, lr in zip(weights, lrs)])

    def losses() -> torch.Tensor:  # (n_lrs, n_alphas, n_seeds)
        stacked = torch.stack(weights)
        return _squared_loss(X, Y, stacked) + alphas * stacked.abs().sum(dim=-1)

    start = time.perf_counter()
    diverged = _train(losses, opt, n_steps, bar)
    seconds = time.perf_counter() - start
    return [Fit("l1", optimizer, lr, w.detach().double().numpy(), diverged[i], seconds) for i, (lr, w) in enumerate(zip(lrs, weights))]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


# --------------------------------------------------------------------------- evaluation


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).mean()


class _KKTProbe:
    """``spred.kkt_residual`` for a given weight vector of one seed's problem.

    A sparsified ``nn.Linear(p, 1)`` whose factors are set to ``(1, v)``, so that its
    effective weight is exactly ``v``; the residual depends on ``v`` only.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.batch = (torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)[:, None])
        self.model = spred.sparsify(nn.Linear(X.shape[1], 1, bias=False, dtype=torch.float64), 1.0)
        self.u, self.w = spred.factors(self.model, "weight")

    def __call__(self, v: np.ndarray, alpha: float, threshold: float) -> float:
        with torch.no_grad():
            self.u.fill_(1.0)
            self.w.copy_(torch.as_tensor(v, dtype=torch.float64)[None])
        spred.set_lam(self.model, float(alpha))
        return spred.kkt_residual(self.model, _half_mse, self.batch, threshold=threshold).relative


def _rows_for(method: str, optimizer: str, lr: float, coefs: np.ndarray, diverged_step: np.ndarray,
              problem: LassoProblem, cfg: LassoConfig, probes: list[_KKTProbe]) -> list[dict]:
    truth = soft_threshold(problem.z, problem.alphas)  # (n_alphas, n_seeds, p)
    z_abs = np.abs(problem.z)
    rows = []
    for a, alpha in enumerate(problem.alphas):
        for s, seed in enumerate(problem.seeds):
            v, v_star = coefs[a, s], truth[a, s]
            zero_true = v_star == 0
            diverged = bool(diverged_step[a, s] >= 0) or not np.all(np.isfinite(v))
            zero, zero_thr = v == 0, np.abs(v) <= cfg.threshold
            rows.append({
                "method": method,
                "optimizer": optimizer,
                "lr": lr,
                "alpha": float(alpha),
                "seed": int(seed),
                "alpha_max": float(problem.alpha_max[s]),
                "alpha_ratio": float(alpha / problem.alpha_max[s]),
                "n_features": int(v.size),
                "n_steps": cfg.n_steps if method != "closed_form" else 0,
                "error": math.nan if diverged else float(np.abs(v - v_star).max()),
                "n_zero": int(zero.sum()),
                "n_zero_thr": int(zero_thr.sum()),
                "n_zero_true": int(zero_true.sum()),
                "n_zero_found": int((zero & zero_true).sum()),
                "n_zero_thr_found": int((zero_thr & zero_true).sum()),
                "n_nonzero_true": int((~zero_true).sum()),
                "support_exact": bool(np.array_equal(zero, zero_true)),
                "support_thr": bool(np.array_equal(zero_thr, zero_true)),
                "kkt": math.nan if diverged else float(probes[s](v, alpha, 0.0)),
                "kkt_thr": math.nan if diverged else float(probes[s](v, alpha, cfg.threshold)),
                "threshold": cfg.threshold,
                "margin": float((alpha - z_abs[s][zero_true]).min()) if zero_true.any() else math.nan,
                "smallest_coef": float(np.abs(v_star[~zero_true]).min()) if (~zero_true).any() else math.nan,
                "diverged": diverged,
                "diverged_step": int(diverged_step[a, s]),
            })  # fmt: skip
    return rows


def _coef_rows(method: str, optimizer: str, lr: float, coefs: np.ndarray, problem: LassoProblem) -> list[dict]:
    """The coefficients of the first seed, one row per (alpha, feature)."""
    return [
        {"method": method, "optimizer": optimizer, "lr": lr, "alpha": float(alpha), "seed": int(problem.seeds[0]),
         "feature": j, "coef": float(coefs[a, 0, j]), "true_coef": float(problem.coef[0, j])}
        for a, alpha in enumerate(problem.alphas)
        for j in range(coefs.shape[-1])
    ]  # fmt: skip


@dataclass
class LassoResults:
    """What :func:`run_experiment` produced: tidy rows, the summary and the files written."""

    config: LassoConfig
    rows: list[dict]
    coef_rows: list[dict]
    summary: list[dict]
    seconds: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def run_experiment(cfg: LassoConfig, out: str | Path | None = None, *, plot: bool = True, progress: bool | None = None) -> LassoResults:
    """Run the Lasso experiment for ``cfg`` and write its outputs under ``out``.

    Parameters
    ----------
    cfg : LassoConfig
    out : path, optional
        Output folder (created if needed); ``results/lasso`` when None.
    plot : bool, default=True
        Draw ``lasso.png`` and ``lasso_lr_sweep.png`` (needs matplotlib).
    progress : bool or None
        Show a progress bar (None: only on a terminal).

    Returns
    -------
    LassoResults
    """
    from tqdm.auto import tqdm

    check_config(cfg)
    out_dir = _common.prepare_out_dir(out, NAME)
    dtype = getattr(torch, cfg.dtype)
    start = time.perf_counter()
    problem = make_problem(cfg)
    truth = soft_threshold(problem.z, problem.alphas)
    probes = [_KKTProbe(problem.X, y) for y in problem.Y]
    no_divergence = np.full((len(problem.alphas), len(problem.seeds)), -1)
    rows = _rows_for("closed_form", "", math.nan, truth, no_divergence, problem, cfg, probes)
    coef_rows = _coef_rows("closed_form", "", math.nan, truth, problem)
    runs = [(m, o) for m in cfg.methods for o in cfg.optimizers]
    seconds = {}
    fitters = {"spred": fit_spred, "l1": fit_l1}
    with tqdm(total=len(runs) * cfg.n_steps, desc="spred run lasso", unit="step", disable=None if progress is None else not progress) as bar:
        for method, optimizer in runs:
            bar.set_postfix_str(f"{method} {optimizer}")
            fits = fitters[method](problem, optimizer, cfg.lrs, n_steps=cfg.n_steps, dtype=dtype, bar=bar)
            seconds[f"{method}/{optimizer}"] = fits[0].seconds
            for fit in fits:
                if fit.diverged.any():
                    logger.info("%s %s lr=%g: the loss became non-finite for %d of %d (alpha, seed) runs",
                                method, optimizer, fit.lr, int(fit.diverged.sum()), fit.diverged.size)
                rows += _rows_for(method, optimizer, fit.lr, fit.coefs, fit.diverged_step, problem, cfg, probes)
                coef_rows += _coef_rows(method, optimizer, fit.lr, fit.coefs, problem)
    seconds["total"] = time.perf_counter() - start
    summary = summarise(rows)
    results = LassoResults(cfg, rows, coef_rows, summary, seconds)
    results.files["csv"] = _common.write_csv(rows, out_dir / "lasso.csv", CSV_COLUMNS)
    results.files["coefs"] = _common.write_csv(coef_rows, out_dir / "lasso_coefs.csv")
    results.files["summary"] = out_dir / "summary.md"
    results.files["summary"].write_text(summary_table(summary, cfg) + "\n")
    if plot:
        results.files["figure"] = plot_main(rows, coef_rows, cfg, out_dir / "lasso.png")
        results.files["lr_sweep"] = plot_lr_sweep(rows, cfg, out_dir / "lasso_lr_sweep.png")
    seconds["with_outputs"] = time.perf_counter() - start
    results.files["config"] = _common.write_config(
        out_dir / "config.json", cfg, experiment=NAME, extra={"seconds": seconds, "files": {k: p.name for k, p in results.files.items()}}
    )
    return results


def load_results(out: str | Path) -> tuple[LassoConfig, list[dict], list[dict]]:
    """Read back what :func:`run_experiment` wrote under ``out``: (config, rows, coefficient rows).

    Redraw the figures from saved results with
    ``plot_main(rows, coef_rows, cfg, path)`` and ``plot_lr_sweep(rows, cfg, path)``.
    """
    out = Path(out)
    cfg = check_config(_common.resolve_config(LassoConfig, config_file=out / "config.json"))
    return cfg, _common.read_csv(out / "lasso.csv"), _common.read_csv(out / "lasso_coefs.csv")


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


# --------------------------------------------------------------------------- figures

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
    parser.add_argument("--steps", dest="n_steps", type=int, default=None, help="full-batch steps per run (default 3000)")
    parser.add_argument("--n-alphas", type=int, default=None, help="size of the alpha grid (default 20)")
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
