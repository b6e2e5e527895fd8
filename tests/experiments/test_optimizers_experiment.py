"""``spred run optimizers`` and :func:`optimizer_study`: rows for every run, honest convergence flags,
KKT statistics that tell L1 from decoupled decay, outputs written.

Synthetic data and a tiny MLP keep everything fast; the MNIST command runs in the
``data`` test (tiny config) and ``--quick`` itself is ``slow``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math

import pytest
import torch
from torch import nn

import spred
from spred.cli import main
from spred.experiments import _common
from spred.experiments import optimizers as opt_exp

LRS = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3, "adamw_decoupled": 3e-3, "adagrad": 3e-2}
DENSE_LRS = {"sgd": 0.1, "adam": 1e-2, "adamw": 1e-2, "adagrad": 3e-2}
OPTIMIZERS = ("sgd", "adam", "adamw", "adamw_decoupled")  # Adagrad runs in the slow MNIST test
TARGETS = (0.3,)


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


@pytest.fixture(scope="module")
def study():
    """One small study over both sparsity types (fixed lrs: no tuning)."""
    tuning = []
    rows = opt_exp.optimizer_study(
        _factory, _data(1024, 0), _data(256, 1), optimizers=OPTIMIZERS, targets=TARGETS, seeds=(0,), epochs=30, batch_size=32,
        lrs={"unstructured": LRS, "structured": LRS, "dense": DENSE_LRS}, latency_batch_sizes=(1, 32), latency_repeats=2, kkt_samples=512, progress=False, tuning=tuning,
    )
    return rows, tuning


def test_study_returns_one_row_per_run_with_every_field(study):
    rows, tuning = study
    assert tuning == []  # every lr given: nothing tuned
    sparse = [r for r in rows if r["sparsity_type"] != "dense"]
    keys = {(r["optimizer"], r["sparsity_type"], r["target"], r["seed"]) for r in sparse}
    expected = {(o, t, target, 0) for o in OPTIMIZERS for t in opt_exp.SPARSITY_TYPES for target in TARGETS}
    assert keys == expected and len(sparse) == len(expected)
    dense = sorted(r["optimizer"] for r in rows if r["sparsity_type"] == "dense")
    assert dense == ["adam", "adamw", "sgd"]  # adamw_decoupled shares the adamw baseline
    for r in rows:
        assert set(r) == set(opt_exp.CSV_COLUMNS)
        assert r["lr"] == (DENSE_LRS if r["sparsity_type"] == "dense" else LRS)[r["optimizer"]] and r["lr_source"] == "given"
        assert 0.0 <= r["test_acc"] <= 1.0 and r["train_seconds"] > 0
        assert r["latency_dense_b1"] > 0 and r["latency_dense_bmax"] > 0 and r["latency_batch"] == 32
    for r in sparse:
        assert r["dense_test_acc"] == next(d["test_acc"] for d in rows if d["sparsity_type"] == "dense" and d["optimizer"] == opt_exp.DENSE_OF[r["optimizer"]])
        assert 0.0 <= r["weight_sparsity"] <= 1.0 and r["latency_collapsed_b1"] > 0
        assert r["params_total"] == sum(p.numel() for p in _factory().parameters())
        assert math.isfinite(r["kkt_relative"]) and r["n_zero_units"] + r["n_nonzero_units"] > 0


def test_reached_target_flag_is_the_tolerance_check(study):
    rows, _ = study
    sparse = [r for r in rows if r["sparsity_type"] != "dense"]
    for r in sparse:
        assert r["sparsity_error"] == pytest.approx(r["weight_sparsity"] - r["target"])
        assert r["reached_target"] == (abs(r["weight_sparsity"] - r["target"]) <= 0.02)
    # the coupled optimizers land on the target on this problem
    coupled = [r for r in sparse if r["optimizer"] in ("sgd", "adam", "adamw") and r["sparsity_type"] == "unstructured"]
    assert all(r["reached_target"] for r in coupled), [(r["optimizer"], r["target"], r["weight_sparsity"]) for r in coupled]


def test_structured_rows_count_channels_and_prune_them(study):
    rows, _ = study
    for r in rows:
        if r["sparsity_type"] != "structured":
            continue
        assert r["n_channels"] == 32  # the hidden neurons; the output layer is not sparsified
        # structured zeros are whole neurons: 16 weights each
        assert r["weight_sparsity"] == pytest.approx(r["zero_channels"] / 32)
        assert r["params_pruned"] <= r["params_total"]
        if r["zero_channels"]:
            assert r["params_pruned"] < r["params_total"] and r["macs_pruned"] < r["macs_dense"]
        assert r["pruned_max_abs_diff"] < 1e-4


def test_adamw_with_penalty_equals_adam(study):
    # with no other weight decay, AdamW + spred.penalty in the loss is Adam with coupled decay: the same run
    rows, _ = study
    pick = {(r["optimizer"], r["sparsity_type"], r["target"]): r for r in rows}
    for kind in opt_exp.SPARSITY_TYPES:
        for target in TARGETS:
            a, w = pick[("adam", kind, target)], pick[("adamw", kind, target)]
            assert w["weight_sparsity"] == pytest.approx(a["weight_sparsity"], abs=0.01)
            assert w["lam_final"] == pytest.approx(a["lam_final"], rel=0.05)


def test_decoupled_decay_is_not_l1_at_its_own_lam(study):
    # decoupled AdamW is driven by a "lam" (its decay) far from the L1 strength that explains its weights
    rows, _ = study
    for r in rows:
        if r["sparsity_type"] == "dense":
            continue
        if r["optimizer"] == "adamw_decoupled":
            assert r["lam_fit_ratio"] < 0.05, r
        if r["optimizer"] in ("adam", "adamw"):
            assert r["lam_fit_ratio"] > 0.05, r


def _lasso_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 10, generator=g, dtype=torch.float64)
    return X, X @ torch.tensor([1.0, -2.0, 0.0, 0.0, 0.5, 0, 0, 0, 0, 0], dtype=torch.float64)


def _squared_loss(out, t):
    return 0.5 * ((out.squeeze(-1) - t) ** 2).mean()


def _full_batch_sgd(model, X, y, lr: float, steps: int, weight_decay: float = 0.0):
    optimizer = torch.optim.SGD(spred.param_groups(model, weight_decay=weight_decay), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        _squared_loss(model(X), y).backward()
        optimizer.step()
    return model


def test_kkt_statistics_at_an_l1_optimum():
    # a Lasso-like linear model trained to convergence with full-batch SGD: lam_fit = lam, residuals ~ 0
    X, y = _lasso_problem()
    model = _full_batch_sgd(spred.sparsify(nn.Linear(10, 1, bias=False).double(), lam=0.1), X, y, 0.1, 3000)
    stats = opt_exp.kkt_statistics(model, _squared_loss, (X, y), threshold=1e-8)
    assert stats["n_nonzero_units"] == 3 and stats["n_zero_units"] == 7
    assert stats["lam_fit_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["kkt_median"] < 1e-6 and stats["zero_violations"] == 0.0 and stats["kkt_relative"] < 1e-6


@pytest.mark.slow
def test_kkt_statistics_at_a_group_l1_optimum_of_channel_groups():
    # a two-layer linear network with one gate per hidden unit (its row; the output layer is not gated, so it gets
    # plain weight decay: without it, rows can shrink while the output column grows and the problem has no minimiser)
    X, y = _lasso_problem()
    with _common.torch_seed(0):
        model = nn.Sequential(nn.Linear(10, 6, bias=False), nn.Linear(6, 1, bias=False)).double()
    spred.sparsify(model, 0.05, groups="channels", example_inputs=X[:2])
    trained = _full_batch_sgd(model, X, y, 0.05, 6000, weight_decay=0.05)
    stats = opt_exp.kkt_statistics(trained, _squared_loss, (X, y), threshold=1e-6)
    assert stats["n_zero_units"] + stats["n_nonzero_units"] == 6 and stats["n_zero_units"] >= 3
    assert stats["lam_fit_ratio"] == pytest.approx(1.0, abs=0.05) and stats["zero_violations"] == 0.0
    assert stats["kkt_median"] < 1e-3


def test_tuning_picks_the_best_reaching_lr_and_records_the_grid():
    tuning = []
    rows = opt_exp.optimizer_study(
        _factory, _data(1024, 0), _data(256, 1), optimizers=("sgd",), sparsity_types=("unstructured",), targets=(0.5,),
        seeds=(0,), epochs=6, lr_grid={"sgd": (0.01, 0.05)}, latency_repeats=1, latency_batch_sizes=(1,), progress=False,
        tuning=tuning, dense_baseline=False,
    )
    assert all(r["sparsity_type"] == "unstructured" and r["target"] == 0.5 for r in tuning)  # tuned at the lowest target
    assert [r["lr"] for r in tuning] == [0.01, 0.05]
    chosen = [r for r in tuning if r["chosen"]]
    assert len(chosen) == 1
    pool = [r for r in tuning if r["reached_target"]] or tuning
    assert chosen[0]["val_acc"] == max(r["val_acc"] for r in pool)
    assert rows[0]["lr"] == chosen[0]["lr"] and rows[0]["lr_source"] == "tuned"


def test_outputs_summary_and_figures(study, tmp_path):
    rows, _ = study
    rows = [dict(r, dataset="synthetic") for r in rows]
    summary = opt_exp.summarise(rows)
    assert len(summary) == len(rows)  # one seed: one summary row per run
    s = next(r for r in summary if r["optimizer"] == "sgd" and r["sparsity_type"] == "unstructured" and r["target"] == 0.3)
    assert s["n_seeds"] == 1 and s["weight_sparsity_std"] == 0.0
    path = _common.write_csv(rows, tmp_path / "optimizers.csv", opt_exp.CSV_COLUMNS)
    back = _common.read_csv(path)
    assert len(back) == len(rows) and back[0].keys() == set(opt_exp.CSV_COLUMNS) | set()  # noqa: PLR0124
    table = opt_exp.summary_table(summary, "synthetic", "structured")
    assert "| optimizer | lr | target |" in table and "speed-up pruned b=max" in table and "sgd (dense)" in table
    for kind in opt_exp.SPARSITY_TYPES:
        png = opt_exp.plot_panel(summary, "synthetic", kind, tmp_path / f"{kind}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the output folder (issue 19, items 1 and 6)

SMALL = opt_exp.OptimizersConfig(
    datasets=("mnist",), optimizers=("sgd",), sparsity_types=("unstructured",), targets=(0.3,), seeds=(0,), epochs=2, batch_size=32,
    lrs={"sgd": 0.05}, dense_baseline=False, latency_batch_sizes=(1,), latency_repeats=1, kkt_samples=64,
)  # fmt: skip


@pytest.fixture
def small_run(monkeypatch):
    """A run of one optimizer and type on the tiny MLP and synthetic data (well under a second); ``calls`` records every data load."""
    calls: list = []
    monkeypatch.setattr(opt_exp, "load_dataset", lambda name, cfg, data_home=None: calls.append(name) or (_data(256, 0), _data(64, 1)))
    monkeypatch.setattr(opt_exp, "StudyCNN", _factory)

    def run(out, **changes):
        cfg = opt_exp.OptimizersConfig(**{**SMALL.__dict__, **changes})
        return opt_exp.run_experiment(cfg, out, plot_figure=False, progress=False)

    run.calls = calls
    return run



def test_a_folder_with_the_users_files_is_refused_before_any_work_and_left_untouched(tmp_path, small_run, spred_cli):
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "optimizers.csv").write_text("my,data\n")
    code, err = spred_cli("run", "optimizers", "--quick", "--out", str(tmp_path))
    assert code == 2 and err.startswith("spred: error: The 'out' folder") and "was not written by spred run" in err
    assert len(err.strip().splitlines()) == 1 and small_run.calls == []  # refused before loading any data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "optimizers.csv"]
    assert (tmp_path / "config.json").read_text() == '{"mine": true}' and (tmp_path / "optimizers.csv").read_text() == "my,data\n"
    with pytest.raises(ValueError, match=r"The 'out' folder '.*' is not empty and was not written by spred run \(it holds config.json"):
        small_run(tmp_path)
    assert small_run.calls == []


def test_results_are_read_back_through_the_manifest(tmp_path, small_run):
    res = small_run(tmp_path, seeds=(0, 1))
    assert set(res.files) == {"runs", "summary", "markdown", "config"} and all(p.parent == tmp_path and p.is_file() for p in res.files.values())
    cfg, rows, tuning = opt_exp.load_results(tmp_path)
    assert cfg == opt_exp.check_config(opt_exp.OptimizersConfig(**{**SMALL.__dict__, "seeds": (0, 1)})) and tuning == []
    assert [(r["optimizer"], r["seed"]) for r in rows] == [("sgd", 0), ("sgd", 1)]
    assert [r["test_acc"] for r in rows] == [r["test_acc"] for r in res.rows]  # exact round trip
    (tmp_path / "optimizers.csv").write_text((tmp_path / "optimizers.csv").read_text().replace(",0,", ",7,", 1))  # edited by hand
    with pytest.raises(ValueError, match=r"are mixed: 'optimizers.csv' is not the file that run \w+ wrote"):
        opt_exp.load_results(tmp_path)
    with pytest.raises(ValueError, match=r"holds no results of 'spred run optimizers'"):
        opt_exp.load_results(tmp_path / "nothing")


def test_an_interrupted_run_leaves_the_previous_set_and_a_rerun_replaces_it(tmp_path, small_run, monkeypatch):
    small_run(tmp_path, seeds=(0,))
    real = opt_exp.load_dataset

    def interrupt_on_fashion(name, cfg, data_home=None):
        if name == "fashion_mnist":
            raise KeyboardInterrupt
        return real(name, cfg, data_home)

    monkeypatch.setattr(opt_exp, "load_dataset", interrupt_on_fashion)
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path, seeds=(1,), datasets=("mnist", "fashion_mnist"))  # mnist finished, its CSV staged
    cfg, rows, _ = opt_exp.load_results(tmp_path)  # the previous, complete set, not the partial one
    assert cfg.seeds == (0,) and cfg.datasets == ("mnist",) and {r["seed"] for r in rows} == {0}
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".spred-tmp-")]
    assert len(staged) == 1 and {r["seed"] for r in _common.read_csv(staged[0] / "optimizers.csv")} == {1}
    small_run(tmp_path, seeds=(2,))
    assert opt_exp.load_results(tmp_path)[0].seeds == (2,) and not any(p.name.startswith(".spred-tmp-") for p in tmp_path.iterdir())


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path, small_run, monkeypatch, spred_cli):
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(name, cfg, data_home=None):
        started.set()
        release.wait(30)
        return _data(256, 0), _data(64, 1)

    monkeypatch.setattr(opt_exp, "load_dataset", slow)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(small_run(tmp_path)))
    thread.start()
    try:
        assert started.wait(30)
        code, err = spred_cli("run", "optimizers", "--quick", "--out", str(tmp_path))
    finally:
        release.set()
        thread.join(60)
    assert code == 2 and "is in use by another spred run (pid" in err and len(err.strip().splitlines()) == 1
    cfg, rows, _ = opt_exp.load_results(tmp_path)  # the first run finished, its set whole
    assert first and cfg.epochs == 2 and [r["seed"] for r in rows] == [0]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizers": ("sgd", "rmsprop")}, ValueError, r"The 'optimizers' parameter of optimizer_study must be a non-empty subset"),
        ({"sparsity_types": ("blocks",)}, ValueError, r"The 'sparsity_types' parameter of optimizer_study"),
        ({"targets": (0.5, 1.0)}, ValueError, r"The 'targets' parameter of optimizer_study must be a non-empty list of floats in \(0, 1\)"),
        ({"seeds": (-1,)}, ValueError, r"The 'seeds' parameter of optimizer_study"),
        ({"epochs": 0}, ValueError, r"The 'epochs' parameter of optimizer_study must be an int >= 1. Got 0"),
        ({"structured_groups": "heads"}, ValueError, r"The 'structured_groups' parameter of optimizer_study must be one of \['channels', 'out'\]"),
        ({"lam_update_every": 0}, ValueError, r"The 'lam_update_every' parameter of optimizer_study must be an int >= 1. Got 0"),
        ({"threshold": 0.0}, ValueError, r"The 'threshold' parameter of optimizer_study must be a float in the range \(0, inf\). Got 0.0"),
        ({"tolerance": 2.0}, ValueError, r"The 'tolerance' parameter of optimizer_study must be a float in the range \(0, 1\)"),
        ({"lrs": {"sgd": -1.0}}, ValueError, r"The 'lrs' entry for 'sgd' of optimizer_study must be a float > 0"),
        ({"lrs": {"lion": 1e-3}}, ValueError, r"The 'lrs' parameter of optimizer_study has unknown optimizers \['lion'\]"),
        ({"lrs": [0.1]}, TypeError, r"The 'lrs' parameter of optimizer_study must be a mapping \{optimizer: lr\} or \{sparsity type: \{optimizer: lr\}\}"),
        ({"lrs": {"dense": {"sgd": 0.1}, "adam": 0.1}}, ValueError, r"The 'lrs' parameter of optimizer_study mixes sparsity types and other keys \['adam'\]"),
        ({"lrs": {"dense": {"sgd": 0}}}, ValueError, r"The 'lrs\['dense'\]' entry for 'sgd' of optimizer_study must be a float > 0"),
        ({"tune_target": 1.5}, ValueError, r"The 'tune_target' parameter of optimizer_study must be a float in the range \(0, 1\) or None. Got 1.5"),
        ({"example_inputs": torch.zeros(1, 16)}, ValueError, r"The 'example_inputs' parameter of optimizer_study must be a tensor with at least 2 samples"),
        ({"finetune_optimizer": "lion"}, ValueError, r"The 'finetune_optimizer' parameter of optimizer_study must be one of \['sgd', 'adam', 'adamw', 'adagrad'\]. Got 'lion'"),
        ({"finetune_lr": 0.0}, ValueError, r"The 'finetune_lr' parameter of optimizer_study must be a float in the range \(0, inf\). Got 0.0"),
    ],
)
def test_study_rejects_bad_parameters(kwargs, error, match):
    args = {"lrs": LRS, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        opt_exp.optimizer_study(_factory, _data(64, 0), _data(32, 1), **args)


def test_worker_processes_give_the_same_rows():
    """n_jobs=2 runs the jobs in spawned workers: every run seeds itself, so the rows equal the sequential ones."""
    import functools

    from spred.models import MLP

    factory = functools.partial(MLP, 16, (32,), 3)  # picklable, unlike a test-module function
    kwargs = dict(optimizers=("sgd", "adam"), sparsity_types=("unstructured",), targets=(0.3,), seeds=(0, 1), epochs=3, batch_size=64,
                  lrs={"sgd": 0.05, "adam": 3e-3}, latency_batch_sizes=(1,), latency_repeats=1, kkt_samples=128, progress=False)  # fmt: skip
    one = opt_exp.optimizer_study(factory, _data(512, 0), _data(128, 1), **kwargs)
    two = opt_exp.optimizer_study(factory, _data(512, 0), _data(128, 1), n_jobs=2, **kwargs)
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        for key in ("sparsity_type", "optimizer", "seed", "weight_sparsity", "test_acc", "lam_final", "kkt_max"):
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key
    with pytest.raises(TypeError, match=r"n_jobs=2 runs the jobs in worker processes, which needs a picklable model factory"):
        opt_exp.optimizer_study(lambda: factory(), _data(512, 0), _data(128, 1), n_jobs=2, **kwargs)
    with pytest.raises(ValueError, match=r"The 'n_jobs' parameter of optimizer_study must be an int >= 1. Got 0 instead."):
        opt_exp.optimizer_study(factory, _data(512, 0), _data(128, 1), n_jobs=0, **kwargs)


def test_study_rejects_bad_factory_and_data():
    with pytest.raises(TypeError, match=r"The 'model_factory' parameter of optimizer_study must be a callable that builds a fresh model \(e.g. lambda: MyNet\(\)\), not a model. Got Linear"):
        opt_exp.optimizer_study(nn.Linear(2, 2), _data(64, 0), _data(32, 1))
    with pytest.raises(TypeError, match=r"The 'model_factory' parameter of optimizer_study must be a callable that builds a fresh model .* Got str"):
        opt_exp.optimizer_study("lenet", _data(64, 0), _data(32, 1))
    with pytest.raises(TypeError, match=r"The 'model_factory' parameter of optimizer_study must return an nn.Module. Got int"):
        opt_exp.optimizer_study(lambda: 3, _data(64, 0), _data(32, 1), lrs=LRS)
    with pytest.raises(ValueError, match=r"must return a plain model; it returned a model already sparsified"):
        opt_exp.optimizer_study(lambda: spred.sparsify(_factory(), 1e-3), _data(64, 0), _data(32, 1), lrs=LRS)
    with pytest.raises(TypeError, match=r"The 'train_data' parameter of optimizer_study must be a tuple \(X, y\) of tensors or a DataLoader. Got str"):
        opt_exp.optimizer_study(_factory, "data", _data(32, 1), lrs=LRS)
    X, y = _data(64, 0)
    with pytest.raises(ValueError, match=r"The 'test_data' parameter of optimizer_study must hold at least 2 samples with as many targets as inputs. Got 64 inputs and 10"):
        opt_exp.optimizer_study(_factory, (X, y), (X, y[:10]), lrs=LRS)


def test_tuning_with_a_loader_needs_val_data():
    X, y = _data(64, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
    with pytest.raises(ValueError, match=r"tuning the learning rates \{'unstructured': \['adam'\], 'structured': \['adam'\]\} needs validation data"):
        opt_exp.optimizer_study(_factory, loader, (X, y), optimizers=("sgd", "adam"), lrs={"sgd": 0.1}, progress=False, dense_baseline=False)
    with pytest.raises(ValueError, match=r"tuning the learning rates \{'dense': \['sgd'\]\} needs validation data"):
        opt_exp.optimizer_study(_factory, loader, (X, y), optimizers=("sgd",), lrs={"unstructured": {"sgd": 0.1}, "structured": {"sgd": 0.1}}, progress=False)
    # every lr given: a loader is fine
    rows = opt_exp.optimizer_study(_factory, loader, (X, y), optimizers=("sgd",), sparsity_types=("unstructured",), targets=(0.5,), seeds=(0,),
                                   epochs=1, lrs={"sgd": 0.1}, latency_batch_sizes=(1,), latency_repeats=1, kkt_samples=20, progress=False)
    assert [r["sparsity_type"] for r in rows] == ["dense", "unstructured"]


def test_tuning_raises_when_every_lr_diverges():
    X, y = _data(128, 0)
    X = X * 1e30
    with pytest.raises(FloatingPointError, match=r"every learning rate of the grid \[.*\] diverged for sgd"):
        opt_exp.tune_learning_rates(_factory, (X, y), (X, y), optimizers=("sgd",), lr_grid={"sgd": (1e3,)}, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"The 'sparsity_type' parameter of tune_learning_rates must be one of \['unstructured', 'structured', 'dense'\]. Got 'blocks'"):
        opt_exp.tune_learning_rates(_factory, (X, y), (X, y), sparsity_type="blocks")


def test_config_validation_messages():
    base = opt_exp.OptimizersConfig()
    cases = [
        ({"datasets": ("cifar100",)}, r"The 'datasets' parameter of OptimizersConfig must be a non-empty subset of \['mnist', 'fashion_mnist', 'cifar10'\]"),
        ({"models": ("vgg99",)}, r"The 'models' parameter of OptimizersConfig must be a non-empty subset of \['mlp', "),
        ({"finetune_epochs": -1}, r"The 'finetune_epochs' parameter of OptimizersConfig must be an int >= 0. Got -1"),
        ({"finetune_optimizer": "adamw_decoupled"}, r"The 'finetune_optimizer' parameter of OptimizersConfig must be one of \['sgd', 'adam', 'adamw', 'adagrad'\]"),
        ({"finetune_lr": -1e-4}, r"The 'finetune_lr' parameter of OptimizersConfig must be a float in the range \(0, inf\). Got -0.0001"),
        ({"cifar_n_test": 1}, r"The 'cifar_n_test' parameter of OptimizersConfig must be an int >= 2 or None. Got 1"),
        ({"epochs": 0}, r"The 'epochs' parameter of OptimizersConfig must be an int >= 1. Got 0"),
        ({"lam_update_every": 0}, r"The 'lam_update_every' parameter of OptimizersConfig must be an int >= 1. Got 0"),
        ({"structured_groups": "in"}, r"The 'structured_groups' parameter of OptimizersConfig must be one of \['channels', 'out'\]. Got 'in'"),
        ({"n_train": 1}, r"The 'n_train' parameter of OptimizersConfig must be an int >= 2 or None. Got 1"),
        ({"val_fraction": 1.5}, r"The 'val_fraction' parameter of OptimizersConfig must be a float in the range \(0, 1\). Got 1.5"),
        ({"threshold": -1.0}, r"The 'threshold' parameter of OptimizersConfig must be a float in the range \(0, inf\). Got -1.0"),
        ({"momentum": 1.0}, r"The 'momentum' parameter of OptimizersConfig must be a float in the range \[0, 1\). Got 1.0"),
        ({"tune_seed": -2}, r"The 'tune_seed' parameter of OptimizersConfig must be an int >= 0. Got -2"),
        ({"lr_grid": {"sgd": ()}}, r"The 'lr_grid' entry for 'sgd' of OptimizersConfig must be a non-empty list of floats > 0"),
        ({"lr_grid": {}}, r"The 'lr_grid' parameter of OptimizersConfig has no grid for \['sgd', 'adam', 'adamw', 'adamw_decoupled', 'adagrad'\]"),
        ({"latency_batch_sizes": (0,)}, r"The 'latency_batch_sizes' parameter of OptimizersConfig must be a non-empty list of ints >= 1"),
    ]
    for change, match in cases:
        import dataclasses

        with pytest.raises(ValueError, match=match):
            opt_exp.check_config(dataclasses.replace(base, **change))
    assert opt_exp.check_config(base) is base


def test_cli_lr_option_is_parsed_and_validated():
    import argparse

    parser = argparse.ArgumentParser()
    opt_exp.add_arguments(parser)
    cfg = opt_exp.config_from_args(parser.parse_args(["--quick", "--lr", "sgd=0.03", "structured:sgd=0.1", "--targets", "0.5"]))
    assert cfg.lrs == {"unstructured": {"sgd": 0.03}, "structured": {"sgd": 0.1}, "dense": {"sgd": 0.03}}
    assert cfg.targets == (0.5,) and cfg.seeds == (0,) and cfg.n_train == 10_000
    with pytest.raises(ValueError, match=r"The '--lr' option of spred run optimizers takes a type among \['unstructured', 'structured', 'dense'\] before ':'. Got 'pruned:sgd=1'"):
        opt_exp.config_from_args(parser.parse_args(["--lr", "pruned:sgd=1"]))
    with pytest.raises(ValueError, match=r"The '--lr' option of spred run optimizers takes \[TYPE:\]OPT=LR pairs such as sgd=0.03. Got 'sgd'"):
        opt_exp.config_from_args(parser.parse_args(["--lr", "sgd"]))
    with pytest.raises(ValueError, match=r"The '--lr' option of spred run optimizers needs a number after '='. Got 'sgd=fast'"):
        opt_exp.config_from_args(parser.parse_args(["--lr", "sgd=fast"]))


def test_runs_silence_the_loop_and_pruning_info_lines_by_logger_level(caplog):
    """The per-epoch and per-pruning INFO lines are silenced by a level on the parent loggers, not a record filter."""
    import logging

    from spred.experiments import _optimizers_runs as runs

    loop, prune = logging.getLogger("spred.train._loop"), logging.getLogger("spred.compress._prune")
    levels = {name: logging.getLogger(name).level for name in runs.QUIET_LOGGERS}
    with caplog.at_level(logging.INFO, logger="spred"):
        with runs._quiet_logs():
            loop.info("epoch line")
            prune.info("pruning line")
            loop.warning("a warning")
            logging.getLogger("spred.experiments").info("one line per run")
        loop.info("after")
    assert [r.getMessage() for r in caplog.records] == ["a warning", "one line per run", "after"]
    assert {name: logging.getLogger(name).level for name in runs.QUIET_LOGGERS} == levels


def test_study_cnn_is_the_registered_model():
    from spred.models import StudyCNN, build

    assert opt_exp.StudyCNN is StudyCNN and type(build("studycnn", seed=0)) is StudyCNN


def test_import_spred_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, spred.experiments.optimizers; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the command on MNIST


@pytest.mark.data
def test_command_on_mnist_writes_csv_figures_config_and_table(data_home, tmp_path, monkeypatch):
    monkeypatch.setenv("SPRED_DATA", str(data_home))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"n_train": 600, "epochs": 2, "latency_repeats": 2, "kkt_samples": 256, "lr_grid": {"sgd": [0.05]}}))
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "run", "optimizers", "--config", str(config), "--out", str(out), "--datasets", "mnist", "--seeds", "0",
                     "--optimizers", "sgd", "--targets", "0.5"])  # fmt: skip
    assert code == 0
    text = printed.getvalue()
    assert "**mnist, unstructured**" in text and "**mnist, structured**" in text
    for kind in ("unstructured", "structured", "dense"):
        assert f"Learning rates on mnist ({kind}): sgd 0.05 (tuned)" in text
    for name in ("optimizers.csv", "optimizers_summary.csv", "optimizers_lr_tuning.csv", "summary.md", "config.json",
                 "optimizers_mnist_unstructured.png", "optimizers_mnist_structured.png"):  # fmt: skip
        assert (out / name).is_file(), name
    with open(out / "optimizers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["sparsity_type"] for r in rows} == {"dense", "unstructured", "structured"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["spred_version"] == spred.__version__
    assert cfg["learning_rates"] == {"mnist": {"unstructured": {"sgd": 0.05}, "structured": {"sgd": 0.05}, "dense": {"sgd": 0.05}}}
    assert [(r["sparsity_type"], r["chosen"]) for r in cfg["lr_tuning"]] == [("unstructured", True), ("structured", True), ("dense", True)]
    assert cfg["config"]["lr_grid"]["sgd"] == [0.05]


@pytest.mark.data
def test_fashion_split_is_fixed_and_stratified(data_home):
    cfg = opt_exp.OptimizersConfig()
    (X, y), (Xt, yt) = opt_exp.load_dataset("fashion_mnist", cfg, data_home)
    (X2, _), _ = opt_exp.load_dataset("fashion_mnist", cfg, data_home)
    assert X.shape == (1500, 1, 28, 28) and Xt.shape == (500, 1, 28, 28) and torch.equal(X, X2)
    assert torch.bincount(yt, minlength=10).min() >= 45  # about 50 per class


@pytest.mark.slow
@pytest.mark.data
def test_quick_run_reaches_targets(data_home, tmp_path, monkeypatch):
    monkeypatch.setenv("SPRED_DATA", str(data_home))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["-q", "run", "optimizers", "--quick", "--out", str(tmp_path), "--no-plot"]) == 0
    with open(tmp_path / "optimizers.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["sparsity_type"] != "dense"]
    assert len(rows) == 5 * 2 * 4
    # the acceptance criterion: the coupled (L1) optimizers land within 2 points of every target    coupled = [r for r in rows if r["optimizer"] in ("sgd", "adam", "adamw")]
    assert all(abs(float(r["weight_sparsity"]) - float(r["target"])) <= 0.02 for r in coupled)
