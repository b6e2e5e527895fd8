"""Issue 19: the non-finite guard, resume with new hyper-parameters, and the checkpoint files.

Every test here failed on the code before the fix (flat keywords: they run on both).
"""

import hashlib
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

import spred
from spred.train import checkpoint_path, fit, load_checkpoint

QUIET = {"progress": False, "batch_size": 32}  # 240 samples: 8 steps per epoch


def finite(model) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- item 2: the guard


def test_a_blow_up_in_the_last_step_of_an_epoch_is_caught(data, make_net):
    X, y = data
    net = make_net()
    with pytest.raises(FloatingPointError, match=r"the weights hold non-finite values after epoch 1 \(optimizer step 1; .*Lower the learning rate \(lr=1e\+37\).*No checkpoint was written"):
        fit(net, (X, y), epochs=1, lr=1e37, batch_size=len(X), progress=False)  # one step per epoch: it is the last


def test_a_checkpoint_never_holds_non_finite_values_and_the_intact_claim_is_true(tmp_path, data, make_net):
    X, y = data
    with pytest.raises(FloatingPointError, match=r"after epoch 1 .*No checkpoint was written"):
        fit(make_net(), (X, y), epochs=3, lr=1e37, batch_size=len(X), checkpoint_dir=tmp_path / "a", progress=False)
    assert not checkpoint_path(tmp_path / "a").exists()
    fit(make_net(), (X, y), epochs=1, lr=0.1, batch_size=len(X), checkpoint_dir=tmp_path / "b", progress=False)
    with pytest.raises(FloatingPointError, match=r"end of epoch 1\) is intact"), pytest.warns(UserWarning, match="different settings"):
        fit(make_net(), (X, y), epochs=3, lr=1e37, batch_size=len(X), checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    state = load_checkpoint(checkpoint_path(tmp_path / "b"))
    net = make_net()
    net.load_state_dict(state["model"])
    assert state["epoch"] == 1 and finite(net) and bool(torch.isfinite(net(X)).all())


def test_the_optimizer_state_is_checked_before_a_checkpoint():
    from spred.train._guard import optimizer_non_finite

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    assert optimizer_non_finite(opt) == []
    opt.state[p]["exp_avg_sq"][1] = float("inf")
    assert optimizer_non_finite(opt) == ["state[0].exp_avg_sq"]


# --------------------------------------------------------------------------- item 3: resume with new hyper-parameters


def spike(opt, total_steps):
    """lr x 1e30 from the 9th step on (epoch 2): a run that diverges after a good first epoch."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step < 8 else 1e30)


def test_lower_the_learning_rate_and_resume_after_a_nan_stop(tmp_path, data, make_net):
    X, y = data
    kw = {**QUIET, "checkpoint_dir": tmp_path, "scheduler": spike}
    with pytest.raises(FloatingPointError, match=r"Lower the learning rate .*end of epoch 1\) is intact"):
        fit(make_net(), (X, y), epochs=3, lr=0.1, **kw)
    with pytest.warns(UserWarning, match=r"lr: 0.1 -> 1e-31\); the new values apply"):
        result = fit(make_net(), (X, y), epochs=3, lr=1e-31, resume=True, **kw)  # x 1e30 = 0.1 from epoch 2 on
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert finite(result.model) and all(map(torch.isfinite, [torch.tensor(r["train_loss"]) for r in result.history]))
    assert result.history[-1]["lr"] == pytest.approx(0.1)


def test_resume_applies_the_new_lr_momentum_weight_decay_and_lam(tmp_path, data, make_net, caplog):
    X, y = data
    fit(make_net(lam=1e-3), (X, y), epochs=1, lr=0.1, checkpoint_dir=tmp_path, **QUIET)
    seen = {}
    net = make_net(lam=5e-3)
    with pytest.warns(UserWarning, match=r"lr: 0.1 -> 0.01"), caplog.at_level(logging.INFO, logger="spred"):
        result = fit(net, (X, y), epochs=2, lr=0.01, momentum=0.5, weight_decay=1e-4, checkpoint_dir=tmp_path, resume=True,
                     callbacks=[lambda s: seen.update(groups=[dict(g) for g in s.optimizer.param_groups])], **QUIET)
    assert result.history[-1]["lr"] == 0.01 and result.history[-1]["lam"] == pytest.approx(5e-3)
    assert all(g["lr"] == 0.01 and g["momentum"] == 0.5 for g in seen["groups"])
    assert [g["weight_decay"] for g in seen["groups"] if g["spred"]] == [5e-3]
    assert [g["weight_decay"] for g in seen["groups"] if not g["spred"]] == [1e-4]
    assert set(spred.get_lam(net).values()) == {5e-3}
    assert "resuming with this call's hyper-parameters instead of the checkpoint's" in caplog.text
    assert "lr 0.1 -> 0.01" in caplog.text and "momentum 0.9 -> 0.5" in caplog.text and "0.001 -> 0.005" in caplog.text


def test_resume_with_another_optimizer_is_a_clear_error(tmp_path, data, make_net):
    X, y = data
    fit(make_net(), (X, y), epochs=1, optimizer="sgd", checkpoint_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint.pt: it was written by a run with optimizer SGD, and this call uses Adam"):
        fit(make_net(), (X, y), epochs=2, optimizer="adam", checkpoint_dir=tmp_path, resume=True, **QUIET)


# --------------------------------------------------------------------------- the checkpoint files


def test_a_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path, data, make_net):
    X, y = data
    fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, **QUIET)
    path = checkpoint_path(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    match = rf"cannot load the checkpoint {str(path)!s}: the file is truncated or corrupt"
    with pytest.raises(ValueError, match=match.replace("\\", "\\\\")):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: the file is truncated or corrupt"):
        fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path, resume=True, **QUIET)


def test_a_folder_holding_a_checkpoint_is_not_overwritten_without_resume(tmp_path, data, make_net):
    X, y = data
    fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, **QUIET)
    before = digest(checkpoint_path(tmp_path))
    with pytest.raises(FileExistsError, match=r"already holds a checkpoint \(checkpoint.pt\) of an earlier run.*Pass resume=True.*another checkpoint_dir"):
        fit(make_net(), (X, y), epochs=2, lr=0.05, checkpoint_dir=tmp_path, **QUIET)
    assert digest(checkpoint_path(tmp_path)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no lock left behind


def test_two_fits_on_one_folder_are_refused(tmp_path, data, make_net):
    X, y = data

    def second_fit(state):  # another fit on the same folder while the first one runs
        fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, resume=True, **QUIET)

    with pytest.raises(FileExistsError, match=r"is in use by another fit \(process \d+ on .*this process.*lock file"):
        fit(make_net(), (X, y), epochs=2, checkpoint_dir=tmp_path, callbacks=[second_fit], **QUIET)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / "checkpoint.pt.lock").write_text(f"{other.pid} {socket.gethostname()}")
            with pytest.raises(FileExistsError, match=rf"in use by another fit \(process {other.pid} on"):
                fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, resume=True, **QUIET)
        finally:
            other.kill()
    (tmp_path / "checkpoint.pt.lock").write_text(f"{dead_pid()} {socket.gethostname()}")  # a killed run's lock
    fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, resume=True, **QUIET)  # is taken over
    assert not (tmp_path / "checkpoint.pt.lock").exists()


def test_temporary_files_of_killed_writes_are_removed(tmp_path, data, make_net):
    X, y = data
    stale = tmp_path / f"checkpoint.pt.tmp{dead_pid()}"
    live = tmp_path / f"checkpoint.pt.tmp{os.getppid()}"  # a writer that still runs: left alone
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    fit(make_net(), (X, y), epochs=1, checkpoint_dir=tmp_path, resume=True, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name])


def test_a_float64_weight_above_float32_range_is_finite():
    """The guard checks each tensor in its own dtype: 1e300 is a finite float64 (it was cast to float32 inf)."""
    from spred.train._guard import model_non_finite

    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.fill_(1e300)
    assert model_non_finite(model) == []
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    assert model_non_finite(model) == ["bias"]
