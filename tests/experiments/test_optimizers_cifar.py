"""``spred run optimizers`` on CIFAR-10: the masked fine-tune, the magnitude floor, the per-run cache,
the CIFAR-10 path (models, labels, quick preset) and the epoch-by-epoch trace.

CIFAR-10 itself is replaced by a few random 32x32 images; the networks are the real ones.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

import spred
from spred.experiments import _common
from spred.experiments import _optimizers_study as study_mod
from spred.experiments import optimizers as opt_exp
from spred.experiments._optimizers_cache import cache_key, load_cached, store_cached
from spred.experiments._optimizers_cifar import AugmentedModel, cifar_factory, label, load_cifar
from spred.experiments._optimizers_floor import magnitude_prune_to, masked_finetune, match_scale
from spred.experiments._optimizers_trace import TRACE_COLUMNS, plot_trace, trace_run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with _common.num_threads(1):
        yield


def _data(n: int, seed: int, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, 3, generator=torch.Generator().manual_seed(123))
    X = torch.randn(n, d, generator=g)
    return X, (X @ W).argmax(1)


def _factory():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


def _images(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _zero_fraction(weights) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# --------------------------------------------------------------------------- the floor and the fine-tune


def test_magnitude_floor_removes_the_smallest_weights_globally():
    with _common.torch_seed(0):
        model = _factory()
    pruned = magnitude_prune_to(model, 0.3, False, "2")
    weights = [pruned[0].weight, pruned[2].weight]
    assert _zero_fraction(weights) == pytest.approx(0.3, abs=1 / 600)
    kept = torch.cat([w[w != 0].abs() for w in weights])
    removed = torch.cat([w0[w == 0].abs() for w, w0 in zip(weights, (model[0].weight, model[2].weight))])
    assert removed.max() <= kept.min()  # global: nothing kept is smaller than anything removed
    assert _zero_fraction([model[0].weight, model[2].weight]) == 0  # the dense model is untouched
    assert magnitude_prune_to(model, 0.0, False, "2") is not model


def test_structured_floor_removes_the_same_fraction_of_filters_per_layer_but_not_the_output_layer():
    with _common.torch_seed(0):
        model = spred.models.build("cifarcnn")
    pruned = magnitude_prune_to(model, 0.25, True, "classifier.3")
    for name, module in pruned.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            zero_rows = int((module.weight.flatten(1).norm(dim=1) == 0).sum())
            expected = 0 if name == "classifier.3" else round(0.25 * module.weight.shape[0])
            assert zero_rows == expected, name
    norms = pruned.features[0].weight.flatten(1).norm(dim=1)
    original = model.features[0].weight.flatten(1).norm(dim=1)
    assert original[norms == 0].max() <= original[norms != 0].min()


def test_masked_finetune_keeps_the_zeros_and_trains_the_rest():
    with _common.torch_seed(0):
        model = _factory()
    pruned = magnitude_prune_to(model, 0.5, False, "2")
    tuned = masked_finetune(pruned, _data(256, 0), optimizer="adamw", lr=1e-2, epochs=2, seed=0, batch_size=32, momentum=0.9,
                            loss_fn=nn.functional.cross_entropy)  # fmt: skip
    for before, after in ((pruned[0].weight, tuned[0].weight), (pruned[2].weight, tuned[2].weight)):
        assert torch.equal(before == 0, after == 0)
        assert not torch.equal(before, after)
    same = masked_finetune(pruned, _data(64, 0), optimizer="sgd", lr=0.1, epochs=0, seed=0, batch_size=32, momentum=0.9, loss_fn=None)
    assert same is not pruned and torch.equal(same[0].weight, pruned[0].weight)


def test_match_scale_gives_the_reference_norms_under_batchnorm_and_keeps_the_function():
    with _common.torch_seed(0):
        model, reference = spred.models.build("cifarcnn"), spred.models.build("cifarcnn")
    x = _images(8, 0)[0]
    model(x)  # training mode: running statistics that are not the initial ones
    model.eval()
    with torch.no_grad():
        for i, conv in enumerate(m for m in model.features if isinstance(m, nn.Conv2d)):
            conv.weight.mul_(0.1 * (i + 1))  # what spred's shrinkage does to the layers BatchNorm normalises
        model.classifier[1].weight.mul_(0.5)
    scaled = match_scale(model, reference)
    torch.testing.assert_close(scaled(x), model(x), rtol=1e-4, atol=1e-5)
    for mine, ref in zip(scaled.features, reference.features):
        if isinstance(mine, nn.Conv2d):
            assert float(mine.weight.detach().norm()) == pytest.approx(float(ref.weight.detach().norm()), rel=1e-5)
    assert torch.equal(scaled.classifier[1].weight, model.classifier[1].weight)  # no BatchNorm after it: left as it is
    assert scaled is not model and float(model.features[0].weight.detach().norm()) != pytest.approx(float(reference.features[0].weight.detach().norm()))


# --------------------------------------------------------------------------- the per-run cache


def test_cache_keys_and_round_trip(tmp_path):
    assert cache_key("a", "sgd", 0.1) == cache_key("a", "sgd", 0.1) != cache_key("b", "sgd", 0.1) != cache_key("a", "sgd", 0.2)
    row = {"acc": 0.5, "lam": math.nan, "name": "x"}
    assert load_cached(tmp_path, "k") == (None, None)
    store_cached(tmp_path, "k", row, {"w": torch.ones(2)})
    back, state = load_cached(tmp_path, "k", with_state=True)
    assert back["acc"] == 0.5 and math.isnan(back["lam"]) and back["name"] == "x" and torch.equal(state["w"], torch.ones(2))
    store_cached(tmp_path, "j", row)
    assert load_cached(tmp_path, "j", with_state=True) == (None, None)  # a dense run without its weights is not finished
    store_cached(None, "k", row)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "k.json", "k.pt"]


def _small_study(cache, **kw):
    return opt_exp.optimizer_study(
        _factory, _data(256, 0), _data(64, 1), optimizers=("sgd", "adam"), sparsity_types=("unstructured",), targets=(0.3,), seeds=(0,),
        epochs=3, batch_size=32, lrs={"sgd": 0.05, "adam": 3e-3}, latency_batch_sizes=(1, 8), latency_repeats=1, kkt_samples=64,
        progress=False, finetune_epochs=1, cache=cache, fingerprint="test", **kw,
    )  # fmt: skip


def test_study_fine_tunes_compares_with_the_magnitude_floor_and_resumes_from_its_cache(tmp_path, monkeypatch):
    rows = _small_study(tmp_path)
    sparse = [r for r in rows if r["sparsity_type"] != "dense"]
    assert len(rows) == 4 and len(sparse) == 2
    for r in sparse:
        for key in ("test_acc_finetuned", "magnitude_acc", "magnitude_acc_finetuned"):
            assert 0 <= r[key] <= 1, key
        assert r["finetune_epochs"] == 1 and r["finetune_optimizer"] == "adam" and r["finetune_lr"] == 1e-4  # one recipe for every optimizer
    assert len(list(tmp_path.glob("*.json"))) == 4 and len(list(tmp_path.glob("*.pt"))) == 2  # the dense runs keep their weights

    def boom(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(study_mod, "_sparse_row", boom)
    monkeypatch.setattr(study_mod, "_dense_row", boom)
    again = _small_study(tmp_path)
    strip = lambda rs: [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)
    with pytest.raises(AssertionError, match="a cached run was trained again"):
        _small_study(tmp_path, initial_lams={"sgd": 2e-5})  # another setting: another key
    with pytest.raises(AssertionError, match="a cached run was trained again"):
        _small_study(tmp_path, finetune_lr=3e-4)  # another fine-tune: another key


def test_every_sparse_run_and_its_floor_get_the_same_fine_tune(monkeypatch):
    """One recipe (optimizer, lr, epochs) for spred and the floor, whatever optimizer trained the model."""
    from spred.experiments import _optimizers_floor as floor_mod

    calls = []
    real = floor_mod.masked_finetune
    monkeypatch.setattr(floor_mod, "masked_finetune", lambda model, data, **kw: calls.append(kw) or real(model, data, **kw))
    rows = _small_study(None, finetune_optimizer="sgd", finetune_lr=0.01)
    assert len(calls) == 4  # two sparse runs, each fine-tuned and with a fine-tuned floor
    assert {(kw["optimizer"], kw["lr"], kw["epochs"]) for kw in calls} == {("sgd", 0.01, 1)}
    assert {(r["finetune_optimizer"], r["finetune_lr"]) for r in rows if r["sparsity_type"] != "dense"} == {("sgd", 0.01)}


def test_the_fine_tune_code_is_part_of_a_sparse_runs_key():
    from spred.experiments._optimizers_cache import _CODE

    assert "spred.experiments._optimizers_floor" in _CODE["sparse"] and "spred.experiments._optimizers_floor" in _CODE["channels"]
    assert "spred.experiments._optimizers_floor" not in _CODE["dense"]  # the dense runs do not fine-tune: they stay cached


def test_a_change_of_the_spred_code_a_run_executes_retrains_it(tmp_path, monkeypatch):
    fingerprints = {kind: study_mod.library_fingerprint(kind) for kind in ("dense", "sparse", "channels")}
    assert len(set(fingerprints.values())) == 3 and study_mod.library_fingerprint("sparse") == fingerprints["sparse"]
    _small_study(tmp_path)
    monkeypatch.setattr(study_mod, "library_fingerprint", lambda kind="sparse": "another version of " + kind)
    trained = []
    real = study_mod._dense_row
    monkeypatch.setattr(study_mod, "_dense_row", lambda *a, **k: trained.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(study_mod, "_sparse_row", lambda *a, **k: trained.append(a[1]) or {"diverged": True, **_diverged(a)})
    _small_study(tmp_path)
    assert sorted(trained) == ["adam", "adam", "sgd", "sgd"]  # every run again: none of the cached ones is reused


def _diverged(args):
    from spred.experiments._optimizers_runs import _diverged_row

    setup, optimizer, kind, target, lr, source, seed, lam = args[:8]
    return _diverged_row(setup, optimizer, kind, target, lr, source, seed, lam)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_models_and_labels():
    net = cifar_factory("cifarcnn", True)()
    assert isinstance(net, AugmentedModel) and isinstance(net[1], spred.models.CifarCNN)
    assert sum(p.numel() for p in net.parameters()) == 1_031_850
    assert not isinstance(cifar_factory("resnet20", False)(), AugmentedModel)
    assert label("cifar10", "resnet20") == "cifar10-resnet20" and label("mnist", "studycnn") == "mnist"


def test_cifar_data_is_standardised_on_the_training_images(monkeypatch):
    from spred import datasets

    def fake(train=True, data_home=None):
        g = torch.Generator().manual_seed(int(train))
        return (torch.rand(40 if train else 20, 3, 32, 32, generator=g) * 0.5).numpy(), torch.arange(40 if train else 20).remainder(10).numpy()

    monkeypatch.setattr(datasets, "load_cifar10", fake)
    (X, y), (Xt, yt) = load_cifar(30, None, None)
    assert X.shape == (30, 3, 32, 32) and Xt.shape == (20, 3, 32, 32) and y.dtype == torch.int64
    assert X.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (X.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_cifar_run_writes_one_set_per_model_and_reuses_finished_runs(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(opt_exp, "load_cifar", lambda n, m, home=None: loads.append((n, m)) or (_images(48, 0), _images(24, 1)))
    cfg = opt_exp.OptimizersConfig(
        datasets=("cifar10",), models=("cifarcnn",), optimizers=("adagrad",), sparsity_types=("structured",), targets=(0.4,), seeds=(0,),
        cifar_epochs=1, cifar_n_train=48, cifar_n_test=24, batch_size=16, lrs={"adagrad": 0.01}, latency_batch_sizes=(1, 4),
        latency_repeats=1, kkt_samples=16, finetune_epochs=1,
    )  # fmt: skip
    first = opt_exp.run_experiment(cfg, tmp_path, progress=False)
    assert loads == [(48, 24)] and {r["dataset"] for r in first.rows} == {"cifar10-cifarcnn"} and {r["model"] for r in first.rows} == {"cifarcnn"}
    sparse = [r for r in first.rows if r["sparsity_type"] == "structured"]
    assert len(sparse) == 1 and math.isfinite(sparse[0]["latency_pruned_b1"]) and math.isfinite(sparse[0]["magnitude_acc_finetuned"])
    assert sparse[0]["n_channels"] == 32 + 64 + 128 + 128 + 384  # channel groups: every filter and hidden neuron, not the classes
    assert math.isfinite(sparse[0]["lam_fit"]) and sparse[0]["n_nonzero_units"] + sparse[0]["n_zero_units"] == sparse[0]["n_channels"]
    assert (tmp_path / "optimizers_cifar10-cifarcnn_structured.png").exists() and (tmp_path / ".spred-runs").is_dir()
    assert "**cifar10-cifarcnn, structured**" in (tmp_path / "summary.md").read_text()
    second = opt_exp.run_experiment(cfg, tmp_path, progress=False)  # from the cache: the same rows, seconds instead of minutes
    assert [r["test_acc"] for r in second.rows] == [r["test_acc"] for r in first.rows]
    assert [r["train_seconds"] for r in second.rows] == [r["train_seconds"] for r in first.rows]


def test_quick_with_cifar10_is_the_cifar_preset():
    parser = argparse.ArgumentParser()
    opt_exp.add_arguments(parser)
    cfg = opt_exp.config_from_args(parser.parse_args(["--quick", "--datasets", "cifar10"]))
    assert cfg.datasets == ("cifar10",) and cfg.models == ("cifarcnn",) and cfg.targets == (0.2, 0.6) and cfg.cifar_n_train == 2000
    assert cfg.optimizers == ("sgd", "adam", "adagrad") and cfg.sparsity_types == ("unstructured", "structured") and cfg.seeds == (0,)
    assert cfg.structured_groups == "channels" and cfg.lam_update_every == 2 and cfg.cifar_epochs == 6 and cfg.batch_size == 32
    assert all(set(cfg.lrs[k]) == set(cfg.optimizers) for k in ("unstructured", "structured", "dense"))  # nothing to tune
    assert cfg.lrs["unstructured"]["adagrad"] == 0.01 and cfg.finetune_epochs == 1 and cfg.resume
    full = opt_exp.config_from_args(parser.parse_args(["--datasets", "cifar10", "--no-resume", "--finetune-epochs", "3"]))
    assert full.models == ("cifarcnn", "resnet20") and full.cifar_epochs == 30 and full.cifar_n_train is None and not full.resume
    assert full.finetune_epochs == 3 and full.lrs == {}  # tuned
    assert (cfg.finetune_optimizer, cfg.finetune_lr) == ("adam", 1e-4)
    other = opt_exp.config_from_args(parser.parse_args(["--quick", "--datasets", "cifar10", "--finetune-optimizer", "sgd", "--finetune-lr", "0.01"]))
    assert (other.finetune_optimizer, other.finetune_lr) == ("sgd", 0.01)
    assert opt_exp.config_from_args(parser.parse_args(["--quick"])).datasets == ("mnist",)


# --------------------------------------------------------------------------- the trace


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_trace_records_every_epoch_and_the_fine_tune(optimizer, tmp_path):
    rows = trace_run(_factory, _data(256, 0), _data(64, 1), optimizer=optimizer, lr=0.05, target=0.5, epochs=4, batch_size=32, finetune_epochs=1)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(set(r) == set(TRACE_COLUMNS) for r in rows)
    assert all(math.isnan(r["acc_finetuned"]) for r in rows[:-1]) and 0 <= rows[-1]["acc_finetuned"] <= 1
    assert rows[-1]["lam"] > rows[0]["lam"] and all(0 <= r["zeros"] <= 1 for r in rows)  # the controller raised lam
    steps = [r["adagrad_step"] for r in rows]
    if optimizer == "adagrad":
        assert all(math.isfinite(s) for s in steps) and steps[-1] < steps[0]  # the accumulators only grow
    else:
        assert all(math.isnan(s) for s in steps)
    pytest.importorskip("matplotlib")
    assert plot_trace(rows, tmp_path / "trace.png").stat().st_size > 0
