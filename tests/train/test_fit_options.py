"""fit's option groups (Optim, Sparsity, Checkpoints, Runtime), the legacy flat keywords, and history=False."""

import logging
import warnings

import pytest
import torch

import spred
import spred.train._loop as loop
from spred.train import Checkpoints, Optim, Runtime, Sparsity, TargetSparsity, fit, load_checkpoint

QUIET = Runtime(progress=False)


def records(result):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in result.history]


@pytest.mark.parametrize(
    ("grouped", "flat"),
    [
        ({"optim": Optim("adam", lr=1e-2, weight_decay=1e-4)}, {"optimizer": "adam", "lr": 1e-2, "weight_decay": 1e-4}),
        ({"optim": "adagrad"}, {"optimizer": "adagrad"}),
        ({"optim": Optim(lr=0.05, momentum=0.5, scheduler="cosine")}, {"lr": 0.05, "momentum": 0.5, "scheduler": "cosine"}),
        ({"sparsity": Sparsity(target=TargetSparsity(0.5, update_every=3), threshold=1e-3)}, {"target_sparsity": TargetSparsity(0.5, update_every=3), "threshold": 1e-3}),
    ],
)
def test_grouped_and_flat_spellings_train_identically(data, make_net, same_weights, grouped, flat):
    X, y = data
    a = fit(make_net(), (X, y), epochs=2, batch_size=32, val_data=(X, y), runtime=Runtime(seed=3, progress=False), **grouped)
    b = fit(make_net(), (X, y), epochs=2, batch_size=32, val_data=(X, y), seed=3, progress=False, **flat)
    assert same_weights(a.model, b.model) and records(a) == records(b)


def test_grouped_and_flat_checkpoints_and_runtime_agree(tmp_path, data, make_net, same_weights):
    X, y = data
    rt = Runtime(seed=2, progress=False, eval_batch_size=50, early_stopping=3, autocast=None)
    a = fit(make_net(), (X, y), epochs=2, batch_size=32, val_data=(X, y), checkpoints=Checkpoints(tmp_path / "a"), runtime=rt)
    b = fit(make_net(), (X, y), epochs=2, batch_size=32, val_data=(X, y), checkpoint_dir=tmp_path / "b", seed=2, progress=False, eval_batch_size=50, early_stopping=3)
    assert same_weights(a.model, b.model) and records(a) == records(b)
    resumed = fit(make_net(), (X, y), epochs=3, batch_size=32, val_data=(X, y), checkpoints=Checkpoints(tmp_path / "a", resume=True), runtime=rt)
    assert load_checkpoint(tmp_path / "a" / "checkpoint.pt")["epoch"] == 3 and len(resumed.history) == 3


def test_legacy_flat_keywords_do_not_warn(data, make_net):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(make_net(), (X, y), epochs=1, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, threshold=1e-3, seed=1, progress=False, eval_batch_size=64, history=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optim": Optim(), "lr": 0.1}, r"fit got both optim=Optim\(\.\.\.\) and the flat keyword\(s\) lr of the same group: put them into Optim\(\.\.\.\)"),
        ({"optim": "adam", "lr": 0.01}, r"fit got both optim=Optim\(\.\.\.\) and the flat keyword\(s\) lr"),
        ({"sparsity": Sparsity(), "target_sparsity": 0.5}, r"fit got both sparsity=Sparsity\(\.\.\.\) and the flat keyword\(s\) target_sparsity"),
        ({"checkpoints": Checkpoints(), "checkpoint_dir": "x", "resume": True}, r"flat keyword\(s\) checkpoint_dir, resume of the same group"),
        ({"runtime": Runtime(), "seed": 1}, r"fit got both runtime=Runtime\(\.\.\.\) and the flat keyword\(s\) seed"),
        ({"lrr": 0.1, "sed": 1}, r"fit got unexpected keyword argument\(s\) 'lrr', 'sed'\. Options go in the groups optim=Optim"),
        ({"runtime": {"seed": 1}}, r"The 'runtime' parameter of fit must be a spred.train.Runtime or None. Got \{'seed': 1\} of type dict"),
    ],
)
def test_mixing_a_group_with_its_flat_keywords_or_unknown_keywords_is_a_type_error(data, make_net, kwargs, match):
    X, y = data
    with pytest.raises(TypeError, match=match):
        fit(make_net(), (X, y), epochs=1, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optim": Optim(lr=0.0)}, ValueError, r"The 'lr' parameter of Optim must be a float in the range \(0, inf\). Got 0.0"),
        ({"optim": Optim(momentum=1.0)}, ValueError, r"The 'momentum' parameter of Optim must be a float in the range \[0, 1\). Got 1.0"),
        ({"optim": Optim("lbfgs")}, ValueError, r"The 'optimizer' parameter of Optim must be one of \['adagrad', 'adam', 'adamw', 'sgd'\]"),
        ({"optim": Optim(scheduler="linear")}, ValueError, r"The 'scheduler' parameter of Optim must be None, 'cosine' or a callable"),
        ({"sparsity": Sparsity(target="90%")}, TypeError, r"The 'target' parameter of Sparsity must be None, a float in \(0, 1\) or a TargetSparsity"),
        ({"sparsity": Sparsity(threshold=-1.0)}, ValueError, r"The 'threshold' parameter of Sparsity must be a float in the range \[0, inf\)"),
        ({"sparsity": Sparsity(freeze_zeros=1)}, TypeError, r"The 'freeze_zeros' parameter of Sparsity must be a bool. Got 1"),
        ({"checkpoints": Checkpoints(resume=True)}, ValueError, r"resume=True needs dir"),
        ({"checkpoints": Checkpoints(dir=3)}, TypeError, r"The 'dir' parameter of Checkpoints must be a path"),
        ({"runtime": Runtime(seed=-1)}, ValueError, r"The 'seed' parameter of Runtime must be an int >= 0. Got -1"),
        ({"runtime": Runtime(history=1)}, TypeError, r"The 'history' parameter of Runtime must be a bool. Got 1"),
        ({"runtime": Runtime(autocast="fp16")}, ValueError, r"The 'autocast' parameter of Runtime must be None or 'bfloat16'"),
        ({"runtime": Runtime(device="gpu0")}, ValueError, r"The 'device' parameter of Runtime must be a torch.device"),
        ({"history": "no", "progress": False}, TypeError, r"The 'history' parameter of fit must be a bool. Got 'no'"),
        ({"optim": Optim(gate_lr=-1.0)}, ValueError, r"The 'gate_lr' parameter of Optim must be"),
        ({"gate_lr": 1e-2, "progress": False}, ValueError, r"'gate_lr' parameter of param_groups sets the learning rate of the gates"),
    ],
)
def test_each_group_is_validated_and_errors_name_the_field(data, make_net, kwargs, error, match):
    X, y = data
    with pytest.raises(error, match=match):
        fit(make_net(), (X, y), epochs=1, **kwargs)


