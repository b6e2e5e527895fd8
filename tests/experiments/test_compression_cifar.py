"""The CIFAR-10 structured compression experiment on a tiny stand-in (random 8x8 images, a small residual CNN)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spred.experiments import _baselines_slimming as bs
from spred.experiments import _compression_cifar as cc


class TinyRes(nn.Module):
    """conv-BN stem, one residual block (coupled channels), a second conv, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))  # fmt: skip
        self.conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.fc(self.conv(h).mean((2, 3)))


def _tiny(name, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyRes()


def _data(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return cc.CifarData(torch.rand(48, 3, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g),
                        torch.rand(24, 3, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g))  # fmt: skip


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cc, "build_cifar_model", _tiny)
    monkeypatch.setattr(cc, "load_cifar", _data)
    return cc.CifarCompressionConfig(methods=("slimming", "group_reg", "l1_filter"), flop_targets=(2.0,), dense_epochs=1,
                                     epochs=1, finetune_epochs=1, batch_size=16, latency_repeats=1, seeds=(0,))  # fmt: skip


@pytest.mark.parametrize(("field", "value", "error", "match"), [
    ("model", "alexnet", ValueError, "model"),
    ("methods", ("spred_d2", "magnitude"), ValueError, "methods"),
    ("flop_targets", (1.0,), ValueError, "flop_targets"),
    ("epochs", 0, ValueError, "epochs"),
    ("workers", 1.5, TypeError, "workers"),
    ("lr", -1.0, ValueError, "lr"),
    ("sparse_lr", 0.0, ValueError, "sparse_lr"),
    ("spred_gate_lr", -1e-2, ValueError, "spred_gate_lr"),
])  # fmt: skip
def test_config_validation(field, value, error, match):
    with pytest.raises(error, match=match):
        cc.check_cifar_config(cc.CifarCompressionConfig(**{field: value}))


def test_quick_preset_is_valid_and_small():
    import dataclasses

    cfg = cc.check_cifar_config(dataclasses.replace(cc.CifarCompressionConfig(), **cc.CIFAR_QUICK))
    assert cfg.seeds == (0,) and cfg.train_size <= 5000 and cfg.flop_targets == (2.0, 4.0)
    assert cfg.epochs + cfg.finetune_epochs <= 6 and cfg.dense_epochs <= 15


def test_zero_to_flops_reaches_the_target_and_prunes_coupled_channels():
    from spred.compress import count_flops, prune_channels

    model, x = _tiny("", 0).eval(), torch.rand(4, 3, 8, 8)
    dense = count_flops(model, x[:1])
    for kind in bs.SCORES:
        zeroed, masks = bs.zero_to_flops(model, x, kind, dense / 2)
        pruned, _ = prune_channels(zeroed.eval(), x)
        assert count_flops(pruned, x[:1]) <= dense / 2
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-4)
        assert masks and all(not m.all() for m in masks.values())
        # the residual block's channels go together: stem, block's second conv and their BNs
        assert pruned.stem[0].out_channels == pruned.block[3].out_channels


def test_channel_scores_reject_an_unknown_kind():
    model = _tiny("", 0)
    groups = bs.dependency_groups(model, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="Unknown channel score"):
        bs.channel_scores(model, groups, "taylor")


def test_bn_scale_l1_adds_the_sign_to_the_scale_gradients():
    model = _tiny("", 0)
    bn = model.stem[1]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1, 1, 8))
    bn.weight.grad = torch.zeros(8)
    bs.BNScaleL1(model, 0.5)(None)
    assert torch.equal(bn.weight.grad, 0.5 * torch.sign(bn.weight.detach()))


def test_every_baseline_end_to_end_and_resume(tiny, tmp_path, monkeypatch):
    rows, text = cc.run_cifar_experiment(tiny, tmp_path / "out", plot_figure=False)
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "slimming", "group_reg", "l1_filter"}
    for r in rows:
        assert cc.is_finite_row(r) and 0.0 <= r["test_acc"] <= 1.0
        if r["method"] != "dense":
            assert r["flop_ratio"] >= 2.0 and r["epochs"] == 3
    assert "group_reg" in text and (tmp_path / "out" / "compression_cifar.csv").exists()
    cached = sorted(p.name for p in (tmp_path / "out" / ".spred-runs").iterdir())
    assert "dense_resnet20_seed0.pt" in cached and len([c for c in cached if c.endswith(".json")]) == 4
    assert len([c for c in cached if c.endswith(".model.pt")]) == 4  # the models timed at the end
    assert all(r["speedup_b256"] > 0 for r in rows) and next(r for r in rows if r["method"] == "dense")["speedup_b1"] == 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached job was recomputed")

    monkeypatch.setattr(cc, "run_method", no_training)
    monkeypatch.setattr(cc._Job, "fit", no_training)
    again, _ = cc.run_cifar_experiment(tiny, tmp_path / "out", plot_figure=False)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in rows]


