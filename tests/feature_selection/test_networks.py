"""The selector's networks: one input layer, and one spred gate per feature covers the whole network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spred
from spred.feature_selection import SelectorNet, build_network


@pytest.mark.parametrize("kind", ["linear", "mlp", "ensemble"])
@pytest.mark.parametrize("n_out", [1, 3])
def test_output_shape_and_single_input_layer(kind, n_out):
    net = build_network(kind, 7, n_out, (5, 4), seed=0)
    assert net(torch.randn(11, 7)).shape == (11, n_out)
    readers = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.in_features == 7]
    assert readers == ["input"]


def test_ensemble_is_linear_plus_mlp():
    net = build_network("ensemble", 6, 2, (4,), seed=1)
    x = torch.randn(9, 6)
    z = x @ net.input.weight.T + net.input.bias
    expected = z[:, :2] + net.head(z[:, 2:])
    torch.testing.assert_close(net(x), expected)
    assert net.input.weight.shape == (2 + 4, 6)


def test_one_gate_per_feature_covers_linear_and_mlp_rows():
    net = spred.sparsify(build_network("ensemble", 6, 2, (4,), seed=2), {"input.weight": 0.1}, groups="in")
    gate, w = spred.factors(net.input, "weight")
    assert gate.shape == (1, 6)  # one scalar per input feature, for all 2 + 4 rows
    with torch.no_grad():
        gate[0, 3] = 0.0
    assert torch.all(net.input.weight[:, 3] == 0)
    x = torch.randn(5, 6)
    x2 = x.clone()
    x2[:, 3] = 100.0  # the gated-off feature no longer affects the output of either part
    torch.testing.assert_close(net(x), net(x2))


def test_group_penalty_at_balance_is_group_lasso_over_all_outgoing_weights():
    net = spred.sparsify(build_network("ensemble", 5, 3, (4,), seed=3), {"input.weight": 0.5}, groups="in")
    v = net.input.weight.detach().clone()
    u, w = spred.balanced_split(v, groups="in")
    with torch.no_grad():
        gate, weight = spred.factors(net.input, "weight")
        gate.copy_(u)
        weight.copy_(w)
    torch.testing.assert_close(spred.penalty(net), 0.5 * v.norm(dim=0).sum())


def test_build_network_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = build_network("mlp", 4, 2, (3,), seed=7)
    b = build_network("mlp", 4, 2, (3,), seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_bad_kind_and_hidden_sizes():
    with pytest.raises(ValueError, match=r"The 'kind' parameter of SelectorNet must be one of .* Got 'cnn' instead"):
        SelectorNet(3, 1, "cnn")
    with pytest.raises(ValueError, match=r"'hidden_layer_sizes' parameter of SelectorNet must be a non-empty tuple .* Got \(\) instead"):
        SelectorNet(3, 1, "mlp", ())
    assert SelectorNet(3, 1, "linear", ()).head is None
