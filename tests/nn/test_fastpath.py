"""The fast path (activation-space group factors, fused product) against the plain parametrize path."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import spred
from spred.nn import _fastpath

LAYERS = {
    "linear": (lambda bias: nn.Linear(7, 5, bias=bias), (4, 7)),
    "linear-3d-input": (lambda bias: nn.Linear(7, 5, bias=bias), (2, 3, 7)),
    "conv1d": (lambda bias: nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=bias), (3, 4, 11)),
    "conv1d-unbatched": (lambda bias: nn.Conv1d(4, 6, 3, dilation=2, bias=bias), (4, 12)),
    "conv2d": (lambda bias: nn.Conv2d(3, 4, 3, stride=1, padding=1, bias=bias), (2, 3, 8, 8)),
    "conv2d-grouped": (lambda bias: nn.Conv2d(6, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=bias), (2, 6, 9, 9)),
    "conv2d-depthwise": (lambda bias: nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=bias), (2, 4, 7, 7)),
    "conv2d-reflect": (lambda bias: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=bias), (2, 3, 6, 6)),
    "conv2d-circular-grouped": (lambda bias: nn.Conv2d(4, 6, (3, 2), padding=(1, 2), padding_mode="circular", groups=2, bias=bias), (2, 4, 5, 6)),
    "conv2d-same": (lambda bias: nn.Conv2d(3, 4, 3, padding="same", bias=bias), (2, 3, 6, 6)),  # falls back to the weight
}


@pytest.fixture
def both_paths(monkeypatch):
    """Run ``fn(enabled)`` with the fast path on and off."""

    def run(fn):
        out = {}
        for enabled in (True, False):
            monkeypatch.setattr(_fastpath, "ENABLED", enabled)
            out[enabled] = fn()
        return out[True], out[False]

    return run


def _net(layer_name, bias, groups, depth):
    factory, shape = LAYERS[layer_name]
    torch.manual_seed(0)
    layer = factory(bias).double()
    model = nn.Sequential(layer, nn.Tanh())
    spred.sparsify(model, 0.05, groups=groups, depth=depth)
    with torch.no_grad():  # unbalanced, non-constant factors so every gradient is generic
        for f in spred.factors(layer):
            f.mul_(torch.rand_like(f) + 0.5)
    return model, torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = (out**2).sum() + spred.penalty(model)
    loss.backward()
    layer = model[0]
    grads = [f.grad.clone() for f in spred.factors(layer)] + [p.grad.clone() for n, p in layer.named_parameters() if n == "bias"] + [x.grad]
    return out.detach(), grads, spred.penalty(model).detach(), spred.collapse(model, threshold=0.0)[0].weight.detach()


@pytest.mark.parametrize("space", ["weight", "activation"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("groups", [None, "out", "in"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_fast_path_equals_plain_path(both_paths, monkeypatch, layer_name, bias, groups, depth, space):
    monkeypatch.setattr(_fastpath, "_activation_space", lambda activation, weight: space == "activation")
    fast, plain = both_paths(lambda: _step(*_net(layer_name, bias, groups, depth)))
    for a, b in zip(fast[:1] + tuple(fast[1]) + fast[2:], plain[:1] + tuple(plain[1]) + plain[2:]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_layers_get_the_fast_forward_and_keep_weight_semantics():
    model = spred.sparsify(nn.Sequential(nn.Linear(4, 3), nn.Conv1d(3, 2, 1), nn.ConvTranspose1d(2, 2, 1)), 0.1, groups="out", include=(nn.Linear, nn.Conv1d, nn.ConvTranspose1d))
    assert hasattr(type(model[0]), "_spred_fast") and hasattr(type(model[1]), "_spred_fast")
    assert not hasattr(type(model[2]), "_spred_fast")  # transposed convs keep the plain path
    u, w = spred.factors(model[0])
    torch.testing.assert_close(model[0].weight, u * w)
    keys = list(model.state_dict())
    assert "0.parametrizations.weight.original0" in keys and "0.parametrizations.weight.original1" in keys
    collapsed = spred.collapse(model)
    assert type(collapsed[0]) is nn.Linear and type(collapsed[1]) is nn.Conv1d


def test_elementwise_and_subclasses_keep_the_module_forward():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    model = spred.sparsify(nn.Sequential(nn.Linear(4, 3), MyLinear(3, 2)), 0.1, groups="out", include=(nn.Linear,))
    assert not hasattr(type(model[1]), "_spred_fast")
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), model[1](model[0](x)))
    elementwise = spred.sparsify(nn.Linear(4, 3), 0.1)
    assert not hasattr(type(elementwise), "_spred_fast")


def _grouped_model():
    torch.manual_seed(1)
    model = spred.sparsify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)), 0.1, groups="out").double()
    return model, torch.randn(2, 3, 6, 6, dtype=torch.float64)


def test_deepcopy_and_state_dict_roundtrip_keep_the_fast_path():
    model, x = _grouped_model()
    twin = copy.deepcopy(model)
    assert type(twin[0]).forward is _fastpath._fast_forward
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = spred.sparsify(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)), 0.1, groups="out").double()
    fresh.load_state_dict(torch.load(buf))
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_cached_and_stacked_parametrizations_fall_back(monkeypatch):
    model, x = _grouped_model()
    calls = []
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, inp: calls.append(1) or self._conv_forward(inp, self.weight, self.bias))
    expected = model(x)  # the class check ran at sparsify time, so the patched forward is only the fallback
    assert not calls
    with parametrize.cached():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert calls == [1]

    class Double(nn.Module):
        def forward(self, v):
            return 2 * v

    parametrize.register_parametrization(model[0], "weight", Double())
    model(x)
    assert calls == [1, 1]


def test_tied_weights_share_factors_on_the_fast_path(both_paths):
    def run():
        torch.manual_seed(2)
        a, b = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()
        b.weight = a.weight
        model = spred.sparsify(nn.Sequential(a, nn.Tanh(), b), 0.1, groups="in")
        x = torch.randn(3, 4, dtype=torch.float64)
        model(x).sum().backward()
        return [f.grad for f in spred.factors(a)]

    fast, plain = both_paths(run)
    for g, h in zip(fast, plain):
        torch.testing.assert_close(g, h, rtol=1e-12, atol=1e-12)


def test_fused_product_supports_double_backward():
    u = torch.randn(5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *f: _fastpath._Product.apply(*f), (u, w, z))
    assert torch.autograd.gradgradcheck(lambda *f: _fastpath._Product.apply(*f), (u, w))


@pytest.mark.parametrize("space", [False, True])
@pytest.mark.parametrize("groups", ["out", "in"])
@pytest.mark.parametrize("layer_name", ["linear-3d-input", "conv1d", "conv2d-grouped"])
def test_scaled_layer_gradcheck(layer_name, groups, space):
    """The custom backward against finite differences, in both orders of the work."""
    factory, shape = LAYERS[layer_name]
    torch.manual_seed(3)
    module = factory(True).double()
    base = _fastpath._torch_class(type(module))
    layer = _fastpath._Layer(module, base, _fastpath._SPATIAL[base])
    w = module.weight.detach().clone().requires_grad_(True)
    keep = 0 if groups == "out" else 1
    s = torch.rand([n if d == keep else 1 for d, n in enumerate(w.shape)], dtype=torch.float64).add_(0.5).requires_grad_(True)
    b = module.bias.detach().clone().requires_grad_(True)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s, w, b: _fastpath._ScaledLayer.apply(x, s, w, b, layer, groups, space), (x, s, w, b))


def test_grouped_fast_path_saves_no_activation_sized_tensor():
    """What autograd keeps for the grouped layer: its input, the scale and the last factor (as a dense layer: input and weight)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    model = spred.sparsify(nn.Sequential(conv), 0.1, groups="out")
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(x)
    sizes = sorted(t.numel() for t in saved)
    u, w = spred.factors(conv)
    assert sizes == sorted([x.numel(), u.numel(), w.numel()])


@pytest.mark.parametrize("slice_entries", [7, 1 << 18])  # two rows at a time (uneven slices), or all at once
@pytest.mark.parametrize("shape", [(5, 1, 1, 1), (1, 3, 1, 1)])
def test_group_grads_in_slices_equal_the_plain_products(monkeypatch, shape, slice_entries):
    monkeypatch.setattr(_fastpath, "_SLICE", slice_entries)
    dv, w = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    s = torch.randn(shape, dtype=torch.float64)
    expected = (dv * w).sum_to_size(shape), dv * s
    ds, dw = _fastpath._group_grads(dv.clone(), w, s, True, True)
    torch.testing.assert_close(ds, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, expected[1], rtol=1e-12, atol=1e-12)
