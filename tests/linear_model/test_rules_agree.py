"""The NumPy code of the linear solvers that mirrors a torch rule, held against that rule.

The working-set solver computes group norms, KKT violations and losses in NumPy on
its own flat layout (for speed); the minibatch solver trains with torch losses and
decides zeros with ``spred.nn._rules``. Each pair is checked on the same inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spred.linear_model._datafits import make_datafit
from spred.linear_model._minibatch import GroupedLinear, MinibatchState, _minibatch_datafit, decide_zeros, full_gradient
from spred.linear_model._penalties import GroupPenalty, L1Penalty, make_penalty
from spred.linear_model._polish import _support_estimate, relative_zeros
from spred.nn._rules import group_norms, kkt_residuals, kkt_zero, relative_threshold, zero_mask

GROUPS = [[0, 4], [1], [2, 3, 5, 6], [7]]


def _vectors(seed=0, p=8):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(p)
    v[[1, 7]] = 0.0  # two zero groups
    v[[0, 4]] = [1e-9, 0.0]  # a tiny one
    return v, rng.standard_normal(p)


def _grouped(weights):
    _, spec = make_penalty(1.0, 8, 1, GROUPS, weights)
    return GroupedLinear(*spec, bias=False), spec


@pytest.mark.parametrize("weights", [None, "sqrt_size"])
def test_group_norms_and_violation_match_the_torch_rules(weights):
    v, g = _vectors()
    model, (ptr, idx, w) = _grouped(weights)
    pen = GroupPenalty(0.3, ptr, idx, w)
    vt, gt = model.padded(torch.from_numpy(v)[:, None]), model.padded(torch.from_numpy(g)[:, None])
    np.testing.assert_allclose(pen._norms(v), group_norms(vt, "out")[:, 0].numpy(), rtol=1e-15)
    lam = 0.3 * torch.as_tensor(w)[:, None]
    _, resid_nz, resid_zero = kkt_residuals(vt, gt, lam, groups="out")
    np.testing.assert_allclose(pen.violation(v, g), (resid_nz + resid_zero)[:, 0].numpy(), rtol=1e-12, atol=1e-15)


def test_l1_violation_matches_kkt_residuals():
    v, g = _vectors(1)
    _, resid_nz, resid_zero = kkt_residuals(torch.from_numpy(v), torch.from_numpy(g), 0.4)
    np.testing.assert_allclose(L1Penalty(0.4, v.size).violation(v, g), (resid_nz + resid_zero).numpy(), rtol=1e-15)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5])
def test_minibatch_zero_decision_is_kkt_zero(threshold):
    v, g = _vectors(2)
    V, G = v[:, None], 0.5 * g[:, None]
    out = decide_zeros(torch.nn.Linear(8, 1), V, G, 0.3, threshold)
    want = kkt_zero(torch.from_numpy(np.abs(V)), torch.from_numpy(np.abs(G)), 0.3, threshold).numpy()
    np.testing.assert_array_equal(out == 0, want | (V == 0))
    model, (ptr, idx, w) = _grouped("sqrt_size")
    out = decide_zeros(model, V, G, 0.3, threshold)
    pen = GroupPenalty(1.0, ptr, idx, w)
    zero_groups = (pen._norms(v) <= threshold) & (pen._norms(0.5 * g) <= 0.3 * w)
    np.testing.assert_array_equal(out[:, 0] == 0, zero_groups[pen._group_of] | (v == 0))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rel", [0.0, 1e-6, 0.3])
def test_polish_rounding_is_the_zero_rule_with_a_kkt_slack(seed, rel):
    """The polish's NumPy rounding equals the torch rules: zero_mask at relative_threshold, and
    kkt_zero with an infinite threshold at 0.9 alpha for the gradient half."""
    v, g = _vectors(seed)
    v[::7] = 0.0
    v[1::5] *= 1e-9
    alpha = 0.5
    vt, gt = torch.from_numpy(v), torch.from_numpy(np.abs(g))
    small = zero_mask(vt, None, 0, relative_threshold(vt.abs(), rel))
    shrinking = kkt_zero(vt.abs(), gt, 0.9 * alpha, math.inf)
    np.testing.assert_array_equal(_support_estimate(v, g, alpha, rel), np.flatnonzero(~(small | shrinking).numpy()))
    np.testing.assert_array_equal(relative_zeros(np.abs(v), rel), small.numpy())
    for norms in (np.array([0.0, 1e-12, 1.0, 3.0]), np.zeros(3), np.zeros(0)):
        want = zero_mask(torch.from_numpy(norms), None, 0, relative_threshold(torch.from_numpy(norms), 1e-9)).numpy()
        np.testing.assert_array_equal(relative_zeros(norms, 1e-9), want)


@pytest.mark.parametrize("loss,K", [("squared", 1), ("logistic", 1), ("multinomial", 3)])
def test_torch_minibatch_loss_and_gradient_match_the_datafit(loss, K):
    """The loss the minibatch solver trains (torch) is the datafit's (NumPy), and so is dL/dv."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 6))
    y = {"squared": rng.standard_normal(40), "logistic": (rng.random(40) > 0.5).astype(float),
         "multinomial": rng.integers(0, K, 40)}[loss]
    state = MinibatchState(6, K, loss=loss, alpha=0.1, optimizer="sgd", learning_rate=0.1, fit_intercept=True)
    with torch.no_grad():
        state.model.parametrizations.weight.original1.copy_(torch.from_numpy(rng.standard_normal((K, 6))))
        state.model.bias.copy_(torch.from_numpy(rng.standard_normal(K)))
    Xt, yt = state.to_tensors(X, y)
    torch_loss, v = state._loss(Xt, yt)
    torch_loss.backward()
    datafit = _minibatch_datafit(loss, X, y, True, K)
    coef, b = state.coef(), state.intercept()
    assert float(torch_loss.detach()) == pytest.approx(datafit.value(coef.ravel(), b), rel=1e-12)
    np.testing.assert_allclose(state._grad_v(v).numpy(), full_gradient(datafit, coef, b), rtol=1e-10, atol=1e-14)


