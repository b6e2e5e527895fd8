"""Channel groups across layers: sparsify(model, lam, groups="channels", example_inputs=x)."""

import copy
import warnings

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


@pytest.mark.parametrize("group_weight", [None, "size"])
@pytest.mark.parametrize("optimizer, lr, steps, threshold", [(torch.optim.SGD, 0.2, 4000, 1e-6), (torch.optim.Adam, 1e-2, 3000, 1e-4)])
def test_closed_form_group_lasso_through_two_tensors(group_weight, optimizer, lr, steps, threshold):
    """Orthogonal design: X^T X / n = I, loss ||Xv + b - y||^2/(2n); group = (row of W, bias) of a Linear(p, k) with
    channel k. Only hidden channels are gated, so use Linear -> Linear(identity-like readout): readout excluded.
    SGD and Adam land on the KKT conditions of the (weighted) group lasso; Adam's zeros hover near lr^2."""
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
    spred.sparsify(model, lam, groups="channels", example_inputs=X[:4], exclude=("1",), group_weight=group_weight)
    assert [g.name for g in spred.channel_groups(model)] == ["0"]
    opt = optimizer(spred.param_groups(model), lr=lr)
    y = (X @ torch.tensor([1.0, -0.5, 0.0, 0.0], dtype=torch.float64)).unsqueeze(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(X) - y) ** 2).mean() / 2
        loss.backward()
        opt.step()
    report = spred.kkt_residual(model, lambda o, t: ((o - t) ** 2).mean() / 2, (X, y), threshold=threshold)
    assert report.max < 1e-3


