"""The runs of ``spred run lasso``: every (lr, alpha, seed) run trained at once through :func:`spred.train.fit`, and its rows.

Every run is an independent model, so one method's runs for one optimizer train
together: per learning rate, one ``nn.Linear(p, n_seeds)`` per alpha (spred) or one
``(n_alphas, n_seeds, p)`` weight (the L1 baseline), in one module whose output is
every run's prediction, handed to ``fit`` with full-batch steps (``epochs = n_steps``,
``batch_size = n``) and one optimizer whose groups carry each run's lr (and, for
spred, its ``lam`` through :func:`spred.param_groups`). Nothing couples the runs: the
loss is a sum of per-run losses and SGD and Adam act coordinate-wise, so each is
exactly the run of a lone ``nn.Linear(p, 1)`` (a test checks this).

A run whose loss becomes non-finite, or exceeds ``finfo(dtype).max ** 0.25`` (about
1e77 in float64, 1e9 in float32: far above any converging run of this problem, and low
enough that no factor can overflow in the next step), is recorded (``diverged_step``),
not raised: it stops counting in the loss (zero gradient), its factors and optimizer
state are reset to zero before the next step (so nothing non-finite ever enters the
model), its coefficients are reported as NaN, and the other runs go on. Training stops
early once every run diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

import spred
from spred.experiments import _common
from spred.train import fit

if TYPE_CHECKING:
    from spred.experiments.lasso import LassoProblem

__all__ = ["Fit", "KKTProbe", "coef_rows_for", "fit_l1", "fit_spred", "rows_for"]


@dataclass(frozen=True)
class Fit:
    """The weights one (method, optimizer, lr) run reached for every alpha and seed."""

    method: str
    optimizer: str
    lr: float
    coefs: np.ndarray  # (n_alphas, n_seeds, p), float64; NaN for a diverged run
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


class _SpredRuns(nn.Module):
    """Per lr, one sparsified ``nn.Linear(p, n_seeds)`` per alpha (``lam = alpha``)."""

    def __init__(self, init: torch.Tensor, alphas: np.ndarray, n_lrs: int):
        super().__init__()
        n_seeds, p = init.shape
        self.banks = nn.ModuleList(nn.ModuleList(nn.Linear(p, n_seeds, bias=False, dtype=init.dtype) for _ in alphas) for _ in range(n_lrs))
        with torch.no_grad():
            for layer in self.layers():
                layer.weight.copy_(init)
        for bank in self.banks:
            spred.sparsify(bank, {f"{i}.weight": float(alpha) for i, alpha in enumerate(alphas)})

    def layers(self):
        return [layer for bank in self.banks for layer in bank]

    def weights(self) -> torch.Tensor:
        """The effective weights ``v = u * w``: (n_lrs, n_alphas, n_seeds, p)."""
        return torch.stack([torch.stack([layer.weight for layer in bank]) for bank in self.banks])

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # (n_lrs, n_alphas, n_seeds, n)
        return torch.einsum("np,...sp->...sn", X, self.weights())

    def run_tensors(self, i: int, a: int) -> list[torch.Tensor]:
        """The parameters of lr ``i``, alpha ``a`` (row ``s`` belongs to seed ``s``)."""
        return list(spred.factors(self.banks[i][a], "weight"))


class _L1Runs(nn.Module):
    """Per lr, one plain ``(n_alphas, n_seeds, p)`` weight; the loss adds ``alpha * ||v||_1``."""

    def __init__(self, init: torch.Tensor, alphas: np.ndarray, n_lrs: int):
        super().__init__()
        self.banks = nn.ParameterList(nn.Parameter(init.expand(len(alphas), *init.shape).clone()) for _ in range(n_lrs))

    def weights(self) -> torch.Tensor:
        return torch.stack(list(self.banks))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.einsum("np,...sp->...sn", X, self.weights())

    def run_tensors(self, i: int, a: int) -> list[torch.Tensor]:
        return [self.banks[i][a]]


class _Objective:
    """The loss handed to ``fit``: the sum of the per-run losses of the runs still alive.

    Per run ``mean((y_s - X v)^2) / 2`` (plus ``alpha * ||v||_1`` for the L1 baseline).
    A run whose loss is not finite or above ``limit`` is recorded at this step and
    masked out (by ``torch.where``, so its gradient is exactly zero) from then on.
    """

    def __init__(self, model: nn.Module, alphas: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype):
        self.model, self.alphas = model, alphas
        self.limit = torch.finfo(dtype).max ** 0.25
        self.diverged = torch.full(shape, -1, dtype=torch.long)
        self.calls = 0

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        residual = y.T - out  # y: (n, n_seeds) -> (n_seeds, n)
        penalty = None if self.alphas is None else self.alphas * self.model.weights().abs().sum(dim=-1)
        per_run = 0.5 * residual.pow(2).mean(dim=-1)
        loss = per_run if penalty is None else per_run + penalty
        with torch.no_grad():
            new = ~(loss <= self.limit) & (self.diverged < 0)  # NaN compares False: caught too
            self.diverged[new] = self.calls
        self.calls += 1
        dead = self.diverged >= 0
        if bool(dead.any()):  # where, not a product: a dead run's gradient is exactly 0 even where its loss is inf
            per_run = 0.5 * torch.where(dead[..., None], 0.0, residual).pow(2).mean(dim=-1)
            loss = per_run if penalty is None else per_run + torch.where(dead, 0.0, penalty)
        return loss.sum()  # run (lr, alpha, seed) only gets its own gradient


class _Reset:
    """An optimizer step post-hook: zero the factors and the optimizer state of the runs that diverged.

    A run diverges when its loss was not finite or above the limit (marked by the
    objective) or when the step just taken left a non-finite factor or product in it
    (marked here, with the step number the next loss would have given it, as when the
    loss found it one step later). Zeroing right after the step keeps every value in the
    model finite at all times, which ``fit``'s non-finite guard checks after each epoch;
    a zeroed run's gradient and decay are zero from then on.
    """

    def __init__(self, objective: _Objective, model: nn.Module):
        self.objective, self.model = objective, model
        self.done = torch.zeros_like(objective.diverged, dtype=torch.bool)

    @torch.no_grad()
    def _mark_overflows(self) -> None:
        n_lrs, n_alphas, _ = self.objective.diverged.shape
        for i in range(n_lrs):
            for a in range(n_alphas):
                tensors = self.model.run_tensors(i, a)
                product = tensors[0]
                for t in tensors[1:]:
                    product = product * t
                bad = ~torch.isfinite(product).all(dim=-1)
                for t in tensors:
                    bad |= ~torch.isfinite(t).all(dim=-1)
                new = bad & (self.objective.diverged[i, a] < 0)
                self.objective.diverged[i, a][new] = self.objective.calls

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        self._mark_overflows()
        dead = self.objective.diverged >= 0
        for i, a, s in (dead & ~self.done).nonzero().tolist():
            for tensor in self.model.run_tensors(i, a):
                tensor[s] = 0.0
                for value in optimizer.state.get(tensor, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == tensor.shape:
                        value[s] = 0.0
        self.done |= dead


class _Monitor:
    """The callback after every ``fit`` epoch: advances the bar, stops once every run diverged."""

    def __init__(self, objective: _Objective, n_steps: int, steps_per_epoch: int, bar):
        self.objective, self.n_steps, self.k, self.bar = objective, n_steps, steps_per_epoch, bar

    def __call__(self, state) -> bool:
        self.bar.update(self.k)
        if bool((self.objective.diverged >= 0).all()):
            self.bar.update(self.n_steps - state.epoch * self.k)  # the bar is completed even though training stops
            return True
        return False


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, problem: LassoProblem, alphas: torch.Tensor | None,
           n_lrs: int, n_steps: int, dtype: torch.dtype, bar) -> tuple[np.ndarray, float]:
    """``n_steps`` full-batch steps of ``fit``; returns the per-run divergence steps (n_lrs, n_alphas, n_seeds) and the seconds."""
    objective = _Objective(model, alphas, (n_lrs, len(problem.alphas), len(problem.seeds)), dtype)
    start = time.perf_counter()
    if n_steps > 0:
        X = torch.as_tensor(problem.X, dtype=dtype)
        Y = torch.as_tensor(problem.Y, dtype=dtype).T  # (n, n_seeds): one row per sample
        data, epochs = _common.full_batches(X, Y, n_steps)
        k = n_steps // epochs
        hook = optimizer.register_step_post_hook(_Reset(objective, model))
        try:
            with _common.quiet_logs("spred.train"):
                fit(model, data, epochs=epochs, optimizer=optimizer, loss_fn=objective,
                    callbacks=[_Monitor(objective, n_steps, k, bar)], progress=False)  # fmt: skip
        finally:
            hook.remove()
    return objective.diverged.numpy(), time.perf_counter() - start


def _coefs(weights: torch.Tensor, diverged: np.ndarray) -> np.ndarray:
    coefs = weights.detach().double().numpy().copy()
    coefs[diverged >= 0] = np.nan  # a diverged run has no meaningful weights
    return coefs


def fit_spred(problem: LassoProblem, optimizer: str, lrs: Sequence[float], *, n_steps: int,
              dtype: torch.dtype = torch.float64, bar=None) -> list[Fit]:
    """Train one sparsified ``nn.Linear(p, n_seeds)`` per (lr, alpha), with ``lam = alpha``.

    Row ``s`` of each layer minimises ``mean((y_s - X v)^2)/2 + alpha*||v||_1`` through
    spred: the optimizer is built from ``spred.param_groups`` (coupled weight decay
    ``alpha`` on the factors, one group per alpha) with each learning rate's groups set
    to that lr, training is :func:`spred.train.fit`, and the result is
    ``spred.collapse(threshold=0)``. One optimizer holds every lr; since SGD and Adam
    update each tensor from its own gradient and state only, that is the same as one
    run per lr.

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
    init = _initial_weights(problem.design_seed, problem.X.shape[1], len(problem.seeds), dtype)
    model = _SpredRuns(init, problem.alphas, len(lrs))
    groups = [dict(group, lr=lr) for lr, bank in zip(lrs, model.banks) for group in spred.param_groups(bank)]
    diverged, seconds = _train(model, _make_optimizer(optimizer, groups), problem, None, len(lrs), n_steps, dtype, bar or _NoBar())
    fits = []
    for i, (lr, bank) in enumerate(zip(lrs, model.banks)):
        collapsed = spred.collapse(bank, threshold=0.0)
        weights = torch.stack([layer.weight.detach() for layer in collapsed])
        fits.append(Fit("spred", optimizer, lr, _coefs(weights, diverged[i]), diverged[i], seconds))
    return fits


