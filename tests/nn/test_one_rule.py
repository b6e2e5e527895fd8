"""collapse, sparsity_report and kkt_residual decide zeros with the one rule of spred.nn._rules."""

import pytest
import torch
from torch import nn

import spred
from spred.nn._rules import kkt_residuals, zero_mask, zero_units


def _model(groups):
    torch.manual_seed(0)
    model = spred.sparsify(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)), 0.05, groups=groups)
    with torch.no_grad():  # a spread of magnitudes around the thresholds, with exact zeros and tiny groups
        for layer in (model[0], model[2]):
            *scalars, last = spred.factors(layer)
            n = last.numel()
            last.copy_(torch.randn_like(last) * torch.logspace(-8, 0, n)[torch.randperm(n)].reshape(last.shape))
            last[0].zero_()
            if groups is not None:
                scalars[0].view(-1)[1] = 1e-7
    return model


@pytest.mark.parametrize("groups", [None, "out", "in"])
@pytest.mark.parametrize("threshold", [0.0, 1e-4, 1e-2])
def test_collapse_report_and_kkt_agree_with_zero_mask(groups, threshold):
    model = _model(groups)
    x, y = torch.randn(8, 6), torch.randn(8, 2)
    report = spred.sparsity_report(model, threshold=threshold)
    kkt = spred.kkt_residual(model, nn.functional.mse_loss, (x, y), threshold=threshold)
    collapsed = spred.collapse(model, threshold=threshold)
    for i in (0, 2):
        v = model[i].weight.detach()
        mask = zero_mask(v, groups, 0, threshold)
        assert torch.equal(collapsed[i].weight == 0, mask)
        row = report[f"{i}.weight"]
        assert row.zeros == int(mask.sum())
        unit = 1 if groups == "in" else 0  # whole input features for groups="in", else output neurons
        assert row.zero_groups == int(zero_units(v, unit, threshold, groups=groups).sum())
        zero, _, _ = kkt_residuals(v, torch.zeros_like(v), 0.05, groups=groups, threshold=threshold)
        assert kkt.per_tensor[f"{i}.weight"]["zeros"] == int(zero.expand_as(v).sum())
        if groups is None and threshold == 0:
            assert kkt.per_tensor[f"{i}.weight"]["zeros"] == int(mask.sum())  # the same rule on the same tensor
