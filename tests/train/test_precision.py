"""bfloat16 autocast in fit: the forward pass runs in bf16, the factors, the penalty and the zeros stay float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spred
from spred.train import checkpoint_path, fit, load_checkpoint

THRESHOLD = 1e-3
ALPHA = 0.05  # sklearn's alpha: the loss is mean(r^2)/2, so lam = alpha


def lasso_problem(n=512, p=30, seed=0):
    """A Lasso with 6 true nonzeros and a wide KKT margin: the zero set is not a close call."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    beta = torch.zeros(p)
    beta[:6] = torch.tensor([2.0, -1.5, 1.0, -1.0, 1.5, -2.0])
    y = X @ beta + 0.1 * torch.randn(n, generator=g)
    return X, y


def half_mse(out, y):
    return 0.5 * ((out.squeeze(-1) - y) ** 2).mean()


def lasso_model(p=30):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        linear = nn.Linear(p, 1)
    return spred.sparsify(linear, lam=ALPHA)


def train_lasso(autocast, device="cpu", **kw):
    X, y = lasso_problem()
    model = lasso_model()
    kw = {"epochs": 40, "optimizer": "sgd", "lr": 0.05, "batch_size": 64, "loss_fn": half_mse, "threshold": THRESHOLD,
          "scheduler": "cosine", "progress": False, "device": device, **kw}
    fit(model, (X, y), autocast=autocast, **kw)
    return model.cpu(), (X, y)


def test_autocast_runs_the_forward_in_bf16_and_keeps_everything_else_float32(data, make_net):
    X, y = data
    net = make_net(dropout=0.0)
    seen = []
    for module in net.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    fit(net, (X, y), epochs=2, autocast="bfloat16", val_data=(X, y), progress=False, batch_size=32)
    assert {dtype for _, dtype in seen} == {torch.bfloat16}  # training and evaluation forwards
    assert {training for training, _ in seen} == {True, False}
    for t in spred.nn.sparsified_tensors(net):
        assert all(f.dtype == torch.float32 for f in t.factors)
        assert all(f.grad is not None and f.grad.dtype == torch.float32 for f in t.factors)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_the_penalty_stays_float32_under_autocast(make_net):
    net = make_net()
    outside = spred.penalty(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = spred.penalty(net)
        v = net[1].weight  # the product u * w: an elementwise multiply, which autocast leaves in float32
    assert inside.dtype == v.dtype == torch.float32
    assert torch.equal(inside, outside)


def test_bf16_training_makes_the_float32_zero_decisions():
    """SGD + cosine schedule on a Lasso, in float32 and with bf16 autocast, against scikit-learn's Lasso."""
    from sklearn.linear_model import Lasso

    full, (X, y) = train_lasso(None)
    half, _ = train_lasso("bfloat16")
    ref = torch.as_tensor(Lasso(alpha=ALPHA, tol=1e-10).fit(X.double().numpy(), y.double().numpy()).coef_, dtype=torch.float32)
    v_full, v_half = full.weight.detach().squeeze(0), half.weight.detach().squeeze(0)
    zeros_full, zeros_half = v_full.abs() <= THRESHOLD, v_half.abs() <= THRESHOLD
    assert torch.equal(zeros_full, zeros_half)
    assert torch.equal(zeros_full, ref == 0) and int(zeros_full.sum()) == 24  # the optimum's zeros, found by both
    assert float(v_half[zeros_half].abs().max()) < 0.2 * THRESHOLD  # not a close call (measured about 1e-4)
    torch.testing.assert_close(v_half, v_full, atol=5e-3, rtol=0)  # measured: max 2e-3
    torch.testing.assert_close(v_half, ref, atol=5e-3, rtol=0)
    for model in (full, half):  # both are L1 optima: the KKT check in float32 on all the data (measured 1e-3 to 2e-3)
        report = spred.kkt_residual(model, half_mse, (X, y), threshold=THRESHOLD)
        assert report.max < 0.1 * ALPHA, report
    collapsed = spred.collapse(half, threshold=THRESHOLD)
    assert torch.equal(collapsed.weight.detach().squeeze(0) == 0, zeros_full)


class Crash(Exception):
    pass


def crash_in(epoch):
    def callback(state):
        if state.epoch == epoch:
            raise Crash

    return callback


def test_autocast_run_with_the_controller_resumes_bit_for_bit(tmp_path, data, make_net, same_weights):
    X, y = data
    kw = {"progress": False, "batch_size": 32, "autocast": "bf16", "target_sparsity": 0.3, "threshold": 1e-3, "seed": 1}
    full = fit(make_net(), (X, y), epochs=4, **kw)
    with pytest.raises(Crash):
        fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path, callbacks=[crash_in(3)], **kw)
    assert load_checkpoint(checkpoint_path(tmp_path))["config"]["autocast"] == "bfloat16"
    resumed = fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    assert same_weights(full.model, resumed.model)
    assert [r["lam"] for r in resumed.history] == [r["lam"] for r in full.history]
    with pytest.warns(UserWarning, match=r"resuming a run with different settings \(autocast: 'bfloat16' -> None\)"):
        fit(make_net(), (X, y), epochs=5, checkpoint_dir=tmp_path, resume=True, **{**kw, "autocast": None})


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("float16", ValueError, r"'autocast' parameter of fit must be None or 'bfloat16'. Got 'float16' instead: float16 needs loss scaling"),
        (torch.float16, ValueError, r"Got torch.float16 instead: float16 needs loss scaling \(torch.amp.GradScaler\)"),
        ("int8", ValueError, r"'autocast' parameter of fit must be None or 'bfloat16'. Got 'int8' instead\.$"),
        (torch.float32, ValueError, r"Got torch.float32 instead\.$"),
        (True, TypeError, r"'autocast' parameter of fit must be None, 'bfloat16' or torch.bfloat16. Got True of type bool"),
    ],
)
def test_autocast_errors(data, make_net, value, error, match):
    with pytest.raises(error, match=match):
        fit(make_net(), data, epochs=1, autocast=value, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_on_cuda_makes_the_float32_zero_decisions():
    full, _ = train_lasso(None, device="cuda")
    half, _ = train_lasso("bfloat16", device="cuda")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    assert torch.equal(full.weight.abs() <= THRESHOLD, half.weight.abs() <= THRESHOLD)
    torch.testing.assert_close(half.weight, full.weight, atol=2e-2, rtol=0)