def test_the_squared_datafit_with_an_intercept_is_the_centred_one_at_the_optimal_intercept():
    rng = np.random.default_rng(5)
    X, y, v = rng.standard_normal((30, 4)), rng.standard_normal(30), rng.standard_normal(4)
    centred, X_off, y_off = make_datafit("squared", X, y, True)
    explicit, _, _ = make_datafit("squared", X, y, False)
    b = np.array([y_off - X_off @ v])
    assert explicit.value(v, b) == pytest.approx(centred.value(v), rel=1e-12)


def test_weighted_group_penalty_at_balance_is_the_group_penalty():
    """With unequal group weights the minibatch solver adds its weighted ridge to the loss; at
    balance it is the NumPy group penalty ``alpha sum_g c_g ||v_g||``."""
    v, _ = _vectors(6)
    _, (ptr, idx, w) = _grouped("sqrt_size")
    state = MinibatchState(8, 1, loss="squared", alpha=0.3, optimizer="adam", learning_rate=0.1,
                           fit_intercept=False, groups=(ptr, idx, w))
    assert state.weighted
    padded = state.model.padded(torch.from_numpy(v)[:, None])
    norms = group_norms(padded, "out")
    s, wf = state._factors
    with torch.no_grad():
        s.copy_(norms.sqrt())
        wf.copy_(torch.where(norms > 0, padded / norms.sqrt().clamp_min(1e-300), torch.zeros_like(padded)))
    np.testing.assert_allclose(state.coef()[:, 0], v, rtol=1e-12)
    assert float(state.weighted_penalty().detach()) == pytest.approx(GroupPenalty(0.3, ptr, idx, w).value(v), rel=1e-12)