def test_history_false_keeps_the_last_record_and_skips_the_sparsity_count(data, make_net, same_weights, monkeypatch):
    X, y = data
    full = fit(make_net(), (X, y), epochs=3, batch_size=32, val_data=(X, y), runtime=QUIET)

    def counted(*args, **kwargs):
        raise AssertionError("history=False must not count zeros")

    monkeypatch.setattr(loop, "zero_fraction", counted)
    seen = []
    short = fit(make_net(), (X, y), epochs=3, batch_size=32, val_data=(X, y), runtime=Runtime(progress=False, history=False), callbacks=[lambda s: seen.append(len(s.history))])
    assert same_weights(full.model, short.model)  # the same training
    assert len(short.history) == 1 and seen == [1, 1, 1]
    last = {k: v for k, v in full.history[-1].items() if k not in ("time_s", "sparsity")}
    assert {k: v for k, v in short.history[0].items() if k not in ("time_s", "sparsity")} == last
    assert short.history[0]["sparsity"] is None and short.best_epoch == full.best_epoch
    flat = fit(make_net(), (X, y), epochs=1, batch_size=32, history=False, progress=False)  # the flat keyword too
    assert flat.history[0]["sparsity"] is None


def test_history_false_logs_a_dash_for_the_sparsity(data, make_net, caplog):
    X, y = data
    with caplog.at_level(logging.INFO, logger="spred"):
        fit(make_net(), (X, y), epochs=1, runtime=Runtime(progress=False, history=False))
    assert "sparsity -  lam" in caplog.text


def test_an_optimizer_instance_as_optim(data, make_net):
    X, y = data
    net = make_net()
    opt = torch.optim.SGD(spred.param_groups(net), lr=0.05, momentum=0.9)
    fit(net, (X, y), epochs=1, optim=opt, runtime=QUIET)
    assert opt.state


def test_gate_lr_moves_the_channel_gates_at_their_own_rate(data):
    """Adam's first step moves every parameter with a nonzero gradient by its group's lr (up to eps): the gates of
    groups="channels" by gate_lr, every other parameter by lr; a plain model refuses gate_lr."""
    X, y = data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = spred.models.MLP(12, hidden=(16,), out_features=2)
    spred.sparsify(net, 1e-3, groups="channels", example_inputs=X[:4])
    gates = [g.spred.gates for g in spred.channel_groups(net)]
    before = {id(p): p.detach().clone() for p in net.parameters()}
    fit(net, (X[:32], y[:32]), epochs=1, batch_size=32, optim=Optim("adam", lr=1e-3, gate_lr=2e-2), runtime=QUIET)
    moved = {id(p): float((p.detach() - before[id(p)]).abs().max()) for p in net.parameters()}
    assert gates and all(moved[id(g)] == pytest.approx(2e-2, rel=1e-3) for g in gates)
    assert max(v for k, v in moved.items() if k not in {id(g) for g in gates}) == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="'gate_lr' parameter of fit sets the learning rate of channel gates"):
        fit(spred.models.MLP(12, hidden=(16,), out_features=2), (X, y), epochs=1, gate_lr=1e-2, progress=False)
