"""Minibatch spred solvers: ``spred.sparsify(nn.Linear)`` trained by SGD / Adam / Adagrad.

The linear model is a plain :class:`torch.nn.Linear` (or, for penalty groups, a
linear map whose weight holds one row per group) sparsified by :func:`spred.sparsify`;
the optimizer comes from :func:`spred.train.build_optimizer`, whose parameter groups
(:func:`spred.param_groups`) put *coupled* weight decay ``alpha`` on the factors:
exactly the L1 (group-L1) penalty ``alpha ||v||_1``. The loss is scikit-learn's
(``mean(r^2) / 2``, mean log-loss). After training, zeros are decided by spred's
rule :func:`spred.nn._rules.kkt_zero` (small *and* optimal at zero), with the
gradient of the datafit (:mod:`._datafits`) on the data given, or, for
``partial_fit``, the running average of the minibatch gradients; ``fit`` then
polishes with the working-set solver on the full data.

The loop itself is a short private one rather than :func:`spred.train.fit`:
``partial_fit`` keeps the optimizer state and a running gradient average across
calls (one epoch per call), which a one-run-per-call ``fit`` does not model.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from spred.nn import factors, param_groups, sparsify
from spred.nn._rules import group_norms, kkt_zero, relative_threshold
from spred.train import OPTIMIZERS, build_optimizer

from ._datafits import make_datafit
from ._penalties import make_penalty
from ._working_set import compute_alpha_max, solve_ws

logger = logging.getLogger(__name__)

__all__ = ["MinibatchState", "decide_zeros", "fit_minibatch", "full_gradient"]

_DIVERGENCE = 1e6  # an objective this many times its value at the start of a call has diverged


class GroupedLinear(nn.Module):
    """``x @ v + b`` with the coefficients stored group by group: ``weight`` has one row per
    penalty group, zero-padded to the largest group, and ``v_j = weight[g(j), k(j)]``.

    With ``spred.sparsify(..., groups="out")`` every row gets one scale factor, so
    coupled weight decay ``alpha`` is the group lasso ``alpha * sum_g ||v_g||`` (the
    padding entries get no gradient and stay 0). ``group_weights`` are the penalty
    weights ``c_g`` (see :meth:`MinibatchState.weighted_penalty`).
    """

    def __init__(self, grp_ptr, grp_idx, group_weights, bias):
        super().__init__()
        sizes = np.diff(grp_ptr)
        width = int(sizes.max())
        pos = np.empty(int(sizes.sum()), dtype=np.int64)
        group_of = np.repeat(np.arange(sizes.size), sizes)
        pos[grp_idx] = group_of * width + (np.arange(grp_idx.size) - np.repeat(grp_ptr[:-1], sizes))
        self.weight = nn.Parameter(torch.zeros((sizes.size, width), dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(1, dtype=torch.float64)) if bias else None
        self.register_buffer("pos", torch.from_numpy(pos))
        self.group_weights = torch.as_tensor(np.asarray(group_weights, float))
        self.weighted = not bool(np.allclose(group_weights, 1.0))

    def coef(self, W):
        """The coefficients ``v`` (n_features, 1) of the weight ``W``."""
        return W.reshape(-1)[self.pos][:, None]

    def padded(self, v):
        """``v`` (n_features, 1) laid out as the weight: one row per group, zero-padded."""
        out = torch.zeros(self.weight.numel(), dtype=v.dtype)
        out[self.pos] = v[:, 0]
        return out.reshape(self.weight.shape)


def _linear(n_features, K, groups, fit_intercept):
    """The linear model at zero (sparsify's function-preserving split then gives ``w = 0``)."""
    if groups is None:
        model = nn.Linear(n_features, K, bias=fit_intercept, dtype=torch.float64)
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
        return model
    return GroupedLinear(*groups, bias=fit_intercept)


def _coef_of(model, W):
    return model.coef(W) if isinstance(model, GroupedLinear) else W.T


def decide_zeros(model, v, grad, alpha, threshold):
    """Exact zeros for an approximate (minibatch) solution: spred's ``kkt_zero`` rule.

    A coefficient (a group, for a :class:`GroupedLinear`) becomes exactly zero when it
    is small (norm ``<= threshold``) *and* the optimality condition for a zero holds on
    the data given (gradient norm ``<= alpha * weight``); a small one whose gradient
    is still outside that ball is kept (it sits at the KKT boundary or is growing).
    ``v`` and ``grad`` are NumPy arrays of shape (n_features, K); returns a new ``v``.
    """
    vt, gt = torch.from_numpy(np.asarray(v, dtype=np.float64)), torch.from_numpy(np.asarray(grad, dtype=np.float64))
    if isinstance(model, GroupedLinear):
        lam = alpha * model.group_weights[:, None]
        zero = kkt_zero(group_norms(model.padded(vt), "out"), group_norms(model.padded(gt), "out"), lam, threshold)
        zero = model.coef(zero.expand(model.weight.shape).to(torch.float64)) != 0
    else:
        zero = kkt_zero(group_norms(vt, None), group_norms(gt, None), alpha, threshold)
    return np.where(zero.numpy(), 0.0, v)


class MinibatchState:
    """A sparsified linear model, its optimizer and the running gradient of the minibatch solvers.

    The model is ``spred.sparsify(nn.Linear(n_features, K))`` (or a :class:`GroupedLinear`
    with ``groups="out"``) with ``lam = alpha``; the optimizer is
    ``spred.train.build_optimizer(model, optimizer, lr=learning_rate, momentum=0)``.
    The factors start at ``u = init_scale``, ``w = 0`` (the library's function-preserving
    split of the zero weight, with the scale set to ``init_scale`` instead of 1: the
    first steps move ``v`` by about ``lr * init_scale**2 * grad``, and the minibatch
    step sizes are tuned for this slow start). Pickles through state dicts.
    """

    GRAD_HORIZON = 16384  # samples averaged by the running gradient estimate

    def __init__(self, n_features, K, *, loss, alpha, optimizer, learning_rate,
                 fit_intercept, groups=None, init_scale=0.1, intercept_init=None, seed=0):
        self.config = {"n_features": n_features, "K": K, "alpha": float(alpha), "optimizer": optimizer,
                       "learning_rate": learning_rate, "fit_intercept": fit_intercept, "groups": groups}
        self.p, self.K, self.loss, self.alpha = n_features, K, loss, float(alpha)
        self.rng = np.random.RandomState(int(seed))
        self._build()
        with torch.no_grad():
            factors(self.model)[0].fill_(float(init_scale))
            if fit_intercept and intercept_init is not None:
                self.model.bias.copy_(torch.as_tensor(np.asarray(intercept_init, float).reshape(-1)))
        self.n_seen = 0
        self.last = (self.coef(), self.intercept())  # (v, b) after the last call: where the next one starts
        # Running estimate of the data-fit gradient dL/dv: an exponential moving average
        # of the minibatch gradients over about GRAD_HORIZON samples (bias-corrected).
        self._g_sum = torch.zeros((n_features, K), dtype=torch.float64)
        self._g_weight = 0.0
        self._g_samples = 0

    def _build(self):
        c = self.config
        self.model = _linear(c["n_features"], c["K"], c["groups"], c["fit_intercept"])
        sparsify(self.model, lam=c["alpha"], groups=None if c["groups"] is None else "out",
                 include=(type(self.model),))
        self.weighted = getattr(self.model, "weighted", False)
        if self.weighted:
            # per-group penalty weights: spred's lam is one number per tensor, so the factors get no
            # weight decay and the weighted penalty goes into the loss (weighted_penalty)
            groups = param_groups(self.model, penalty_in_loss=True)
            self.opt, _ = build_optimizer(self.model, OPTIMIZERS[c["optimizer"]](groups, lr=c["learning_rate"]))
        else:
            self.opt, _ = build_optimizer(self.model, c["optimizer"], lr=c["learning_rate"], momentum=0.0)
        self._product = self.model.parametrizations.weight[0]
        self._factors = factors(self.model)

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("model", "opt", "_product", "_factors")}
        state["model_state"] = self.model.state_dict()
        state["opt_state"] = self.opt.state_dict()
        return state

    def __setstate__(self, state):
        model_state, opt_state = state.pop("model_state"), state.pop("opt_state")
        self.__dict__.update(state)
        self._build()
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)

    def _track_grad(self, g, batch):
        """Fold this step's dL/dv into the running estimate."""
        # the horizon is the most recent half of the stream, at most GRAD_HORIZON samples, so that
        # the first gradients (at the starting point) leave the average on short streams too
        self._g_samples += batch
        horizon = min(self.GRAD_HORIZON, max(self._g_samples / 2, batch))
        rho = max(0.0, 1.0 - batch / horizon)
        self._g_sum.mul_(rho).add_(g, alpha=1.0 - rho)
        self._g_weight = rho * self._g_weight + (1.0 - rho)

    def grad_estimate(self):
        """The running average of the minibatch gradients dL/dv (NumPy), or None before any step.

        Averages about the most recent half of the stream, at most ``GRAD_HORIZON``
        samples, so it is much less noisy than the gradient on one chunk; the zero
        decisions of ``partial_fit`` use it.
        """
        if self._g_weight <= 0:
            return None
        return (self._g_sum / self._g_weight).numpy().copy()

    def _loss(self, X, y):
        """The minibatch loss and the tensor whose ``.grad`` gives dL/dv after backward
        (:meth:`_grad_v`): the weight of an ``nn.Linear``, ``v`` of a :class:`GroupedLinear`."""
        # the weight: the parametrisation's own product of its factors (SpredProduct.forward),
        # called directly to skip torch.nn.utils.parametrize's per-access wrapper (~15 us a step)
        W = self._product.forward(*self._factors)
        if isinstance(self.model, GroupedLinear):
            v = self.model.coef(W)
            v.retain_grad()
            z = X @ v
            if self.model.bias is not None:
                z = z + self.model.bias
        else:
            v = W
            v.retain_grad()
            z = torch.nn.functional.linear(X, W, self.model.bias)
        if self.loss == "squared":
            loss = 0.5 * ((z[:, 0] - y) ** 2).mean()
        elif self.loss == "logistic":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y)
        else:
            loss = torch.nn.functional.cross_entropy(z, y)
        if self.weighted:
            loss = loss + self.weighted_penalty()
        return loss, v

    def weighted_penalty(self):
        """``(alpha/2) sum_g c_g (s_g^2 + ||w_g||^2)``: spred's penalty (:func:`spred.penalty`) with a
        weight ``c_g`` per group, ``alpha sum_g c_g ||v_g||`` at balance (weighted groups only)."""
        s, w = self._factors
        c = self.model.group_weights
        return 0.5 * self.alpha * (c * (s[:, 0] ** 2 + (w**2).sum(dim=1))).sum()

    def _grad_v(self, t):
        """dL/dv (n_features, K) from the ``.grad`` of the tensor returned by :meth:`_loss`."""
        return t.grad if isinstance(self.model, GroupedLinear) else t.grad.T

    def to_tensors(self, X, y):
        """Copies of ``(X, y)`` as float64 / int64 tensors."""
        Xt = torch.from_numpy(np.array(X, dtype=np.float64, order="C", copy=True))
        dtype = np.int64 if self.loss == "multinomial" else np.float64
        return Xt, torch.from_numpy(np.array(y, dtype=dtype, copy=True))

    def run(self, Xt, yt, *, n_epochs, batch_size):
        """Run ``n_epochs`` passes of minibatch steps over the tensors ``(Xt, yt)``."""
        n = Xt.shape[0]
        bs = min(batch_size, n)
        for _ in range(n_epochs):
            perm = torch.from_numpy(self.rng.permutation(n))
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                self.opt.zero_grad(set_to_none=True)
                loss, v = self._loss(Xt[idx], yt[idx])
                loss.backward()
                self._track_grad(self._grad_v(v), len(idx))
                self.opt.step()
        self.n_seen += n * n_epochs

    def coef(self):
        """The coefficients ``v`` (n_features, K), NumPy."""
        with torch.no_grad():
            return _coef_of(self.model, self._product.forward(*self._factors)).numpy().copy()

    def intercept(self):
        if self.model.bias is None:
            return np.zeros(self.K)
        return self.model.bias.detach().numpy().copy()