def test_a_changed_setting_or_library_code_invalidates_the_cache(tmp_path, monkeypatch):
    import dataclasses

    cfg, model = cc.CifarCompressionConfig(), nn.Linear(2, 2)
    (tmp_path / "job.json").write_text(json.dumps({"key": cc._key(cfg, "spred_d2"), "row": {"test_acc": 0.5}}))
    torch.save(model, tmp_path / "job.model.pt")
    assert cc._cached_row(tmp_path, "job", cfg, lambda: ({"test_acc": 0.9}, model), "spred_d2") == {"test_acc": 0.5}
    other = dataclasses.replace(cfg, epochs=cfg.epochs + 1)
    assert cc._cached_row(tmp_path, "job", other, lambda: ({"test_acc": 0.8}, model), "spred_d2") == {"test_acc": 0.8}
    # a change in spred's parametrisation recomputes the spred rows, not the baselines'
    before = {m: cc._key(cfg, m) for m in ("dense", "spred_d2", "slimming")}
    real = cc._code_fingerprint
    monkeypatch.setattr(cc, "_code_fingerprint", lambda m: real(m) + ("changed" if m.startswith("spred") else ""))
    assert cc._key(cfg, "spred_d2") != before["spred_d2"]
    assert cc._key(cfg, "slimming") == before["slimming"] and cc._key(cfg, "dense") == before["dense"]


@pytest.mark.parametrize("sparse_lr", [None, 1e-2])
def test_sparse_lr_reaches_every_methods_training_and_only_their_keys(tiny, monkeypatch, sparse_lr):
    """Every method's sparse phase trains at ``sparse_lr`` (None: ``lr``); the dense pre-training and row keep ``lr``."""
    import dataclasses

    if not cc.channel_groups_available():
        pytest.skip("spred without channel groups")
    cfg = dataclasses.replace(tiny, sparse_lr=sparse_lr)
    job = cc._Job(cfg, 0, _data(cfg, 0))
    seen = []

    def record(self, model, epochs, **kwargs):
        optimizer = kwargs.get("optimizer")
        seen.append(optimizer.param_groups[0]["lr"] if isinstance(optimizer, torch.optim.Optimizer) else kwargs["lr"])

    monkeypatch.setattr(cc._Job, "fit", record)
    for method in cc.CIFAR_METHODS:
        cc._sparse_train(job, method, _tiny("resnet20", 0), 2.0)
    assert seen == [cfg.lr if sparse_lr is None else sparse_lr] * len(cc.CIFAR_METHODS)
    base = dataclasses.replace(cfg, sparse_lr=None)
    for method in ("pretrain", "dense") + cc.CIFAR_METHODS:  # None: the keys cached before the field, unchanged
        same = method in ("pretrain", "dense") or sparse_lr is None
        assert (cc._key(cfg, method) == cc._key(base, method)) == same
        assert ("sparse_lr" in cc._key(cfg, method)) != same


@pytest.mark.parametrize("gate_lr", [None, 5e-2])
def test_spred_gate_lr_reaches_spred_gates_only_and_only_spred_keys(tiny, monkeypatch, gate_lr):
    """``spred_gate_lr`` is the rate of spred's gates alone: spred's weights and every baseline keep the sparse rate."""
    import dataclasses

    if not cc.channel_groups_available():
        pytest.skip("spred without channel groups")
    cfg = dataclasses.replace(tiny, spred_gate_lr=gate_lr, sparse_lr=1e-2)
    job = cc._Job(cfg, 0, _data(cfg, 0))
    seen = {}
    real_fit = cc._Job.fit

    def record(self, model, epochs, **kwargs):
        seen[len(seen)] = (kwargs.get("lr"), kwargs.get("gate_lr"))
        return real_fit(self, model, 1, **kwargs)

    monkeypatch.setattr(cc._Job, "fit", record)
    for method in cc.CIFAR_METHODS:
        cc._sparse_train(job, method, _tiny("resnet20", 0), 2.0)
    assert [seen[i] for i in range(2)] == [(1e-2, gate_lr)] * 2  # spred_d2, spred_d3
    assert all(g is None for _, g in (seen[i] for i in range(2, len(seen))))
    base = dataclasses.replace(cfg, spred_gate_lr=None)
    for method in ("pretrain", "dense") + cc.CIFAR_METHODS:  # None: the keys cached before the field, unchanged
        same = not method.startswith("spred") or gate_lr is None
        assert (cc._key(cfg, method) == cc._key(base, method)) == same