def fit_l1(problem: LassoProblem, optimizer: str, lrs: Sequence[float], *, n_steps: int,
           dtype: torch.dtype = torch.float64, bar=None) -> list[Fit]:
    """The baseline: ``mean((y_s - X v)^2)/2 + alpha*||v||_1`` minimised directly.

    The same initial weights, optimizers, learning rates, steps and loop as
    :func:`fit_spred`; autograd's (sub)gradient of the L1 term is ``alpha*sign(v)``.
    Per lr, all alphas and seeds are rows of one (n_alphas, n_seeds, p) parameter.
    Parameters and returns as :func:`fit_spred`.
    """
    init = _initial_weights(problem.design_seed, problem.X.shape[1], len(problem.seeds), dtype)
    model = _L1Runs(init, problem.alphas, len(lrs))
    opt = _make_optimizer(optimizer, [{"params": [w], "lr": lr} for w, lr in zip(model.banks, lrs)])
    alphas = torch.as_tensor(problem.alphas, dtype=dtype)[:, None]
    diverged, seconds = _train(model, opt, problem, alphas, len(lrs), n_steps, dtype, bar or _NoBar())
    return [Fit("l1", optimizer, lr, _coefs(w, diverged[i]), diverged[i], seconds) for i, (lr, w) in enumerate(zip(lrs, model.banks))]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


