"""Constant folding (spred.compress._fold): the one routine that prune_channels and the compression
experiment's dead-unit removal use, and the zero rule prune_channels decides with."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spred.compress import _fold, prune_channels
from spred.nn._rules import zero_units


def _dead_first_unit(producer: nn.Module, value: float) -> None:
    with torch.no_grad():
        producer.weight[0] = 0.0
        producer.bias[0] = value


@pytest.mark.parametrize("kind", ["linear", "conv", "conv-no-bias"])
def test_fold_silence_and_clear_keep_the_function(gen, kind):
    torch.manual_seed(0)
    if kind == "linear":
        net = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))
        x = torch.randn(4, 6, generator=gen)
    else:
        net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 3, 2, bias=kind == "conv"))
        x = torch.randn(4, 2, 7, 7, generator=gen)
    net.eval()
    producer, consumer = net[0], net[2]
    _dead_first_unit(producer, 0.7)
    with torch.no_grad():
        ref = net(x)
    _, ranges = _fold.input_ranges(net, ((x,), {}), [consumer])
    constants = _fold.input_constants(ranges, consumer, [0, 1])
    assert constants[0] == pytest.approx(torch.sigmoid(torch.tensor(0.7)).item()) and torch.isnan(constants[1])
    added = _fold.fold_inputs(consumer, [0], constants[:1])
    assert added == (kind == "conv-no-bias")
    _fold.silence_inputs(consumer, [0])
    _fold.clear_units(producer, [0])
    assert bool((consumer.weight[:, 0] == 0).all()) and float(producer.bias.detach()[0]) == 0.0
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-6, atol=1e-6)


def test_zero_padding_decides_what_can_fold():
    assert _fold.zero_padding(nn.Conv2d(2, 2, 3, padding=1)) == (1, 1)
    assert _fold.zero_padding(nn.Conv2d(2, 2, 3, padding="same")) == (2, 2)
    assert _fold.zero_padding(nn.Conv2d(2, 2, 3)) is None
    assert _fold.zero_padding(nn.Conv2d(2, 2, 3, padding="valid")) is None
    assert _fold.zero_padding(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")) is None
    assert _fold.zero_padding(nn.Linear(2, 2)) is None


def test_a_zero_contribution_adds_no_bias():
    consumer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        consumer.weight[:, 1] = 0.0
    assert _fold.fold_inputs(consumer, [1], [5.0]) is False and consumer.bias is None


def test_prune_channels_and_the_experiment_fold_through_the_same_routine(make, monkeypatch):
    """Issue 18: one constant folding. Both the structured path and the unstructured experiment call _fold."""
    pytest.importorskip("torch_pruning")
    from spred.experiments import _baselines_prune as bp

    calls = []
    real = _fold.fold_inputs
    monkeypatch.setattr(_fold, "fold_inputs", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    model, x = make("mlp")
    _dead_first_unit(model.fc1, 0.5)
    _, plan = prune_channels(model, x)
    assert plan.n_removed == 1 and len(calls) == 1

    calls.clear()
    torch.manual_seed(0)
    chain_net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    _dead_first_unit(chain_net[0], 0.5)
    chain = bp.find_chain(chain_net, x)
    with torch.no_grad():
        ref = chain_net(x)
    assert bp.remove_dead_units(chain_net, chain, x) == {"0.weight": 1}
    assert calls == [chain_net[2]]
    with torch.no_grad():
        torch.testing.assert_close(chain_net(x), ref)


@pytest.mark.parametrize("threshold", [0.0, 1e-3])
def test_prune_channels_removes_exactly_the_units_of_the_zero_rule(make, threshold):
    """The rows prune_channels treats as zero are those of spred.nn._rules.zero_units (every entry |w| <= threshold)."""
    pytest.importorskip("torch_pruning")
    model, x = make("mlp")
    with torch.no_grad():
        model.fc1.weight[1] = 1e-3  # on the threshold: zero at 1e-3, not at 0
        model.fc1.weight[2] = 0.0
        model.fc1.weight[3, 0] = 2e-3  # one entry above: never zero
        model.fc1.weight[3, 1:] = 0.0
        model.fc1.bias[:4] = 0.0
    expected = zero_units(model.fc1.weight.detach(), 0, threshold).nonzero().flatten().tolist()
    _, plan = prune_channels(model, x, threshold=threshold)
    removed = [r for layer, idx in plan.history if layer == "fc1" for r in idx]
    assert removed == expected == ([1, 2] if threshold else [2])