def test_the_spred_arm_end_to_end(tiny, tmp_path):
    """spred channel groups (D=2): trained, collapsed, cut to the target, fine-tuned; its zero channels are removed."""
    import dataclasses

    cfg = dataclasses.replace(tiny, methods=("spred_d2",), epochs=2, lam=1e-2)
    rows, _ = cc.run_cifar_experiment(cfg, tmp_path / "out", plot_figure=False)
    spred_row = next(r for r in rows if r["method"] == "spred_d2")
    assert cc.is_finite_row(spred_row) and spred_row["flop_ratio"] >= 2.0 and spred_row["zero_channels_kept"] == 0
    assert spred_row["flop_ratio_before_cut"] >= 1.0
    pruned = torch.load(tmp_path / "out" / ".spred-runs" / "resnet20_spred_d2_x2_seed0.model.pt", weights_only=False)
    assert not any("spred" in type(m).__module__ for m in pruned.modules())  # plain modules after collapse
    assert spred_row["params"] == sum(p.numel() for p in pruned.parameters())


def test_units_keep_a_baselines_targets_together_and_split_spreds():
    import dataclasses

    cfg = cc.CifarCompressionConfig(flop_targets=(2.0, 4.0), epochs=2, finetune_epochs=1)
    units = cc._units(cfg, ("spred_d2", "slimming"))
    assert [("slimming", 2.0), ("slimming", 4.0)] == units[0]  # the longest first
    assert sorted(units[1:]) == [[("dense", 1.0)], [("spred_d2", 2.0)], [("spred_d2", 4.0)]]
    fixed = cc._units(dataclasses.replace(cfg, spred_controller=False), ("spred_d2",))  # fixed lam: one training, every target
    assert sorted(fixed) == [[("dense", 1.0)], [("spred_d2", 2.0), ("spred_d2", 4.0)]]


def test_summary_and_within_one_point():
    rows = [{"method": "dense", "target_flop_ratio": 1.0, "test_acc": 0.90, "flop_ratio": 1.0, "params": 10, "speedup_b1": 1,
             "speedup_b256": 1, "speedup_b256_cl": 1, "flop_ratio_before_cut": 1.0, "epochs": 3, "wall_s": 1.0}]  # fmt: skip
    for t, acc in ((2.0, 0.895), (4.0, 0.85)):
        rows.append({**rows[0], "method": "slimming", "target_flop_ratio": t, "test_acc": acc, "flop_ratio": t + 0.1})
    summary = cc.summarise_cifar(rows)
    assert cc.within_one_point(summary) == {"slimming": pytest.approx(2.1)}
    assert "slimming" in cc.cifar_table(summary)


def test_spred_rows_need_channel_groups(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(cc, "channel_groups_available", lambda: False)
    import dataclasses

    cfg = dataclasses.replace(tiny, methods=("spred_d2",))
    monkeypatch.setattr(cc, "_seed_state", lambda *args: None)
    monkeypatch.setattr(cc, "_time_models", lambda *args: None)
    monkeypatch.setattr(cc, "_unit_rows", lambda args: [{"method": m, "target_flop_ratio": t} for m, t in args[3]])
    rows = cc.run_cifar(cfg, tmp_path / "cache")  # no job but the dense one
    assert rows == [{"method": "dense", "target_flop_ratio": 1.0}]


def test_the_command_line_runs_the_cifar_experiment(spred_cli, monkeypatch, tmp_path):
    seen = {}

    def fake(cfg, out, plot_figure=True):
        seen.update(cfg=cfg, out=out)
        return [], "table"

    monkeypatch.setattr(cc, "run_cifar_experiment", fake)
    code, err = spred_cli("run", "compression", "--dataset", "cifar10", "--model", "resnet56", "--quick",
                          "--workers", "2", "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0, err
    cfg = seen["cfg"]
    assert cfg.model == "resnet56" and cfg.workers == 2 and cfg.train_size == cc.CIFAR_QUICK["train_size"]
    # a config file may name the CIFAR methods (checked against them, not against the MNIST experiment's)
    (tmp_path / "c.json").write_text(json.dumps({"methods": ["slimming", "spred_d3"], "lam": 1e-4}))
    code, err = spred_cli("run", "compression", "--dataset", "cifar10", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "p"))
    assert code == 0, err
    assert seen["cfg"].methods == ("slimming", "spred_d3") and seen["cfg"].lam == 1e-4
    (tmp_path / "bad.json").write_text(json.dumps({"methods": ["magnitude"]}))
    code, err = spred_cli("run", "compression", "--dataset", "cifar10", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "q"))
    assert code == 2 and "CifarCompressionConfig" in err and "methods" in err


def test_cifar10_is_a_short_name_of_the_training_set():
    from spred.datasets import dataset_info

    assert dataset_info("cifar10") is dataset_info("cifar10_train")
    assert dataset_info("CIFAR10").name == dataset_info("cifar10_train").name


def test_the_figure_is_written(tmp_path):
    rows = [{"method": "dense", "target_flop_ratio": 1.0, "test_acc": 0.9, "test_acc_std": 0.0, "flop_ratio": 1.0},
            {"method": "slimming", "target_flop_ratio": 2.0, "test_acc": 0.8, "test_acc_std": 0.01, "flop_ratio": 2.0}]  # fmt: skip
    cc.plot_cifar(rows, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
