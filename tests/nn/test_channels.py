"""Channel groups across layers: sparsify(model, lam, groups="channels", example_inputs=x)."""

import copy

import pytest
import torch
from torch import nn

import spred
import spred.models
import spred.train

pytest.importorskip("torch_pruning")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def _resnet():
    torch.manual_seed(0)
    return spred.models.build("resnet20", shortcut="B")


def test_function_preserved_and_groups_span_layers():
    m, x = _resnet(), torch.randn(2, 3, 32, 32)
    m.eval()
    before = m(x)
    spred.sparsify(m, 1e-3, groups="channels", example_inputs=x)
    m.eval()
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=1e-5)
    groups = spred.channel_groups(m)
    assert groups and all(len({mem.module for mem in g.members}) >= 2 for g in groups)  # conv + BatchNorm at least
    assert any("outputs of the model" in s["reason"] for s in spred.skipped_channel_groups(m))


def test_penalty_at_balance_is_weighted_group_lasso():
    m, x = _mlp(), torch.randn(16, 6)
    spred.sparsify(m, 0.3, groups="channels", example_inputs=x, init="balanced")
    total = 0.0
    for g in spred.channel_groups(m):
        with torch.no_grad():
            v = g.value()
        total += float(0.3 * (g.spred.weights * v.norm(dim=1)).sum())
        sizes = torch.tensor([float(r.numel()) for r in v])
        torch.testing.assert_close(g.spred.weights, sizes.sqrt())
    assert float(spred.penalty(m)) == pytest.approx(total, rel=1e-5)


def test_closed_form_group_lasso_through_two_tensors():
    """Orthogonal design: X^T X / n = I, loss ||Xv + b - y||^2/(2n); group = (row of W, bias) of a Linear(p, k) with
    channel k. Only hidden channels are gated, so use Linear -> Linear(identity-like readout): readout excluded."""
    torch.manual_seed(0)
    n, p = 64, 4
    q, _ = torch.linalg.qr(torch.randn(n, p))
    X = (q * n**0.5).double()
    lin = nn.Linear(p, 3).double()
    head = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
    head.weight.requires_grad_(False)  # a fixed readout: the loss is linear in the gated group
    model = nn.Sequential(lin, head)
    lam = 0.05
    spred.sparsify(model, lam, groups="channels", example_inputs=X[:4], exclude=("1",), group_weight=None)
    assert [g.name for g in spred.channel_groups(model)] == ["0"]
    opt = torch.optim.SGD(spred.param_groups(model), lr=0.2)
    y = (X @ torch.tensor([1.0, -0.5, 0.0, 0.0], dtype=torch.float64)).unsqueeze(1)
    for _ in range(4000):
        opt.zero_grad()
        loss = ((model(X) - y) ** 2).mean() / 2
        loss.backward()
        opt.step()
    report = spred.kkt_residual(model, lambda o, t: ((o - t) ** 2).mean() / 2, (X, y), threshold=1e-6)
    assert report.max < 1e-3


