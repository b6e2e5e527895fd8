"""``spred run genes``: the protocol's invariants (no test-set leakage, exactly k), ranks, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedShuffleSplit

from spred.experiments import genes

TINY = dict(seeds=(0,), ks=(3, 6), spred_max_iter=15, mlp_epochs=20)


def test_selection_depends_only_on_the_training_part():
    X, y = make_classification(n_samples=60, n_features=30, n_informative=4, n_classes=3, n_clusters_per_class=1, random_state=0)
    cfg = replace(genes.GenesConfig(), methods=("spred_linear", "anova", "l1_logistic", "mlp_wd", "random"), **TINY)
    before = genes.run_split("toy", X, y, 0, cfg)
    _, test = next(StratifiedShuffleSplit(n_splits=1, test_size=cfg.test_size, random_state=0).split(X, y))
    X2 = X.copy()
    rng = np.random.default_rng(1)
    for c in np.unique(y):  # shuffle the test rows within each class (the split is unchanged) and rescale them
        rows = test[y[test] == c]
        X2[rows] = X[rng.permutation(rows)] * 5 + 3
    after = genes.run_split("toy", X2, y, 0, cfg)
    assert [r["selected"] for r in before] == [r["selected"] for r in after]
    for r in before:
        assert r["n_selected"] == r["k"] == len(r["selected"].split())


def test_every_method_returns_exactly_k(rng):
    X, y = make_classification(n_samples=50, n_features=60, n_informative=5, random_state=2)
    cfg = replace(genes.GenesConfig(), methods=("hsic_lasso", "mlp_l1", "spred_ensemble"), **TINY)
    rows = genes.run_split("toy", X, y, 0, cfg)
    assert {(r["method"], r["k"]) for r in rows} == {(m, k) for m in cfg.methods for k in cfg.ks}
    assert all(len(r["selected"].split()) == r["k"] for r in rows)
    assert all(np.isfinite(r["acc_own"]) == r["method"].startswith("spred") for r in rows)


def test_a_failing_method_is_recorded_and_the_others_are_kept(monkeypatch, caplog):
    X, y = make_classification(n_samples=50, n_features=30, n_informative=4, random_state=3)

    def broken(*args):
        raise np.linalg.LinAlgError("Singular matrix\nsecond line")

    monkeypatch.setitem(genes.SELECTORS, "hsic_lasso", broken)
    cfg = replace(genes.GenesConfig(), methods=("anova", "hsic_lasso", "random"), **TINY)
    with caplog.at_level("WARNING", logger="spred"):
        rows = genes.run_split("toy", X, y, 0, cfg)
    assert "hsic_lasso failed on toy (seed 0), recorded as missing: LinAlgError: Singular matrix" in caplog.text
    failed = [r for r in rows if r["method"] == "hsic_lasso"]
    assert [r["k"] for r in failed] == list(cfg.ks)
    assert all(r["error"] == "LinAlgError: Singular matrix" and np.isnan(r["acc_svm"]) and r["selected"] == "" for r in failed)
    kept = [r for r in rows if r["method"] != "hsic_lasso"]
    assert len(kept) == 2 * len(cfg.ks) and all(np.isfinite(r["acc_svm"]) and r["error"] == "" for r in kept)
    summary = genes.summarise(rows)
    ranks = genes.average_ranks(summary, list(cfg.methods))
    assert {r["method"] for r in ranks} == {"anova", "random"}
    assert all(r["n_failed"] == (r["method"] == "hsic_lasso") for r in summary)
    results = genes.GenesResults(rows, summary, ranks, {}, 0.0)
    assert "hsic_lasso on toy (seed 0): LinAlgError: Singular matrix" in genes.report(results, cfg)


def test_average_ranks_share_ties():
    summary = [
        {"dataset": d, "method": m, "k": 10, "svm_mean": a, "logreg_mean": a}
        for d, accs in {"A": (0.9, 0.8, 0.8), "B": (0.7, 0.9, 0.6)}.items()
        for m, a in zip(("x", "y", "z"), accs)
    ]
    ranks = {(r["method"], r["score"]): r["average_rank"] for r in genes.average_ranks(summary, ["x", "y", "z"])}
    assert ranks[("x", "svm")] == pytest.approx((1 + 2) / 2)
    assert ranks[("y", "svm")] == pytest.approx((2.5 + 1) / 2)
    assert ranks[("z", "svm")] == pytest.approx((2.5 + 3) / 2)


def test_config_errors():
    with pytest.raises(ValueError, match=r"The 'methods' parameter of GenesConfig must be a non-empty tuple of distinct values from .* Got \('svm',\)"):
        genes.check_config(replace(genes.GenesConfig(), methods=("svm",)))
    with pytest.raises(ValueError, match=r"The 'ks' parameter of GenesConfig must be a non-empty tuple of ints >= 1. Got \(0,\)"):
        genes.check_config(replace(genes.GenesConfig(), ks=(0,)))
    with pytest.raises(TypeError, match=r"The 'seeds' parameter of GenesConfig must be a non-empty tuple of ints >= 0. Got \(\)"):
        genes.check_config(replace(genes.GenesConfig(), seeds=()))
    with pytest.raises(ValueError, match=r"The 'test_size' parameter of GenesConfig must be a float in the range \(0, 1\). Got 1.5"):
        genes.check_config(replace(genes.GenesConfig(), test_size=1.5))
    with pytest.raises(ValueError, match=r"The 'datasets' parameter of GenesConfig must be a tuple of gene-expression datasets from .* Got \('mnist_test',\)"):
        genes.check_config(replace(genes.GenesConfig(), datasets=("mnist_test",)))
    with pytest.raises(TypeError, match=r"The 'hidden' parameter of GenesConfig must be an int >= 1. Got 2.5"):
        genes.check_config(replace(genes.GenesConfig(), hidden=2.5))
    cfg = genes.check_config(replace(genes.GenesConfig(), seeds=[0, 1], ks=[5]))
    assert cfg.seeds == (0, 1) and cfg.ks == (5,)


def test_importing_spred_and_the_experiment_does_not_load_matplotlib():
    code = "import sys, spred, spred.feature_selection, spred.experiments.genes; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.data
def test_run_experiment_writes_every_output(data_home, tmp_path, monkeypatch):
    monkeypatch.setenv("SPRED_DATA", str(data_home))
    cfg = replace(genes.GenesConfig(), datasets=("lung_discrete",), methods=("spred_linear", "anova", "random"), **TINY)
    results = genes.run_experiment(cfg, tmp_path, progress=False)
    assert {p.name for p in results.files.values()} == {"genes_runs.csv", "genes_summary.csv", "genes_ranks.csv", "genes.png", "config.json"}
    assert len(results.rows) == 3 * 2 and all(r["n_selected"] == r["k"] for r in results.rows)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["experiment"] == "genes" and "spred_version" in config and config["datasets_run"] == ["lung_discrete"]
    text = genes.report(results, cfg)
    assert "| spred linear |" in text and "Average rank over 1 datasets" in text


@pytest.mark.data
def test_hsic_lasso_singular_step_takes_the_package_fallback_under_numpy2(data_home, monkeypatch):
    """On nci9's split 2 a LARS step of pyHSICLasso is singular. The package's fallback catches
    ``np.linalg.linalg.LinAlgError``, gone in NumPy 2, so the run died with AttributeError (a
    15-split run lost at its last split). The wrapper restores that path, seeds it, and leaves
    NumPy as it found it (about 20 s)."""
    import contextlib

    from sklearn.preprocessing import StandardScaler

    from spred.datasets import load_dataset
    from spred.experiments import _baselines_fs as B

    monkeypatch.setenv("SPRED_DATA", str(data_home))
    cfg = genes.GenesConfig()
    X, y = load_dataset("nci9", return_X_y=True)
    train, _ = next(StratifiedShuffleSplit(n_splits=1, test_size=cfg.test_size, random_state=2).split(X, y))
    Xtr = StandardScaler().fit_transform(X[train])
    had_alias = hasattr(np.linalg, "linalg")
    state = np.random.get_state()[1].copy()
    out = B.select_hsic_lasso(Xtr, y[train], None, (10, 50), 2, cfg)
    assert [len(out[k].indices) for k in (10, 50)] == [10, 50]
    assert hasattr(np.linalg, "linalg") == had_alias and np.array_equal(np.random.get_state()[1], state)
    if not had_alias:  # the failure it guards against, without the shim
        monkeypatch.setattr(B, "_hsic_numpy_compat", lambda seed: contextlib.nullcontext())
        with pytest.raises(AttributeError, match="linalg"):
            B.select_hsic_lasso(Xtr, y[train], None, (10, 50), 2, cfg)
