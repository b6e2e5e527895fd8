"""collapse restores plain modules with exact zeros; the report counts them right."""

import math

import pytest
import torch
from torch import nn

import spred


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()


def test_collapse_gives_original_classes_and_same_outputs():
    model = spred.sparsify(_mlp(), 0.1)
    x = torch.randn(7, 6)
    out = spred.collapse(model)
    assert type(out[0]) is nn.Linear and type(out[3]) is nn.Linear
    assert not spred.is_sparsified(out)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in out.modules())
    torch.testing.assert_close(out(x), model(x))
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in _mlp().parameters())
    assert set(out.state_dict()) == set(_mlp().state_dict())  # loads into the dense architecture


def test_collapse_thresholds_both_signs_and_counts_them():
    model = spred.sparsify(_mlp(), 0.1)
    with torch.no_grad():
        u, w = spred.factors(model[0])
        w.copy_(torch.randn_like(w))
        w[0, :3] = torch.tensor([1e-7, -1e-7, -3e-8]) / u[0, :3]  # tiny of both signs
    out = spred.collapse(model, threshold=1e-6)
    assert out[0].weight[0, :3].eq(0).all()
    report = spred.sparsity_report(model, threshold=1e-6)
    assert report["0.weight"].zeros == 3  # a `v > thr` sign bug would count only one
    assert spred.sparsity_report(out)["0.weight"].zeros == 3
    assert spred.sparsity_report(model)["0.weight"].zeros == 0


def test_group_collapse_zeroes_whole_groups():
    model = spred.sparsify(_mlp(), 0.1, groups="out")
    with torch.no_grad():
        s, _ = spred.factors(model[0])
        s[1] = 1e-9
        s[3] = -1e-9
    out = spred.collapse(model, threshold=1e-6)
    assert out[0].weight[[1, 3]].eq(0).all() and out[0].weight[[0, 2, 4]].ne(0).all()
    row = spred.sparsity_report(out)["0.weight"]
    assert (row.zero_groups, row.n_groups, row.zeros) == (2, 5, 12)


def test_collapse_inplace():
    model = spred.sparsify(_mlp(), 0.1)
    out = spred.collapse(model, inplace=True)
    assert out is model and type(model[0]) is nn.Linear


def test_report_counts_parameters_not_buffers():
    model = spred.collapse(spred.sparsify(_mlp(), 0.1))
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[0] = 0
        model[1].bias.fill_(0.5)  # BatchNorm's shift starts at exactly 0
    report = spred.sparsity_report(model)
    n_params = 6 * 5 + 5 + 5 + 5 + 5 * 3 + 3  # BN weight/bias count; running stats do not
    assert report.total == n_params
    assert report.nonzero == n_params - 13
    assert math.isclose(report.compression_ratio, n_params / (n_params - 13))
    assert "running_mean" not in str(report)
    assert report["0.weight"].zero_groups == 2 and report["0.weight"].lam is None
    assert "compression ratio" in str(report) and "0.weight" in str(report)


def test_report_on_sparsified_model_lists_lam_and_counts_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    model = spred.sparsify(Tied(), 0.2)
    report = spred.sparsity_report(model)
    assert [r.name for r in report.rows] == ["a.weight"] and report.rows[0].lam == 0.2
    assert report.total == 16


def test_kkt_residual_is_zero_at_the_lasso_solution_and_positive_elsewhere():
    torch.manual_seed(0)
    n, p, alpha = 100, 8, 0.2
    x = torch.randn(n, p, dtype=torch.float64)
    y = x[:, 0] * 2 - x[:, 1] + 0.1 * torch.randn(n, dtype=torch.float64)
    from sklearn.linear_model import Lasso

    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100000).fit(x.numpy(), y.numpy())
    model = spred.sparsify(nn.Linear(p, 1, bias=False).double(), alpha)
    model.weight = torch.as_tensor(ref.coef_).reshape(1, p)  # assignment goes through right_inverse
    loss = lambda out, t: 0.5 * (out.squeeze(-1) - t).pow(2).mean()  # noqa: E731
    kkt = spred.kkt_residual(model, loss, (x, y))
    assert kkt.max < 1e-8 and kkt.per_tensor["weight"]["zeros"] == int((ref.coef_ == 0).sum()) > 0
    model.weight = torch.as_tensor(ref.coef_ * 1.1).reshape(1, p)
    assert spred.kkt_residual(model, loss, (x, y)).max > 1e-3
    assert "max residual" in str(kkt)


def test_kkt_residual_leaves_model_state_alone():
    model = spred.sparsify(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)), 0.1).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    spred.kkt_residual(model, lambda o, t: (o.squeeze(-1) - t).pow(2).mean(), (torch.randn(8, 3), torch.randn(8)))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("groups", [None, "out", "in"])
def test_report_with_threshold_predicts_collapse(groups):
    torch.manual_seed(3)
    model = spred.sparsify(_mlp(), 0.1, groups=groups)
    with torch.no_grad():
        for m in (model[0], model[3]):
            f = spred.factors(m)[0]
            f.mul_((torch.rand_like(f) < 0.4) * 1e-6 + (torch.rand_like(f) < 0.5))  # small, zero and normal entries
    for thr in (0.0, 1e-5, 1e-3):
        predicted = spred.sparsity_report(model, threshold=thr)
        actual = spred.sparsity_report(spred.collapse(model, threshold=thr))
        assert [r.zeros for r in predicted.rows] == [r.zeros for r in actual.rows]


def test_kkt_residual_is_finite_for_subnormal_weights():
    model = spred.sparsify(nn.Linear(2, 1, bias=False).double(), 0.5)
    with torch.no_grad():
        u, w = spred.factors(model)
        u.fill_(1.0)
        w.copy_(torch.tensor([[1e-320, 0.3]], dtype=torch.float64))
    x, y = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    kkt = spred.kkt_residual(model, lambda o, t: 0.5 * (o.squeeze(-1) - t).pow(2).mean(), (x, y))
    assert math.isfinite(kkt.max)