def full_gradient(datafit, v, b):
    """``dL/dv`` (n_features, K) of the minibatch datafit (:func:`_minibatch_datafit`) at ``(v, b)``."""
    return datafit.fg(v.ravel(), b)[1].reshape(v.shape)


def _minibatch_datafit(loss, X, y, fit_intercept, K):
    """The datafit of the minibatch objective: the intercept is an explicit variable ``b``."""
    if loss == "squared":
        return make_datafit("squared", X, y, fit_intercept=False)[0]
    return make_datafit(loss, X, y, fit_intercept, n_classes=K)[0]


def _initial_intercept(loss, y, fit_intercept):
    if not fit_intercept or loss == "multinomial":
        return None
    if loss == "squared":
        return np.array([np.mean(y)])
    m = np.clip(np.mean(y), 1e-6, 1 - 1e-6)
    return np.array([np.log(m / (1 - m))])


def _objective(datafit, penalty, v, b):
    with np.errstate(over="ignore", invalid="ignore"):
        return float(datafit.value(v.ravel(), b) + penalty.value(v.ravel()))


class _DivergenceGuard:
    """The divergence check of one call: the objective on the data given must stay finite and at
    most ``_DIVERGENCE`` times the larger of its value at the start of the call and the loss of
    the all-zero model (the start is evaluated only when the second bound is exceeded)."""

    def __init__(self, name, state, datafit, penalty, learning_rate):
        self.name, self.datafit, self.penalty, self.learning_rate = name, datafit, penalty, learning_rate
        self.start = state.last
        b_zero = np.zeros(datafit.nb) if datafit.nb else np.zeros(1)
        self.zero_loss = float(datafit.value(np.zeros(datafit.p * datafit.n_outputs), b_zero))

    def check(self, obj):
        """Raise FloatingPointError if the objective ``obj`` has diverged."""
        if math.isfinite(obj) and obj <= _DIVERGENCE * self.zero_loss:
            return
        ref = max(_objective(self.datafit, self.penalty, *self.start), self.zero_loss)
        if math.isfinite(obj) and obj <= _DIVERGENCE * ref:
            return
        raise FloatingPointError(
            f"{self.name} diverged: the objective on the data given went from {ref:.3g} to {obj:.3g} "
            f"with learning_rate={self.learning_rate:g}. Lower learning_rate or standardise the "
            "features (StandardScaler)."
        )


