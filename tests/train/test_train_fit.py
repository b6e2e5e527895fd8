"""spred.train.fit: training, optimizers, resume, the non-finite guard, masks, early stopping, errors."""

import hashlib
import logging
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import spred
from spred.train import TargetSparsity, TrainResult, build_optimizer, checkpoint_path, evaluate, fit, load_checkpoint

KEYS = {"epoch", "train_loss", "val_loss", "val_acc", "lam", "sparsity", "target", "lr", "step", "time_s"}


def quiet(**kw):
    return {"progress": False, "batch_size": 32, **kw}


def test_fit_trains_and_records_every_epoch(data, make_net):
    X, y = data
    net = make_net()
    before = evaluate(net, (X, y))["loss"]
    result = fit(net, (X, y), epochs=5, lr=0.1, val_data=(X, y), **quiet())
    assert isinstance(result, TrainResult) and result.model is net
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert all(set(r) == KEYS for r in result.history)
    assert result.history[-1]["step"] == 5 * math.ceil(len(X) / 32)
    assert result.history[-1]["val_loss"] < 0.7 * before
    assert result.history[-1]["val_acc"] > 0.8
    assert result.history[-1]["lam"] == pytest.approx(1e-3)
    assert result.best_epoch == min(result.history, key=lambda r: r["val_loss"])["epoch"]
    assert result.wall_time_s > 0


def test_plain_models_train_normally(data, make_net):
    X, y = data
    net = make_net(sparsified=False)
    result = fit(net, (X, y), epochs=3, optimizer="adam", lr=1e-2, weight_decay=1e-4, **quiet())
    assert result.history[-1]["lam"] is None and result.history[-1]["target"] is None
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_epoch == 3  # no validation data: the last epoch


def test_fit_leaves_the_global_rng_alone_and_is_deterministic(data, make_net, same_weights):
    X, y = data
    state = torch.get_rng_state()
    a = fit(make_net(), (X, y), epochs=2, seed=5, **quiet()).model
    assert torch.equal(torch.get_rng_state(), state)
    b = fit(make_net(), (X, y), epochs=2, seed=5, **quiet()).model
    c = fit(make_net(), (X, y), epochs=2, seed=6, **quiet()).model
    assert same_weights(a, b) and not same_weights(a, c)


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adagrad", torch.optim.Adagrad), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_gives_coupled_decay_or_the_explicit_penalty(make_net, name, cls):
    net = make_net(lam=2e-3)
    opt, add_penalty = build_optimizer(net, name, lr=0.01, weight_decay=1e-4)
    assert type(opt) is cls
    spred_groups = [g for g in opt.param_groups if g["spred"]]
    other = [g for g in opt.param_groups if not g["spred"]]
    assert add_penalty is (name == "adamw")
    assert [g["weight_decay"] for g in spred_groups] == [0.0 if name == "adamw" else 2e-3]
    assert [g["weight_decay"] for g in other] == [1e-4]
    assert ("momentum" in opt.defaults and opt.defaults["momentum"] == 0.9) is (name == "sgd")


def test_adamw_adds_spred_penalty_to_the_loss(data, make_net):
    """One full-batch AdamW step of fit == a hand-written step on loss + spred.penalty."""
    X, y = data
    net, ref = make_net(dropout=0.0), make_net(dropout=0.0)
    fit(net, (X, y), epochs=1, optimizer="adamw", lr=1e-2, batch_size=len(X), progress=False)
    opt, _ = build_optimizer(ref, "adamw", lr=1e-2)
    loss = nn.functional.cross_entropy(ref(X), y) + spred.penalty(ref)
    loss.backward()
    opt.step()
    for p, q in zip(net.parameters(), ref.parameters()):  # the step is ~1e-2; fit sums the batch in another order
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_an_optimizer_instance_is_used_as_is_and_checked(data, make_net):
    X, y = data
    net = make_net()
    groups = spred.param_groups(net)
    opt = torch.optim.AdamW(groups, lr=1e-3)  # spred groups keep weight_decay=lam: decoupled, not L1
    with pytest.warns(UserWarning, match="decoupled from the gradient"):
        fit(net, (X, y), epochs=1, optimizer=opt, **quiet())
    assert opt.state  # this very optimizer took the steps