# --------------------------------------------------------------------------- evaluation: one row per run


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).mean()


class KKTProbe:
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


def rows_for(method: str, optimizer: str, lr: float, coefs: np.ndarray, diverged_step: np.ndarray, problem: LassoProblem,
             truth: np.ndarray, threshold: float, n_steps: int, probes: list[KKTProbe]) -> list[dict]:
    """One row of ``lasso.csv`` per (alpha, seed) of one (method, optimizer, lr); ``truth`` is the closed form."""
    z_abs = np.abs(problem.z)
    rows = []
    for a, alpha in enumerate(problem.alphas):
        for s, seed in enumerate(problem.seeds):
            v, v_star = coefs[a, s], truth[a, s]
            zero_true = v_star == 0
            diverged = bool(diverged_step[a, s] >= 0) or not np.all(np.isfinite(v))
            zero, zero_thr = v == 0, np.abs(v) <= threshold
            rows.append({
                "method": method,
                "optimizer": optimizer,
                "lr": lr,
                "alpha": float(alpha),
                "seed": int(seed),
                "alpha_max": float(problem.alpha_max[s]),
                "alpha_ratio": float(alpha / problem.alpha_max[s]),
                "n_features": int(v.size),
                "n_steps": n_steps,
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
                "kkt_thr": math.nan if diverged else float(probes[s](v, alpha, threshold)),
                "threshold": threshold,
                "margin": float((alpha - z_abs[s][zero_true]).min()) if zero_true.any() else math.nan,
                "smallest_coef": float(np.abs(v_star[~zero_true]).min()) if (~zero_true).any() else math.nan,
                "diverged": diverged,
                "diverged_step": int(diverged_step[a, s]),
            })  # fmt: skip
    return rows


def coef_rows_for(method: str, optimizer: str, lr: float, coefs: np.ndarray, problem: LassoProblem) -> list[dict]:
    """The coefficients of the first seed, one row per (alpha, feature)."""
    return [
        {"method": method, "optimizer": optimizer, "lr": lr, "alpha": float(alpha), "seed": int(problem.seeds[0]),
         "feature": j, "coef": float(coefs[a, 0, j]), "true_coef": float(problem.coef[0, j])}
        for a, alpha in enumerate(problem.alphas)
        for j in range(coefs.shape[-1])
    ]  # fmt: skip
