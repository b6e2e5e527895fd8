"""Balance is a conservation law: imbalance decays at rate 2*lam; u = -w is invariant."""

import math

import torch

import spred


def _step_sgd(model, x, y, lr):
    opt = torch.optim.SGD(spred.param_groups(model), lr=lr)
    opt.zero_grad()
    (0.5 * (model(x).squeeze(-1) - y).pow(2).mean()).backward()
    opt.step()


def test_imbalance_decays_at_rate_two_lam_under_gradient_flow():
    torch.manual_seed(0)
    lam, lr, steps = 0.5, 1e-4, 2000
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    model = spred.sparsify(torch.nn.Linear(5, 1, bias=False).double(), lam)
    u, w = spred.factors(model)
    before = (u.detach() ** 2 - w.detach() ** 2).clone()
    for _ in range(steps):
        _step_sgd(model, x, y, lr)
    after = u.detach() ** 2 - w.detach() ** 2
    # d/dt (u^2 - w^2) = -2 lam (u^2 - w^2): the data term cancels exactly.
    predicted = before * math.exp(-2 * lam * lr * steps)
    torch.testing.assert_close(after, predicted, rtol=2e-3, atol=1e-12)


def test_one_sgd_step_shrinks_imbalance_by_the_exact_factor():
    # Discrete step: u'^2 - w'^2 = ((1 - lr lam)^2 - lr^2 g^2) (u^2 - w^2), g = dL/dv.
    torch.manual_seed(1)
    lam, lr = 0.3, 0.05
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    model = spred.sparsify(torch.nn.Linear(4, 1, bias=False).double(), lam)
    u, w = spred.factors(model)
    v = (u * w).detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(0.5 * ((x @ v.T).squeeze(-1) - y).pow(2).mean(), v)
    before = u.detach() ** 2 - w.detach() ** 2
    _step_sgd(model, x, y, lr)
    after = u.detach() ** 2 - w.detach() ** 2
    torch.testing.assert_close(after, ((1 - lr * lam) ** 2 - lr**2 * g**2) * before, rtol=1e-10, atol=1e-14)


def test_group_imbalance_decays_too():
    torch.manual_seed(2)
    lam, lr, steps = 0.5, 1e-4, 2000
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    model = spred.sparsify(torch.nn.Linear(6, 3, bias=False).double(), lam, groups="out")
    s, w = spred.factors(model)
    assert s.shape == (3, 1)
    before = (s.detach() ** 2).squeeze(1) - w.detach().pow(2).sum(1)
    opt = torch.optim.SGD(spred.param_groups(model), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum(1).mean()).backward()
        opt.step()
    after = (s.detach() ** 2).squeeze(1) - w.detach().pow(2).sum(1)
    torch.testing.assert_close(after, before * math.exp(-2 * lam * lr * steps), rtol=2e-3, atol=1e-12)


def test_sign_trap_line_is_invariant():
    # Started exactly balanced, a negative weight sits on u = -w and stays there.
    torch.manual_seed(3)
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    lin = torch.nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-0.5, -1.0, 0.7]]))
    model = spred.sparsify(lin, 0.01, init="balanced")
    opt = torch.optim.Adam(spred.param_groups(model), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        (0.5 * (model(x).squeeze(-1) - y).pow(2).mean()).backward()
        opt.step()
    u, w = spred.factors(model)
    torch.testing.assert_close((u + w)[0, :2], torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.all(model.weight[0, :2] <= 0)


def test_exact_zero_stays_zero():
    # The origin is stationary: a weight whose factors are both 0 never moves.
    torch.manual_seed(4)
    lin = torch.nn.Linear(4, 2)
    model = spred.sparsify(lin, 0.1)
    u, w = spred.factors(model)
    with torch.no_grad():
        u[0, 1] = 0.0
        w[0, 1] = 0.0
    opt = torch.optim.Adam(spred.param_groups(model), lr=0.1)
    x = torch.randn(16, 4)
    for _ in range(20):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    assert model.weight[0, 1].item() == 0.0