def test_an_optimizer_class_is_accepted(make_net):
    opt, add = build_optimizer(make_net(), torch.optim.RMSprop, lr=1e-3)
    assert type(opt) is torch.optim.RMSprop and not add


# --------------------------------------------------------------------------- resume


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, data, make_net, same_weights):
    """4 epochs in one go == 2 epochs, then resume to 4 (SGD momentum, dropout, shuffling)."""
    X, y = data
    kw = quiet(lr=0.1, seed=3, val_data=(X, y))
    full = fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path / "a", **kw)
    fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path / "b", **kw)
    resumed = fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert same_weights(full.model, resumed.model)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


class Crash(Exception):
    pass


def crash_at(epoch):
    def callback(state):
        if state.epoch == epoch:
            raise Crash

    return callback


def test_resume_after_a_crash_with_controller_and_schedule(tmp_path, data, make_net, same_weights):
    """A run killed in epoch 3 of 4 and resumed ends exactly like the uninterrupted one, lam included."""
    X, y = data
    kw = quiet(lr=0.1, seed=2, target_sparsity=TargetSparsity(0.5, update_every=3), threshold=1e-3, scheduler="cosine")
    full = fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path / "a", **kw)
    with pytest.raises(Crash):
        fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path / "b", callbacks=[crash_at(3)], **kw)
    assert load_checkpoint(checkpoint_path(tmp_path / "b"))["epoch"] == 2
    resumed = fit(make_net(), (X, y), epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert same_weights(full.model, resumed.model)
    assert [r["lam"] for r in resumed.history] == [r["lam"] for r in full.history]


def test_resume_with_a_shuffling_dataloader(tmp_path, data, make_net, same_weights):
    X, y = data
    loader = lambda: DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)  # noqa: E731  (global RNG, seeded by fit)
    full = fit(make_net(), loader(), epochs=3, checkpoint_dir=tmp_path / "a", progress=False)
    fit(make_net(), loader(), epochs=1, checkpoint_dir=tmp_path / "b", progress=False)
    resumed = fit(make_net(), loader(), epochs=3, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert same_weights(full.model, resumed.model)


def test_resume_without_a_checkpoint_starts_afresh_and_a_finished_run_returns(tmp_path, data, make_net, same_weights):
    X, y = data
    first = fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path, resume=True, **quiet())
    again = fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path, resume=True, **quiet())
    assert same_weights(first.model, again.model) and again.history == first.history


def test_resume_with_other_settings_warns(tmp_path, data, make_net):
    X, y = data
    fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, **quiet())
    with pytest.warns(UserWarning, match=r"resuming a run with different settings \(lr: 0.1 -> 0.05\)"):
        fit(make_net(), (X, y), epochs=2, lr=0.05, checkpoint_dir=tmp_path, resume=True, **quiet())


def test_checkpoint_holds_the_whole_run_and_loads_weights_only(tmp_path, data, make_net):
    X, y = data
    fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path, target_sparsity=0.3, threshold=1e-3, **quiet())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left behind
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "data_rng", "controller", "history", "epoch", "step", "spred_version"} <= set(state)
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a spred.train checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


# --------------------------------------------------------------------------- non-finite guard


def nan_after(calls):
    count = {"n": 0}

    def loss_fn(out, target):
        count["n"] += 1
        loss = nn.functional.cross_entropy(out, target)
        return loss * float("nan") if count["n"] > calls else loss

    return loss_fn


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, data, make_net):
    X, y = data  # 240 samples, batch 32: 8 steps per epoch; the 11th loss is NaN = epoch 2, step 3
    with pytest.raises(FloatingPointError, match=r"training loss is nan at epoch 2, step 3 \(optimizer step 11\)\. Lower the learning rate \(lr=0.1\) or scale the inputs.*end of epoch 1\) is intact"):
        fit(make_net(), (X, y), epochs=3, loss_fn=nan_after(10), checkpoint_dir=tmp_path / "nan", **quiet())
    with pytest.raises(Crash):  # the same run, stopped cleanly after epoch 1
        fit(make_net(), (X, y), epochs=3, callbacks=[crash_at(2)], checkpoint_dir=tmp_path / "ref", **quiet())
    kept, ref = (load_checkpoint(checkpoint_path(tmp_path / d)) for d in ("nan", "ref"))
    assert kept["epoch"] == ref["epoch"] == 1 and kept["step"] == ref["step"] == 8
    assert all(torch.equal(kept["model"][k], v) for k, v in ref["model"].items() if isinstance(v, torch.Tensor))
    assert sorted(p.name for p in (tmp_path / "nan").iterdir()) == ["checkpoint.pt"]


