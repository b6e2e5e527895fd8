"""One zero rule, everywhere: every part of spred that decides "zero" agrees with ``spred.nn._rules``.

The same weights go through ``collapse``, ``sparsity_report``, ``fit``'s history, the
target-sparsity controller, ``prune_channels``, the linear models' zero decision and the
selector's active set; each must count exactly the entries (or units) that ``zero_mask`` /
``zero_units`` / ``kkt_zero`` / ``relative_threshold`` mark, elementwise and grouped, with
and without a threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import spred
from spred.nn._rules import kkt_zero, relative_threshold, zero_mask, zero_units
from spred.train import TargetSparsity, fit
from spred.train._controller import SparsityController

THRESHOLDS = [0.0, 1e-3]
GROUPS = [None, "out", "in"]


def _weights(seed: int = 0) -> torch.Tensor:
    """A 12 x 10 weight with every kind of entry: exact zeros, entries and whole rows / columns just
    below and just above 1e-3, and ordinary ones."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    v[:, 3] = 1e-4  # a small column (an input feature): norm 3.5e-4
    v[0] = 0.0  # an exactly zero neuron
    v[1] = 2e-4  # a row whose norm (6.3e-4) is below 1e-3
    v[2] = 5e-4  # entries below 1e-3, row norm (1.6e-3) above it
    v[5, :5] = 0.0  # exact zeros inside a live row
    v[7, 7] = 9e-4
    v[8, 8] = 1.1e-3
    return v


def _sparsified(v: torch.Tensor, groups) -> nn.Linear:
    layer = nn.Linear(v.shape[1], v.shape[0], bias=False).double()
    spred.sparsify(layer, lam=0.0, groups=groups)
    with torch.no_grad():
        layer.weight = v.clone()  # parametrize: right_inverse puts the factors in place, v exactly
    torch.testing.assert_close(layer.weight, v, rtol=1e-15, atol=0)  # v = u * w up to one rounding
    return layer


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("groups", GROUPS)
def test_collapse_report_history_and_controller_count_what_the_rule_marks(groups, threshold):
    v = _weights()
    layer = _sparsified(v, groups)
    rule = zero_mask(layer.weight.detach(), groups, 0, threshold)
    n_rule = int(rule.sum())
    assert 0 < n_rule < v.numel()

    # collapse writes a zero exactly where the rule says
    collapsed = spred.collapse(layer, threshold=threshold)
    assert torch.equal(collapsed.weight == 0, rule)

    # sparsity_report counts them on the sparsified model (predicting collapse) and, as exact zeros,
    # on the collapsed one (a plain tensor carries no groups: its threshold would be elementwise)
    assert spred.sparsity_report(layer, threshold=threshold)["weight"].zeros == n_rule
    assert spred.sparsity_report(collapsed)["weight"].zeros == n_rule
    keep = 1 if groups == "in" else 0
    units = zero_units(layer.weight.detach(), keep, threshold, groups=groups)
    assert spred.sparsity_report(layer, threshold=threshold)["weight"].zero_groups == int(units.sum())

    # the controller measures the same fraction
    controller = SparsityController(TargetSparsity(0.5, threshold=threshold or 1e-12), threshold=threshold or 1e-12, steps_per_epoch=1, total_epochs=1)
    if threshold:
        assert controller.measure(layer, 1)[0] == n_rule / v.numel()

    # fit's history: one epoch with a zero gradient and lam = 0 leaves the weights where they are
    before = layer.weight.detach().clone()
    X, y = torch.randn(8, v.shape[1], dtype=torch.float64), torch.zeros(8, v.shape[0], dtype=torch.float64)
    result = fit(layer, (X, y), epochs=1, lr=0.1, momentum=0.0, loss_fn=lambda out, _: 0.0 * out.sum(), threshold=threshold, progress=False)
    assert torch.equal(layer.weight.detach(), before)
    assert result.history[-1]["sparsity"] == n_rule / v.numel()


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_prune_channels_removes_the_units_the_rule_marks(threshold):
    v = _weights().float()
    model = nn.Sequential(nn.Linear(10, 12, bias=False), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[0].weight.copy_(v)
    units = zero_units(model[0].weight.detach(), 0, threshold)
    with warnings.catch_warnings():  # with a threshold, below-threshold rows are not exact zeros: the outputs move (warned)
        warnings.simplefilter("ignore")
        pruned, plan = spred.prune_channels(model, torch.randn(4, 10), threshold=threshold)
    kept = plan.layers["0"]["kept_out"]
    assert sorted(set(range(12)) - set(kept)) == units.nonzero().flatten().tolist()
    assert pruned[0].out_features == 12 - int(units.sum())


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("grouped", [False, True])
def test_the_linear_models_zero_decision_is_kkt_zero(grouped, threshold):
    """With a zero gradient (every zero optimal) the minibatch solver's decision is the magnitude rule;
    with a gradient outside the ball a small coefficient is kept."""
    from spred.linear_model._minibatch import GroupedLinear, decide_zeros

    v = _weights().numpy()[:, :1]  # (n_features, K=1)
    if grouped:
        grp_ptr, grp_idx = np.arange(0, 13, 3), np.arange(12)  # four groups of three features
        model = GroupedLinear(grp_ptr, grp_idx, np.ones(4), bias=False)
        norms = torch.from_numpy(v[:, 0]).reshape(4, 3).norm(dim=1)
        expected = np.repeat(kkt_zero(norms, torch.zeros(4, dtype=torch.float64), 0.1, threshold).numpy(), 3)[:, None]
    else:
        model = nn.Linear(12, 1)
        expected = zero_mask(torch.from_numpy(v), None, 0, threshold).numpy()
    out = decide_zeros(model, v, np.zeros_like(v), 0.1, threshold)
    assert np.array_equal(out == 0, expected | (v == 0))
    # a small coefficient whose gradient is outside the ball of radius alpha is kept
    kept = decide_zeros(model, v, np.full_like(v, 1.0), 0.1, threshold)
    assert np.array_equal(kept == 0, v == 0)


def test_relative_threshold_is_a_scale_free_zero_rule():
    norms = torch.tensor([0.0, 1e-4, 0.5, 2.0])
    thr = relative_threshold(norms, 1e-3)
    assert thr == pytest.approx(2e-3)
    assert zero_mask(norms, None, 0, thr).tolist() == [True, True, False, False]
    assert relative_threshold(torch.zeros(3), 0.1) == 0.0


@pytest.mark.parametrize("rel", [0.0, 1e-2])
def test_the_selector_drops_the_features_the_rules_mark(rel):
    """A feature (a column of the first layer) is selected unless its norm is a zero at the relative
    threshold, or zero is optimal for it with the selector's KKT margin."""
    from spred.feature_selection._path import _KKT_TOL, selected

    v = _weights()
    norms = v.norm(dim=0)  # the input features' group norms
    assert zero_units(v, 1, relative_threshold(norms, rel), groups="in").tolist() == zero_mask(norms, None, 0, relative_threshold(norms, rel)).tolist()
    alpha = 0.05
    grads = torch.linspace(0.0, 0.1, v.shape[1], dtype=torch.float64)
    expected = ~(zero_mask(norms, None, 0, relative_threshold(norms, rel)) | kkt_zero(norms, grads, (1 - _KKT_TOL) * alpha, float("inf")))
    assert selected(norms.numpy(), grads.numpy(), alpha, rel).tolist() == expected.tolist()
    # with alpha = 0 only the magnitude rule decides
    assert selected(norms.numpy(), grads.numpy(), 0.0, rel).tolist() == (~zero_mask(norms, None, 0, relative_threshold(norms, rel))).tolist()
