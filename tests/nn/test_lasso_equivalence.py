"""Acceptance: plain SGD / Adam on spred factors solve the Lasso exactly (orthogonal design)."""

import math

import pytest
import torch

import spred


def _orthogonal_problem(n=200, p=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, p, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(0))  # centred, orthonormal columns
    x = q * math.sqrt(n)  # X^T X / n = I, columns orthogonal to the intercept
    v_true = torch.zeros(p, dtype=torch.float64)
    v_true[:12] = torch.tensor([3, -2, 1.5, -1, 2.5, -3, 0.8, -0.7, 1.2, -1.8, 2, -2.2], dtype=torch.float64)
    y = x @ v_true + 1.0 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def _closed_form(x, y, alpha):
    # argmin (1/2n)||y - b - Xv||^2 + alpha ||v||_1 for X^T X / n = I, centred X.
    z = x.T @ (y - y.mean()) / x.shape[0]
    return torch.sign(z) * (z.abs() - alpha).clamp_min(0), y.mean()


def _half_mse(out, target):
    return 0.5 * (out.squeeze(-1) - target).pow(2).mean()


def _train(optimizer_cls, lr, steps, alpha, seed=1):
    x, y = _orthogonal_problem()
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1).double()  # default init, with bias
    v0 = model.weight.detach().clone().squeeze(0)
    spred.sparsify(model, alpha)  # default settings
    opt = optimizer_cls(spred.param_groups(model), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _half_mse(model(x), y).backward()
        opt.step()
    return model, v0, x, y


def test_sgd_converges_to_closed_form_lasso_including_sign_flips():
    alpha = 0.3
    model, v0, x, y = _train(torch.optim.SGD, lr=0.1, steps=4000, alpha=alpha)
    v_star, b_star = _closed_form(x, y, alpha)
    v = model.weight.detach().squeeze(0)
    assert (v - v_star).abs().max() <= 1e-6
    assert abs(model.bias.item() - b_star) <= 1e-6
    flipped = (torch.sign(v0) != torch.sign(v_star)) & (v_star != 0)
    assert flipped.sum() >= 3  # coordinates whose optimal sign opposes the initial one
    assert torch.all((v - v_star)[flipped].abs() <= 1e-6)
    # Pruned weights shrink geometrically (here below 1e-80 after 4000 steps) and
    # underflow to exact zeros later; any tiny threshold gives the support now.
    assert v[v_star == 0].abs().max() < 1e-60
    collapsed = spred.collapse(model, threshold=1e-12)
    assert torch.equal(collapsed.weight.squeeze(0) != 0, v_star != 0)
    kkt = spred.kkt_residual(model, _half_mse, (x, y), threshold=1e-12)
    assert kkt.max <= 1e-6 and kkt.other <= 1e-6


def test_adam_converges_to_closed_form_at_adams_tolerance():
    alpha = 0.3
    model, v0, x, y = _train(torch.optim.Adam, lr=1e-2, steps=3000, alpha=alpha)
    v_star, _ = _closed_form(x, y, alpha)
    v = model.weight.detach().squeeze(0)
    assert (v - v_star).abs().max() <= 1e-6
    # Adam's pruned factors hover near lr: |v| ~ lr^2, so zeros need a threshold.
    collapsed = spred.collapse(model, threshold=1e-4)
    assert torch.equal(collapsed.weight.squeeze(0) != 0, v_star != 0)
    kkt = spred.kkt_residual(model, _half_mse, (x, y), threshold=1e-4)
    assert kkt.max <= 1e-5
    # Without a threshold, near-zero entries are judged as nonzero and the gap shows it.
    assert spred.kkt_residual(model, _half_mse, (x, y)).max > kkt.max


@pytest.mark.parametrize("opt", [torch.optim.SGD, torch.optim.Adagrad])
def test_other_coupled_optimizers_reach_the_same_solution(opt):
    alpha = 0.5
    model, _, x, y = _train(opt, lr=0.1, steps=3000, alpha=alpha)
    v_star, _ = _closed_form(x, y, alpha)
    assert (model.weight.detach().squeeze(0) - v_star).abs().max() <= 1e-5


def test_balanced_init_traps_signs():
    # Why the default init is not the balanced split (DESIGN.md, "the sign trap").
    alpha = 0.3
    x, y = _orthogonal_problem()
    torch.manual_seed(1)
    model = torch.nn.Linear(x.shape[1], 1).double()
    v0 = model.weight.detach().clone().squeeze(0)
    spred.sparsify(model, alpha, init="balanced")
    opt = torch.optim.SGD(spred.param_groups(model), lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        _half_mse(model(x), y).backward()
        opt.step()
    v_star, _ = _closed_form(x, y, alpha)
    v = model.weight.detach().squeeze(0)
    flipped = (torch.sign(v0) != torch.sign(v_star)) & (v_star != 0)
    assert torch.all(v[flipped].abs() < 1e-6)  # stuck at 0 instead of crossing over
    assert (v - v_star).abs().max() > 0.5


def test_group_lasso_orthogonal_closed_form():
    # Group soft-thresholding: v_g = max(0, 1 - alpha/||z_g||) z_g for X^T X / n = I.
    x, y = _orthogonal_problem(p=30)
    g = torch.Generator().manual_seed(5)
    y2 = torch.stack([y, x @ (torch.randn(30, generator=g, dtype=torch.float64) * (torch.arange(30) % 3 == 0))], 1)
    z = (x.T @ (y2 - y2.mean(0)) / x.shape[0]).T  # (2, 30): columns are the groups
    # A strength in the widest gap between group norms keeps every group away from
    # the KKT boundary, where convergence is slow for any first-order method.
    sorted_norms = z.norm(dim=0).sort().values
    i = int((sorted_norms[1:] - sorted_norms[:-1])[5:-5].argmax()) + 5
    alpha = float(sorted_norms[i : i + 2].mean())
    model = spred.sparsify(torch.nn.Linear(30, 2, bias=False).double(), alpha, groups="in")
    opt = torch.optim.SGD(spred.param_groups(model), lr=0.1)
    loss = lambda out, t: 0.5 * (out - t).pow(2).sum(1).mean()  # noqa: E731
    for _ in range(4000):
        opt.zero_grad()
        loss(model(x), y2 - y2.mean(0)).backward()
        opt.step()
    norms = z.norm(dim=0, keepdim=True)
    v_star = (1 - alpha / norms).clamp_min(0) * z
    assert (model.weight.detach() - v_star).abs().max() <= 1e-6
    assert 0 < int((v_star.norm(dim=0) == 0).sum()) < 30
    collapsed = spred.collapse(model, threshold=1e-12)  # a whole group below the threshold becomes 0
    assert spred.sparsity_report(collapsed)["weight"].zero_groups == 0  # a plain model's groups are output rows
    zero_cols = int((collapsed.weight.norm(dim=0) == 0).sum())
    assert zero_cols == int((v_star.norm(dim=0) == 0).sum())
    assert spred.sparsity_report(model, threshold=1e-12)["weight"].zero_groups == zero_cols  # groups="in": columns