def _train(name, state, datafit, penalty, X, y, *, batch_size, max_epochs, tol, n_iter_no_change, learning_rate):
    """Up to ``max_epochs`` epochs; early stop after ``n_iter_no_change`` epochs without a relative
    decrease of the objective by ``tol`` (``tol=None``: run all epochs). Raises FloatingPointError
    when the objective becomes non-finite or explodes. Returns the number of epochs run; the final
    ``(v, b)`` are in ``state.last``."""
    guard = _DivergenceGuard(name, state, datafit, penalty, learning_rate)
    Xt, yt = state.to_tensors(X, y)
    best, stall, epochs = np.inf, 0, 0
    for _ in range(max_epochs):
        state.run(Xt, yt, n_epochs=1, batch_size=batch_size)
        epochs += 1
        if tol is None:
            continue
        state.last = (state.coef(), state.intercept())
        obj = _objective(datafit, penalty, *state.last)
        guard.check(obj)
        if obj < best - tol * max(abs(best), 1e-12) or not np.isfinite(best):
            best, stall = obj, 0
        else:
            stall += 1
            if stall >= n_iter_no_change:
                break
    if tol is None:
        state.last = (state.coef(), state.intercept())
        guard.check(_objective(datafit, penalty, *state.last))
    return epochs


def _polish_full(X, y, v, b, *, loss, alpha, fit_intercept, groups, group_weights, tol, max_iter):
    """Warm-start the working-set solver on all the data from the minibatch solution ``(v, b)``."""
    p, K = v.shape
    datafit, X_offset, y_offset = make_datafit(loss, X, y, fit_intercept, n_classes=K)
    penalty, _ = make_penalty(alpha, p, K, groups, group_weights)
    amax = compute_alpha_max(datafit, penalty)
    b_init = None if loss == "squared" or not fit_intercept else b
    res = solve_ws(datafit, penalty, coef_init=v.ravel(), intercept_init=b_init,
                   alpha_max=amax, tol=tol if tol else 1e-4, max_iter=max_iter)
    v = res.coef.reshape(p, K)
    if loss == "squared":
        b = np.array([y_offset - X_offset @ v[:, 0]]) if fit_intercept else b
    elif fit_intercept:
        b = np.asarray(res.intercept, dtype=np.float64).ravel()
    return v, b