def test_non_finite_loss_without_checkpoint(data, make_net):
    X, y = data
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 .*No checkpoint was written"):
        fit(make_net(), (X, y), epochs=1, loss_fn=nan_after(0), **quiet())


# --------------------------------------------------------------------------- masked fine-tuning


def test_freeze_zeros_keeps_zeros_exactly_zero(data, make_net):
    X, y = data
    net = make_net(lam=1e-2, dropout=0.0)
    fit(net, (X, y), epochs=3, lr=0.1, **quiet())
    plain = spred.collapse(net, threshold=0.05)
    zeros = {n: p == 0 for n, p in plain.named_parameters() if p.dim() >= 2}
    assert 0 < sum(int(z.sum()) for z in zeros.values())
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    result = fit(plain, (X, y), epochs=3, optimizer="adam", lr=1e-2, freeze_zeros=True, **quiet())
    for name, p in plain.named_parameters():
        if name in zeros:
            assert torch.all(p[zeros[name]] == 0), name
            assert not torch.equal(p[~zeros[name]], before[name][~zeros[name]]), name  # the rest trains
    assert result.history[-1]["sparsity"] == spred.sparsity_report(plain).sparsity


def test_explicit_mask_zeroes_and_freezes(data, make_net):
    X, y = data
    net = make_net(sparsified=False, dropout=0.0)
    keep = torch.rand(net[1].weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    fit(net, (X, y), epochs=2, mask={"1.weight": keep}, **quiet())
    assert torch.all(net[1].weight[~keep] == 0) and torch.all(net[1].weight[keep] != 0)


def test_mask_errors(make_net, data):
    X, y = data
    with pytest.raises(ValueError, match=r"freeze_zeros and mask need a plain model.*spred.collapse"):
        fit(make_net(), (X, y), epochs=1, freeze_zeros=True, **quiet())
    with pytest.raises(TypeError, match=r"The 'freeze_zeros' parameter of fit must be a bool. Got 1"):
        fit(make_net(sparsified=False), (X, y), epochs=1, freeze_zeros=1, **quiet())
    with pytest.raises(ValueError, match=r"The 'mask' parameter of fit names 'nope.weight', which is not a parameter"):
        fit(make_net(sparsified=False), (X, y), epochs=1, mask={"nope.weight": torch.ones(1)}, **quiet())
    with pytest.raises(ValueError, match=r"The 'mask' for '1.weight' has shape \(3,\) but the parameter has shape \(16, 12\)"):
        fit(make_net(sparsified=False), (X, y), epochs=1, mask={"1.weight": torch.ones(3)}, **quiet())
    with pytest.raises(TypeError, match=r"The 'mask' parameter of fit must be a mapping"):
        fit(make_net(sparsified=False), (X, y), epochs=1, mask=[1], **quiet())


# --------------------------------------------------------------------------- early stopping, callbacks, logging


def test_early_stopping_restores_the_best_weights(data, make_net):
    X, y = data
    X_val, y_val = X[:60], 1 - y[:60]  # inverted labels: the validation loss rises while training fits
    best = {}

    def remember(state):
        if state.history[-1]["val_loss"] <= min(r["val_loss"] for r in state.history):
            best["weights"] = {k: v.clone() for k, v in state.model.state_dict().items() if isinstance(v, torch.Tensor)}

    net = make_net()
    result = fit(net, (X, y), epochs=30, lr=0.1, val_data=(X_val, y_val), early_stopping=2, callbacks=[remember], **quiet())
    assert len(result.history) < 30
    assert result.best_epoch == len(result.history) - 2
    assert all(torch.equal(net.state_dict()[k], v) for k, v in best["weights"].items())


def test_a_callback_can_stop_training(data, make_net):
    X, y = data
    result = fit(make_net(), (X, y), epochs=10, callbacks=[lambda state: state.epoch == 3], **quiet())
    assert len(result.history) == 3


def test_epoch_summaries_are_logged_and_the_bar_can_be_shown(data, make_net, caplog, capsys):
    X, y = data
    with caplog.at_level(logging.INFO, logger="spred"):
        fit(make_net(), (X, y), epochs=2, batch_size=32, progress=True)
    assert "epoch 2/2  train loss" in caplog.text
    assert "epoch 1/2" in capsys.readouterr().err  # the tqdm bar


# --------------------------------------------------------------------------- evaluate and data


def test_evaluate_matches_a_hand_computation_and_restores_the_mode(data, make_net):
    X, y = data
    net = make_net().train()
    metrics = evaluate(net, (X, y), batch_size=50)  # uneven last batch
    net.eval()
    with torch.no_grad():
        out = net(X)
    assert metrics["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    assert metrics["acc"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    net.train()
    evaluate(net, (X, y))
    assert net.training


def test_regression_has_no_accuracy(make_net):
    X = torch.randn(40, 12)
    y = X[:, :1] * 2
    net = spred.sparsify(nn.Linear(12, 1), lam=1e-3)
    mse = nn.functional.mse_loss
    result = fit(net, (X, y), epochs=2, loss_fn=mse, val_data=(X, y), lr=0.05, **quiet())
    assert result.history[-1]["val_acc"] is None
    assert evaluate(net, (X, y), loss_fn=mse)["acc"] is None


def test_a_dataloader_is_used_as_is(data, make_net):
    X, y = data
    loader = DataLoader(TensorDataset(X, y), batch_size=40, shuffle=True, generator=torch.Generator().manual_seed(0))
    result = fit(make_net(), loader, epochs=2, val_data=DataLoader(TensorDataset(X, y), batch_size=100), progress=False)
    assert result.history[-1]["step"] == 12 and result.history[-1]["val_acc"] is not None


def test_numpy_arrays_are_accepted(data, make_net):
    X, y = data
    result = fit(make_net(), (X.numpy(), y.numpy()), epochs=1, **quiet())
    assert len(result.history) == 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, r"The 'epochs' parameter of fit must be an int >= 1. Got 0 instead"),
        ({"epochs": 2.0}, TypeError, r"The 'epochs' parameter of fit must be an int >= 1. Got 2.0 of type float"),
        ({"lr": 0.0}, ValueError, r"The 'lr' parameter of fit must be a float in the range \(0, inf\). Got 0.0"),
        ({"lr": "fast"}, TypeError, r"The 'lr' parameter of fit must be a float .*Got 'fast' of type str"),
        ({"momentum": 1.0}, ValueError, r"The 'momentum' parameter of fit must be a float in the range \[0, 1\). Got 1.0"),
        ({"weight_decay": -1e-4}, ValueError, r"The 'weight_decay' parameter of fit must be a float in the range \[0, inf\)"),
        ({"batch_size": 0}, ValueError, r"The 'batch_size' parameter of fit must be an int >= 1. Got 0"),
        ({"eval_batch_size": True}, TypeError, r"The 'eval_batch_size' parameter of fit must be an int >= 1. Got True"),
        ({"threshold": -1.0}, ValueError, r"The 'threshold' parameter of fit must be a float in the range \[0, inf\). Got -1.0"),
        ({"threshold": float("nan")}, ValueError, r"The 'threshold' parameter of fit must be a float .*Got nan"),
        ({"seed": -1}, ValueError, r"The 'seed' parameter of fit must be an int >= 0. Got -1"),
        ({"early_stopping": 0}, ValueError, r"The 'early_stopping' parameter of fit must be an int >= 1. Got 0"),
        ({"early_stopping": 3}, ValueError, r"early_stopping=3 needs validation data"),
        ({"loss_fn": "mse"}, TypeError, r"The 'loss_fn' parameter of fit must be a callable"),
        ({"resume": "yes"}, TypeError, r"The 'resume' parameter of fit must be a bool. Got 'yes'"),
        ({"resume": True}, ValueError, r"resume=True needs checkpoint_dir"),
        ({"callbacks": [1]}, TypeError, r"The 'callbacks' parameter of fit must be a sequence of callables"),
        ({"target_sparsity": "90%"}, TypeError, r"The 'target_sparsity' parameter of fit must be None, a float in \(0, 1\) or a TargetSparsity. Got '90%'"),
        ({"target_sparsity": 1.5}, ValueError, r"The 'target' parameter of TargetSparsity must be a float in the range \(0, 1\). Got 1.5"),
        ({"target_sparsity": 0.5}, ValueError, r"target_sparsity needs threshold > 0"),
        ({"optimizer": "lbfgs"}, ValueError, r"The 'optimizer' parameter of fit must be one of \['adagrad', 'adam', 'adamw', 'sgd'\].*Got 'lbfgs'"),
        ({"optimizer": 3}, TypeError, r"The 'optimizer' parameter of fit must be one of .*Got 3 of type int"),
        ({"scheduler": "linear"}, ValueError, r"The 'scheduler' parameter of fit must be None, 'cosine' or a callable.*Got 'linear'"),
        ({"device": "gpu0"}, ValueError, r"The 'device' parameter of fit must be a torch.device or a string such as 'cpu'.*Got 'gpu0'"),
    ],
)
def test_fit_errors(data, make_net, kwargs, error, match):
    X, y = data
    with pytest.raises(error, match=match):
        fit(make_net(), (X, y), **{"epochs": 1, "progress": False, **kwargs})