def test_collapse_and_prune_remove_zero_groups_exactly():
    m, x = _resnet(), torch.randn(4, 3, 32, 32)
    spred.sparsify(m, 1e-3, groups="channels", example_inputs=x)
    groups = spred.channel_groups(m)
    with torch.no_grad():
        for g in groups[:3]:
            g.spred.gates[:, : g.n // 2] = 0
    collapsed = spred.collapse(m)
    assert not spred.is_sparsified(collapsed)
    m.eval(), collapsed.eval()
    torch.testing.assert_close(collapsed(x), m(x), atol=1e-5, rtol=1e-5)
    report = spred.sparsity_report(m)
    assert sum(r.zero for r in report.groups) == sum(g.n // 2 for g in groups[:3])
    pruned, plan = spred.prune_channels(collapsed, x)
    assert plan.n_removed == sum(g.n // 2 for g in groups[:3])
    pruned.eval()
    torch.testing.assert_close(pruned(x), collapsed(x), atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_and_set_lam():
    m, x = _mlp(), torch.randn(16, 6)
    spred.sparsify(m, 0.1, groups="channels", example_inputs=x)
    spred.set_lam(m, 0.25)
    assert set(spred.get_lam(m).values()) == {0.25}
    state = m.state_dict()
    fresh = spred.sparsify(_mlp(), 0.1, groups="channels", example_inputs=x)
    fresh.load_state_dict(state)
    assert set(spred.get_lam(fresh).values()) == {0.25}
    m.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), m(x))


def test_fit_counts_channel_groups():
    m, x = _mlp(), torch.randn(64, 6)
    y = x[:, :1]
    spred.sparsify(m, 0.05, groups="channels", example_inputs=x[:4])
    hist = spred.train.fit(m, (x, y), loss_fn=nn.MSELoss(), epochs=3, batch_size=16, optimizer="adam", lr=1e-2, threshold=1e-3)
    last = hist.history[-1]
    assert last["lam"] == pytest.approx(0.05)
    assert last["sparsity"] == pytest.approx(spred.sparsity_report(m, threshold=1e-3).sparsified_sparsity)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="needs example_inputs"):
        spred.sparsify(_mlp(), 0.1, groups="channels")
    with pytest.raises(ValueError, match="does not run on example_inputs"):
        spred.sparsify(_mlp(), 0.1, groups="channels", example_inputs=torch.randn(4, 5))
    with pytest.raises(ValueError, match="no attention module"):
        spred.sparsify(_mlp(), 0.1, groups="channels", example_inputs=torch.randn(4, 6), heads=True)
    with pytest.raises(ValueError, match="applies to groups='channels' only"):
        spred.sparsify(_mlp(), 0.1, example_inputs=torch.randn(4, 6))


def test_attention_heads_are_gated():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0].mean(1))

    m, x = Block(), torch.randn(2, 5, 16)
    spred.sparsify(m, 0.1, groups="channels", example_inputs=x, heads=True)
    names = [g.name for g in spred.channel_groups(m)]
    assert names == ["attn:heads"] and spred.channel_groups(m)[0].n == 4


def _gated_step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out.pow(2).sum() + spred.penalty(model)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]  # BatchNorm running statistics, after the step's forward
    return [out.detach(), *grads, *buffers, spred.penalty(model).detach(), *spred.collapse(model, threshold=0.0).state_dict().values()]


def test_whole_gate_scales_equal_the_general_path():
    """A tensor covered by one gate in channel order takes the gate's scales as they are; the same numbers as the
    general index path (float64, 1e-12): outputs, every gradient, running statistics, penalty and collapsed weights."""
    from spred.nn._channels import _gate_scales

    m, x = _resnet().double(), torch.randn(3, 3, 32, 32, dtype=torch.float64)
    spred.sparsify(m, 0.05, groups="channels", example_inputs=x[:2])
    with torch.no_grad():
        for g in spred.channel_groups(m):
            g.spred.gates.mul_(torch.rand_like(g.spred.gates) + 0.5)  # generic scales, not the initial constant
    general = copy.deepcopy(m)
    scales = [s for _, _, s in _gate_scales(general)]
    assert any(s.whole is not None for s in scales)
    for s in scales:
        s.__dict__["whole"] = None
    fast, slow = _gated_step(m, x), _gated_step(general, x)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    m.eval()
    collapsed = spred.collapse(m, threshold=0.0).eval()
    torch.testing.assert_close(collapsed(x), m(x), rtol=1e-12, atol=1e-12)  # the weight-space values the model uses


def test_one_scale_per_gate_and_pass_keeps_separate_passes_apart():
    """Inside a forward pass of the gated model each gate's scale is computed once and shared; two passes have
    their own graphs (two losses, backward one after the other, as with the scales computed per tensor)."""
    from spred.nn import _gates

    m, x = _resnet().double(), torch.randn(4, 3, 32, 32, dtype=torch.float64)
    spred.sparsify(m, 0.05, groups="channels", example_inputs=x[:2])
    twin = copy.deepcopy(m)
    _gates.remove_pass_hooks(twin)  # every tensor computes its scales itself
    calls = []
    original = _gates.ChannelGate.scale
    for model in (m, twin):
        model.zero_grad(set_to_none=True)
        calls.append(0)

        def counted(self):
            calls[-1] += 1
            return original(self)

        _gates.ChannelGate.scale = counted
        try:
            first, second = model(x[:2]).pow(2).sum(), model(x[2:]).pow(3).sum()
        finally:
            _gates.ChannelGate.scale = original
        first.backward()
        second.backward()
    assert calls[0] == 2 * len(spred.channel_groups(m)) < calls[1]
    for a, b in zip(m.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert not spred.collapse(m)._forward_hooks and not spred.collapse(m)._forward_pre_hooks