def fit_minibatch(name, X, y, *, loss, n_outputs, alpha, fit_intercept, groups, group_weights,
                  solver, learning_rate, batch_size, max_epochs, tol, threshold, random_state,
                  state=None, n_iter_no_change=5, polish=False, polish_max_iter=200, streaming=False):
    """Run (or continue) the minibatch spred solver.

    Runs up to ``max_epochs`` epochs of minibatch steps; stops early when the
    objective on ``(X, y)`` has not improved by more than ``tol`` (relative) for
    ``n_iter_no_change`` epochs (pass ``tol=None`` to run all epochs). Raises
    FloatingPointError when the objective on ``(X, y)`` becomes non-finite or
    explodes. Returns ``(state, coef, intercept, n_epochs)`` where ``coef`` (n_features,
    K) has exact zeros decided by :func:`decide_zeros` (threshold plus KKT with the
    gradient on ``(X, y)``, or, with ``streaming=True`` (``partial_fit``), the running
    minibatch average). With ``polish=True`` (the full data is in memory, as in
    ``fit``) the minibatch solution then warm-starts the working-set solver on ``(X, y)``
    for at most ``polish_max_iter`` L-BFGS iterations, which makes the zeros exact and
    the KKT conditions hold to ``tol`` (in the units of the full-batch solver).
    """
    X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    y = np.asarray(y) if loss == "multinomial" else np.asarray(y, dtype=np.float64)
    p = X.shape[1]
    penalty, group_spec = make_penalty(alpha, p, n_outputs, groups, group_weights)
    if state is None:
        state = MinibatchState(p, n_outputs, loss=loss, alpha=alpha, optimizer=solver,
                               learning_rate=learning_rate, fit_intercept=fit_intercept,
                               groups=group_spec, intercept_init=_initial_intercept(loss, y, fit_intercept),
                               seed=random_state.randint(np.iinfo(np.int32).max))
    datafit = _minibatch_datafit(loss, X, y, fit_intercept, n_outputs)
    bs = batch_size if batch_size is not None else min(256, X.shape[0])
    epochs = _train(name, state, datafit, penalty, X, y, batch_size=bs, max_epochs=max_epochs, tol=tol,
                    n_iter_no_change=n_iter_no_change, learning_rate=learning_rate)
    v, b = state.last
    G = state.grad_estimate() if streaming else None  # streaming: the running average over chunks
    if G is None or X.shape[0] >= state.GRAD_HORIZON:
        G = full_gradient(datafit, v, b)  # all the data given, at the final iterate
    thr = threshold if threshold != "auto" else relative_threshold(torch.from_numpy(np.abs(v)), 1e-3)
    v = decide_zeros(state.model, v, G, alpha, thr)
    if polish:
        v, b = _polish_full(X, y, v, b, loss=loss, alpha=alpha, fit_intercept=fit_intercept, groups=groups,
                            group_weights=group_weights, tol=tol, max_iter=polish_max_iter)
    return state, v, b, epochs