def test_fit_errors_on_model_and_data(data, make_net):
    X, y = data
    with pytest.raises(TypeError, match=r"The 'model' parameter of fit must be a torch.nn.Module. Got function"):
        fit(lambda x: x, (X, y), epochs=1)
    with pytest.raises(ValueError, match=r"target_sparsity needs a model sparsified by spred.sparsify"):
        fit(make_net(sparsified=False), (X, y), epochs=1, target_sparsity=0.5, threshold=1e-3)
    with pytest.raises(TypeError, match=r"The 'train_data' parameter of fit must be a tuple \(X, y\) of tensors or a torch DataLoader. Got dict"):
        fit(make_net(), {"X": X}, epochs=1)
    with pytest.raises(ValueError, match=r"The 'train_data' parameter of fit must hold X and y with the same number of samples. Got shapes \(240, 12\) and \(10,\)"):
        fit(make_net(), (X, y[:10]), epochs=1)
    with pytest.raises(ValueError, match=r"The 'val_data' parameter of fit holds no samples"):
        fit(make_net(), (X, y), epochs=1, val_data=(X[:0], y[:0]))
    with pytest.raises(TypeError, match=r"The 'train_data' parameter of fit must be a tuple \(X, y\) of tensors or a DataLoader. Got an element of type object"):
        fit(make_net(), (object(), y), epochs=1)
    with pytest.raises(ValueError, match=r"expects a DataLoader that yields \(inputs, targets\) pairs; got a batch of type list with 3 elements"):
        fit(make_net(), DataLoader(TensorDataset(X, y, y), batch_size=40), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"The 'train_data' DataLoader of fit yields no batches"):
        fit(make_net(), DataLoader(TensorDataset(X[:0], y[:0]), batch_size=40), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"The 'loss_fn' parameter of evaluate must be a callable"):
        evaluate(make_net(), (X, y), loss_fn=3)
    with pytest.raises(ValueError, match=r"The 'batch_size' parameter of evaluate must be an int >= 1. Got 0"):
        evaluate(make_net(), (X, y), batch_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_with_controller_and_resume(tmp_path, data, make_net):
    X, y = data
    kw = quiet(device="cuda", target_sparsity=TargetSparsity(0.5, update_every=3), threshold=1e-3, val_data=(X, y))
    full = fit(make_net(), (X, y), epochs=3, checkpoint_dir=tmp_path / "a", **kw)
    fit(make_net(), (X, y), epochs=3, checkpoint_dir=tmp_path / "b", callbacks=[lambda s: s.epoch == 1], **kw)
    state = load_checkpoint(checkpoint_path(tmp_path / "b"))
    state["stopped"] = False  # pretend the run was killed after epoch 1
    torch.save(state, checkpoint_path(tmp_path / "b"))
    resumed = fit(make_net(), (X, y), epochs=3, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert next(resumed.model.parameters()).is_cuda
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        if isinstance(p, torch.Tensor):
            torch.testing.assert_close(p, q, msg=name)
