"""Parameter / FLOP counts and latency measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spred.compress import compare_latency, count_flops, count_parameters, measure_latency


def test_count_parameters_counts_parameters_not_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == (4 * 3 * 9 + 4) + (4 + 4) + 4 * 2  # running stats are buffers
    with torch.no_grad():
        model[0].weight[:2] = 0.0
    assert count_parameters(model, nonzero=True) == count_parameters(model) - 2 * 27 - 4  # BN bias starts at 0


def test_shared_parameters_count_once():
    lin = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(lin, nn.ReLU(), lin)) == 12


def test_count_flops_are_the_macs_of_linear_and_conv_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2, groups=2),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    x = torch.randn(2, 3, 6, 6)
    expected = 2 * (8 * 6 * 6 * 3 * 9 + 4 * 3 * 3 * (8 // 2) + 5 * 36)
    assert count_flops(model, x) == expected
    assert count_flops(model, x[:1]) * 2 == expected
    tconv = nn.ConvTranspose2d(2, 3, 2, stride=2)
    assert count_flops(tconv, torch.randn(1, 2, 4, 4)) == 2 * 4 * 4 * 3 * 4


def test_measure_latency_returns_medians_and_restores_state():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    threads = torch.get_num_threads()
    medians, times = measure_latency(model, torch.randn(3, 8), batch_sizes=(1, 5), repeats=4, warmup=1, num_threads=1, return_times=True)
    assert set(medians) == {1, 5} and all(m > 0 for m in medians.values())
    assert all(len(t) == 4 and min(t) <= medians[b] <= max(t) for b, t in times.items())
    assert model.training and torch.get_num_threads() == threads


def test_measure_latency_batches_cycle_through_the_samples():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    x = torch.arange(3.0).unsqueeze(1)
    measure_latency(Probe(), x, batch_sizes=(5,), repeats=1, warmup=0)
    torch.testing.assert_close(seen[0].squeeze(1), torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0]))


def test_compare_latency_times_models_in_turns():
    order = []

    class Tag(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x

    a, b = Tag("a").eval(), Tag("b").train()
    medians, times = compare_latency({"a": a, "b": b}, torch.randn(2, 3), batch_sizes=(1, 4), repeats=3, warmup=1, return_times=True)
    assert set(medians) == {"a", "b"} and all(set(m) == {1, 4} for m in medians.values())
    assert all(len(t) == 3 for per in times.values() for t in per.values())
    turns = ["a", "b", "b", "a", "a", "b"]  # alternating order: neither model always runs first
    assert order == ["a", "b"] + turns + ["a", "b"] + turns  # warm-up each, then take turns, per batch size
    assert b.training and not a.training


def test_channels_last_times_an_nhwc_copy_and_leaves_the_model_alone():
    layouts = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x, mask):
            out = self.conv(x)
            layouts.append((x.is_contiguous(memory_format=torch.channels_last), self.conv.weight.is_contiguous(memory_format=torch.channels_last),
                            mask.dim()))  # fmt: skip
            return out

    model = Probe()
    weight = model.conv.weight.detach().clone()
    x = (torch.randn(2, 3, 5, 5), torch.ones(2, 7))  # a 2-D input is left as it is
    medians = compare_latency({"m": model}, x, batch_sizes=(3,), repeats=2, warmup=1, channels_last=True)
    assert set(medians) == {"m"} and layouts == [(True, True, 2)] * 3
    assert model.conv.weight.is_contiguous() and not model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model.conv.weight, weight, rtol=0, atol=0)
    layouts.clear()
    measure_latency(model, x, batch_sizes=(1,), repeats=1, warmup=0)
    assert layouts == [(False, False, 2)]  # the default keeps NCHW


def test_errors():
    model, x = nn.Linear(2, 2), torch.randn(1, 2)
    with pytest.raises(TypeError, match=r"'model' parameter of count_parameters must be a torch.nn.Module. Got int"):
        count_parameters(1)
    with pytest.raises(TypeError, match=r"'model' parameter of count_flops must be a torch.nn.Module. Got int"):
        count_flops(1, x)
    with pytest.raises(TypeError, match=r"'example_inputs' parameter of count_flops must be a tensor"):
        count_flops(model, 3.0)
    with pytest.raises(TypeError, match=r"'model' parameter of measure_latency must be a torch.nn.Module. Got str"):
        measure_latency("m", x)
    with pytest.raises(TypeError, match=r"'batch_sizes' parameter of measure_latency must be a non-empty sequence of ints >= 1. Got 4"):
        measure_latency(model, x, batch_sizes=4)
    with pytest.raises(ValueError, match=r"'batch_sizes' parameter of measure_latency must be an int >= 1. Got 0"):
        measure_latency(model, x, batch_sizes=(1, 0))
    with pytest.raises(ValueError, match=r"'repeats' parameter of measure_latency must be an int >= 1. Got 0"):
        measure_latency(model, x, repeats=0)
    with pytest.raises(TypeError, match=r"'warmup' parameter of measure_latency must be an int >= 0. Got 1.5 of type float"):
        measure_latency(model, x, warmup=1.5)
    with pytest.raises(ValueError, match=r"'num_threads' parameter of measure_latency must be an int >= 1 or None. Got 0"):
        measure_latency(model, x, num_threads=0)
    with pytest.raises(TypeError, match=r"'channels_last' parameter of measure_latency must be a bool. Got 'yes'"):
        measure_latency(model, x, channels_last="yes")
    with pytest.raises(TypeError, match=r"'models' parameter of compare_latency must be a non-empty mapping of names to torch.nn.Module. Got \[\]"):
        compare_latency([], x)
    with pytest.raises(ValueError, match=r"'repeats' parameter of compare_latency must be an int >= 1. Got -1"):
        compare_latency({"m": model}, x, repeats=-1)
    with pytest.raises(TypeError, match=r"'example_inputs' parameter of compare_latency must be a tensor"):
        compare_latency({"m": model}, None)