def _concat():
    """A gate whose channels have different sizes: conv ``c`` (first, so the root) is added to cat(conv a 3x3, conv b 1x1)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 6, 3, padding=1)
            self.a = nn.Conv2d(3, 2, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(6)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.c(x) + torch.cat([self.a(x), self.b(x)], 1))))

    torch.manual_seed(0)
    return Net()


@pytest.mark.parametrize("depth", [2, 3])
def test_balance_identity_with_unequal_group_weights(depth):
    """At balance the penalty is (D*lam/2) sum_j (c_j ||v_j||)^(2/D) (lam sum_j c_j ||v_j|| for D = 2), whatever c_j,
    and the gates are small: g = cbar^(-1/(D-1)) (c_j ||v_j||)^(1/D), with decay lam * cbar^(2/(D-1)) from param_groups."""
    m, x, lam = _concat(), torch.randn(2, 3, 8, 8), 0.3
    spred.sparsify(m, lam, groups="channels", example_inputs=x, depth=depth, init="balanced")
    (g,) = spred.channel_groups(m)
    c = g.spred.weights
    assert g.n == 6 and len(set(c.tolist())) == 2  # the 3x3 and the 1x1 channels
    with torch.no_grad():
        v = g.value()
        balance = (depth * lam / 2) * (c * v.norm(dim=1)).pow(2.0 / depth).sum()
        torch.testing.assert_close(spred.penalty(m), balance)
        torch.testing.assert_close(g.spred.penalty_at_balance(v), balance)
        torch.testing.assert_close(g.spred.gates, (c * v.norm(dim=1)).pow(1.0 / depth).expand(depth - 1, -1) / c.max() ** (1.0 / (depth - 1)))
    groups = spred.param_groups(m)
    (gate_group,) = [pg for pg in groups if any(p is g.spred.gates for p in pg["params"])]
    assert gate_group["params"] == [g.spred.gates] and gate_group["lam"] == lam
    assert gate_group["weight_decay"] == pytest.approx(lam * float(c.max()) ** (2.0 / (depth - 1)))
    assert all(pg["weight_decay"] == lam for pg in groups if pg["spred"] and pg is not gate_group)
    m.eval()
    torch.testing.assert_close(spred.collapse(m)(x), m(x))  # the balanced init kept the function


def test_preserve_init_keeps_the_function_with_gates_of_the_size_of_w():
    m, x = _concat(), torch.randn(2, 3, 8, 8)
    m.eval()
    before = m(x)
    spred.sparsify(m, 0.1, groups="channels", example_inputs=x)
    m.eval()
    torch.testing.assert_close(m(x), before)
    (g,) = spred.channel_groups(m)
    s = g.spred.scale()
    w = torch.cat([f.detach().flatten() for f in g.factors[1:]])
    assert float(s.max() / s.min()) == pytest.approx(1.0)  # one scale for the whole group
    assert float(g.spred.gates.detach().pow(2).mean().sqrt()) == pytest.approx(float(w.pow(2).mean().sqrt()), rel=0.5)


def test_set_lam_changes_the_gates_decay_with_the_same_source_as_penalty():
    m, x = _resnet(), torch.randn(2, 3, 32, 32)
    spred.sparsify(m, 1e-3, groups="channels", example_inputs=x)
    opt = torch.optim.SGD(spred.param_groups(m), lr=0.01)
    gates = {id(g.spred.gates): g.spred for g in spred.channel_groups(m)}

    def decayed(groups):  # sum over optimizer groups of (weight_decay/2) ||p||^2, what SGD's coupled decay adds
        return sum(0.5 * pg["weight_decay"] * sum(float(p.detach().pow(2).sum()) for p in pg["params"]) for pg in groups if pg["spred"])

    for lam in (1e-3, 4e-3):
        spred.set_lam(m, lam, opt)
        for pg in opt.param_groups:
            if pg["spred"]:
                expected = {lam * float(gates[id(p)].cbar()) ** 2 if id(p) in gates else lam for p in pg["params"]}
                assert pg["lam"] == lam and len(expected) == 1 and pg["weight_decay"] == pytest.approx(expected.pop())
        assert float(spred.penalty(m)) == pytest.approx(decayed(opt.param_groups), rel=1e-6)
        assert [pg["weight_decay"] for pg in opt.param_groups] == [pg["weight_decay"] for pg in spred.param_groups(m)]
    assert len({pg["weight_decay"] for pg in opt.param_groups if pg["spred"]}) > 2  # gates of different sizes, one group each


def test_sgd_too_large_for_the_gates_decay_warns():
    m, x = _resnet(), torch.randn(2, 3, 32, 32)
    spred.sparsify(m, 1e-2, groups="channels", example_inputs=x)
    worst = max(pg["weight_decay"] for pg in spred.param_groups(m))
    with pytest.warns(UserWarning, match=r"lr \* weight_decay = .* is not below 3.8"):
        assert not spred.check_optimizer(torch.optim.SGD(spred.param_groups(m), lr=4.0 / worst, momentum=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spred.check_optimizer(torch.optim.SGD(spred.param_groups(m), lr=3.0 / worst, momentum=0.9))
        assert spred.check_optimizer(torch.optim.Adam(spred.param_groups(m), lr=10.0))


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


def test_checkpoint_of_the_old_parametrisation_is_refused():
    """Gates saved when they divided by the group weight would load silently wrong: the missing version refuses them."""
    m, x = _mlp(), torch.randn(16, 6)
    spred.sparsify(m, 0.1, groups="channels", example_inputs=x)
    state = m.state_dict()
    key = next(k for k in state if k.endswith("_extra_state") and "version" in state[k])
    state[key] = {k: v for k, v in state[key].items() if k != "version"}
    fresh = spred.sparsify(_mlp(), 0.1, groups="channels", example_inputs=x)
    with pytest.raises(ValueError, match=r"saved by an older spred, whose gates divided each channel by its group weight"):
        fresh.load_state_dict(state)


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



@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gate_scales_equal_the_product_formula(monkeypatch, depth):
    """``ChannelGate.scale`` writes the product of the D-1 gate rows out (no ``torch.prod``); the model equals the
    reference ``prod(g, 0) * cbar / c`` (float64, 1e-12) in outputs, every gradient, running statistics, penalty and
    collapsed weights, with unequal group weights and some gates at zero."""
    from spred.nn import _gates

    m, x = _resnet().double(), torch.randn(3, 3, 32, 32, dtype=torch.float64)
    spred.sparsify(m, 0.05, groups="channels", example_inputs=x[:2], depth=depth, group_weight="flops")
    with torch.no_grad():
        for i, g in enumerate(spred.channel_groups(m)):
            g.spred.gates.mul_(torch.rand_like(g.spred.gates) + 0.5)  # generic scales, not the initial constant
            g.spred.gates[i % (depth - 1), :: 3 + i % 2] = 0.0  # zeros: the product's gradient must not need a division
    reference = copy.deepcopy(m)
    fast = _gated_step(m, x)
    monkeypatch.setattr(_gates.ChannelGate, "scale", lambda self: self.gates.prod(dim=0) * (self.cbar() / self.weights))
    slow = _gated_step(reference, x)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gate_lr_goes_to_the_gate_groups_only_and_survives_set_lam():
    m, x = _resnet(), torch.randn(2, 3, 32, 32)
    spred.sparsify(m, 1e-3, groups="channels", example_inputs=x)
    gates = {id(g.spred.gates) for g in spred.channel_groups(m)}
    opt = torch.optim.Adam(spred.param_groups(m, gate_lr=0.05), lr=1e-3)
    for pg in opt.param_groups:
        is_gate = {id(p) in gates for p in pg["params"]}
        assert len(is_gate) == 1  # gates are never mixed with other parameters
        assert pg.get("gate", False) is is_gate.pop()
        assert pg["lr"] == (0.05 if pg.get("gate") else 1e-3)
    assert sum(len(pg["params"]) for pg in opt.param_groups if pg.get("gate")) == len(gates)
    spred.set_lam(m, 4e-3, opt)  # changes lam and weight decay, not the rates
    assert {pg["lr"] for pg in opt.param_groups if pg.get("gate")} == {0.05}
    assert {pg["lr"] for pg in opt.param_groups if not pg.get("gate")} == {1e-3}
    assert all(pg["lam"] == 4e-3 for pg in opt.param_groups if pg["spred"])
    # without gate_lr the groups are the same, with no lr of their own
    plain = spred.param_groups(m)
    assert [len(pg["params"]) for pg in plain] == [len(pg["params"]) for pg in opt.param_groups] and all("lr" not in pg for pg in plain)


def test_gate_lr_is_refused_without_channel_gates_and_checked():
    m = spred.sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)), 1e-3, groups="out")
    with pytest.raises(ValueError, match="'gate_lr' parameter of param_groups sets the learning rate of the gates"):
        spred.param_groups(m, gate_lr=1e-2)
    m, x = _mlp(), torch.randn(4, 6)
    spred.sparsify(m, 1e-3, groups="channels", example_inputs=x)
    with pytest.raises(ValueError, match="'gate_lr' parameter of param_groups must be"):
        spred.param_groups(m, gate_lr=0.0)


@pytest.mark.parametrize("optimizer, lr, gate_lrs, steps", [(torch.optim.SGD, 0.2, (0.05, 0.6), 3000), (torch.optim.Adam, 1e-2, (3e-3, 5e-2), 4000)])
def test_gate_lr_does_not_move_the_group_lasso_solution(optimizer, lr, gate_lrs, steps):
    """A learning rate per parameter changes the path, not the minimisers: with the gates at ``lr`` or at another
    rate, training lands on the closed-form group lasso of an orthogonal design, ``w_j = max(0, 1 - lam c_j / ||z_j||) z_j``
    with ``z_j = X^T y_j / n`` (one gated channel j per output column, a fixed identity readout), a zero group included."""
    torch.manual_seed(0)
    n, p, k, lam = 64, 4, 3, 0.05
    q, _ = torch.linalg.qr(torch.randn(n, p, dtype=torch.float64))
    X = q * n**0.5
    z = torch.tensor([[1.0, -0.5, 0.0, 0.2], [0.03, 0.02, -0.02, 0.0], [0.0, 0.3, 0.8, -0.4]], dtype=torch.float64)  # (k, p)
    y = X @ z.T  # then X^T y_j / n = z_j exactly
    solutions = []
    for gate_lr in (None, *gate_lrs):
        lin, head = nn.Linear(p, k, bias=False).double(), nn.Linear(k, k, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(0.1 * torch.ones(k, p, dtype=torch.float64))
            head.weight.copy_(torch.eye(k, dtype=torch.float64))
        head.weight.requires_grad_(False)
        model = nn.Sequential(lin, head)
        spred.sparsify(model, lam, groups="channels", example_inputs=X[:4], exclude=("1",))
        (g,) = spred.channel_groups(model)
        opt = optimizer(spred.param_groups(model, gate_lr=gate_lr), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            (((model(X) - y) ** 2).sum(1).mean() / 2).backward()
            opt.step()
        c = g.spred.weights.double()
        closed = (1 - lam * c / z.norm(dim=1)).clamp(min=0).unsqueeze(1) * z
        assert float(closed[1].abs().max()) == 0.0  # the second group is zero at the optimum
        with torch.no_grad():
            v = spred.collapse(model, threshold=1e-4)[0].weight
        torch.testing.assert_close(v, closed, atol=2e-3, rtol=0)
        solutions.append(v)
    torch.testing.assert_close(solutions[1], solutions[0], atol=3e-3, rtol=0)
    torch.testing.assert_close(solutions[2], solutions[0], atol=3e-3, rtol=0)
