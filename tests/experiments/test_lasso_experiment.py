"""`spred run lasso`: the experiment runs, and its numbers say what the paper says.

spred + SGD lands on the closed-form Lasso (error, support, KKT); the L1 penalty added
to the loss never produces an exact zero; exact float64 zeros appear where the margin
predicts; a diverging learning rate is recorded, not raised.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import spred
from spred.cli import main
from spred.experiments import _common, lasso

QUICK = dataclasses.replace(lasso.LassoConfig(), **lasso.QUICK)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: intra-op threads only add spin-waiting on a busy machine (10-40x slower).
    with _common.num_threads(1):
        yield


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``spred run lasso --quick`` through the command line, once for this module."""
    out = tmp_path_factory.mktemp("lasso")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "run", "lasso", "--quick", "--out", str(out)])
    return code, out, printed.getvalue()


@pytest.fixture(scope="module")
def quick_rows(quick_run):
    return _read_csv(quick_run[1] / "lasso.csv")


def _select(rows, method, optimizer, lr):
    return [r for r in rows if r["method"] == method and r["optimizer"] == optimizer and math.isclose(float(r["lr"]), lr)]


# --------------------------------------------------------------------------- the quick run


def test_quick_run_writes_csv_figures_config_and_prints_table(quick_run, quick_rows):
    code, out, printed = quick_run
    assert code == 0
    assert "| method | optimizer | lr |" in printed and "| spred | sgd | 1 |" in printed
    for name in ("lasso.csv", "lasso_coefs.csv", "summary.md", "config.json", "lasso.png", "lasso_lr_sweep.png"):
        assert (out / name).is_file(), name
    for png in ("lasso.png", "lasso_lr_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one row per (method, optimizer, lr, alpha, seed), plus the closed form
    n_runs = len(QUICK.methods) * len(QUICK.optimizers) * len(QUICK.lrs) + 1
    assert len(quick_rows) == n_runs * QUICK.n_alphas * len(QUICK.seeds)
    assert set(lasso.CSV_COLUMNS) <= set(quick_rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["spred_version"] == spred.__version__
    assert config["config"]["n_steps"] == QUICK.n_steps and config["config"]["seeds"] == list(QUICK.seeds)
    assert "| spred | sgd | 1 |" in (out / "summary.md").read_text()


def test_quick_config_round_trips_through_config_file(quick_run):
    # The written config.json is accepted back by --config and gives the same config.
    cfg = _common.resolve_config(lasso.LassoConfig, config_file=quick_run[1] / "config.json")
    assert lasso.check_config(cfg) == QUICK


def test_spred_sgd_matches_the_closed_form_where_the_budget_resolves_it(quick_rows):
    lr = QUICK.main_lrs["sgd"]
    rows = _select(quick_rows, "spred", "sgd", lr)
    assert rows and not any(r["diverged"] == "True" for r in rows)
    # A pruned weight decays like exp(-2 lr m t) and a kept one converges at rate
    # 2 lr |v*|: with lr * min(margin, smallest coef) * steps >= 20 both are far
    # below the threshold, so the support and the values must be the closed form's.
    resolved = [
        r for r in rows
        if lr * QUICK.n_steps * min(float(r["margin"]), float(r["smallest_coef"]) if r["smallest_coef"] != "nan" else math.inf) >= 20
    ]  # fmt: skip
    assert len(resolved) >= 3
    for r in resolved:
        assert float(r["error"]) <= 1e-10, r
        assert r["support_thr"] == "True", r
        assert float(r["kkt_thr"]) <= 1e-8, r
    # Elsewhere it is still close: every error is far below the coefficients' scale.
    assert max(float(r["error"]) for r in rows) <= 1e-3


def test_l1_in_the_loss_never_reaches_an_exact_zero(quick_rows):
    l1 = [r for r in quick_rows if r["method"] == "l1" and r["diverged"] == "False"]
    assert l1
    assert all(int(r["n_zero"]) == 0 for r in l1)
    # ... and is not even sparse at the threshold that spred meets, nor L1-optimal.
    assert all(int(r["n_zero_thr"]) == 0 for r in l1)
    assert min(float(r["kkt_thr"]) for r in l1) > 0.1
    # while spred + SGD at the same threshold finds (nearly) every zero of the closed form
    spred_sgd = _select(quick_rows, "spred", "sgd", QUICK.main_lrs["sgd"])
    found = sum(int(r["n_zero_thr"]) for r in spred_sgd) / sum(int(r["n_zero_true"]) for r in spred_sgd)
    assert found >= 0.9


def test_closed_form_rows_are_exact_and_kkt_optimal(quick_rows):
    closed = [r for r in quick_rows if r["method"] == "closed_form"]
    assert len(closed) == QUICK.n_alphas * len(QUICK.seeds)
    assert all(float(r["error"]) == 0 and r["support_exact"] == "True" for r in closed)
    assert max(float(r["kkt"]) for r in closed) <= 1e-12
    # the grid ends above alpha_max: the last alpha's solution is all zero
    top = max(closed, key=lambda r: float(r["alpha"]))
    assert int(top["n_zero_true"]) == QUICK.n_features and float(top["alpha"]) > float(top["alpha_max"])


# --------------------------------------------------------------------------- the maths and the training


def test_orthogonal_design_and_closed_form_equal_sklearn_lasso():
    from sklearn.linear_model import Lasso

    cfg = dataclasses.replace(QUICK, n_alphas=4)
    problem = lasso.make_problem(cfg)
    n, p = problem.X.shape
    np.testing.assert_allclose(problem.X.T @ problem.X / n, np.eye(p), atol=1e-12)
    truth = lasso.soft_threshold(problem.z, problem.alphas)
    assert truth.shape == (cfg.n_alphas, len(cfg.seeds), p)
    for a, alpha in enumerate(problem.alphas):
        ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(problem.X, problem.Y[0])
        np.testing.assert_allclose(truth[a, 0], ref.coef_, atol=1e-10)
        assert np.array_equal(truth[a, 0] == 0, ref.coef_ == 0)


def test_batched_training_equals_one_plain_sparsified_linear_per_alpha_and_lr():
    # The experiment trains all (lr, alpha, seed) at once; each must be exactly the
    # textbook spred run: one nn.Linear(p, 1), sparsify(lam=alpha), SGD(param_groups).
    cfg = dataclasses.replace(QUICK, n_alphas=3, seeds=(3, 4))
    problem = lasso.make_problem(cfg)
    lrs, steps = (0.5, 0.05), 150
    fits = lasso.fit_spred(problem, "sgd", lrs, n_steps=steps)
    X = torch.as_tensor(problem.X)
    for li, lr in enumerate(lrs):
        for a in (0, 2):
            for s in range(len(problem.seeds)):
                with _common.torch_seed(cfg.design_seed):  # every run starts from the same nn.Linear
                    model = nn.Linear(problem.X.shape[1], 1, bias=False, dtype=torch.float64)
                spred.sparsify(model, float(problem.alphas[a]))
                opt = torch.optim.SGD(spred.param_groups(model), lr=lr)
                y = torch.as_tensor(problem.Y[s])
                for _ in range(steps):
                    opt.zero_grad()
                    (0.5 * (y - model(X).squeeze(-1)).pow(2).mean()).backward()
                    opt.step()
                np.testing.assert_allclose(fits[li].coefs[a, s], model.weight.detach().squeeze(0).numpy(), rtol=1e-9, atol=1e-12)


def test_sgd_reaches_exact_float64_zeros_where_the_margin_predicts():
    # Exact zeros come from underflow: |v| ~ exp(-2 lr m t) < 5e-324 once lr*m*t > ~370.
    cfg = lasso.LassoConfig(n_samples=40, n_features=8, n_informative=2, coef_range=(0.3, 0.4), noise=0.05,
                            n_alphas=3, eps=0.5, seeds=(0,))  # fmt: skip
    problem = lasso.make_problem(cfg)
    lr, steps = 1.0, 2500
    (fit,) = lasso.fit_spred(problem, "sgd", [lr], n_steps=steps)
    truth = lasso.soft_threshold(problem.z, problem.alphas)
    margins = problem.alphas[:, None, None] - np.abs(problem.z)[None]  # > 0 exactly where truth == 0
    budget = lr * margins * steps
    exact = (truth == 0) & (budget > 400)
    late = (truth == 0) & (budget > 20) & (budget < 300)
    assert exact.sum() >= 10 and late.sum() >= 1
    assert np.all(fit.coefs[exact] == 0)  # underflowed
    assert np.all(fit.coefs[late] != 0)  # tiny, but not yet an exact zero
    assert np.all(np.abs(fit.coefs[late]) <= np.exp(-budget[late]))
    np.testing.assert_allclose(fit.coefs, truth, atol=1e-12)


def test_l1_baseline_oscillates_at_the_scale_of_lr_times_alpha():
    problem = lasso.make_problem(dataclasses.replace(QUICK, n_alphas=3))
    lr = 0.01
    (fit,) = lasso.fit_l1(problem, "sgd", [lr], n_steps=300)
    truth = lasso.soft_threshold(problem.z, problem.alphas)
    assert not np.any(fit.coefs == 0)
    # subgradient steps of size lr*alpha around 0: the error is of that order, not smaller
    err = np.abs(fit.coefs - truth)[truth == 0].max()
    assert 0.1 * lr * problem.alphas.min() < err < 10 * lr * problem.alphas.max()


def test_a_diverging_learning_rate_is_recorded_not_raised(tmp_path):
    cfg = dataclasses.replace(QUICK, n_alphas=3, methods=("spred", "l1"), optimizers=("sgd",), lrs=(0.1, 100.0),
                              main_lrs={"sgd": 0.1}, n_steps=300)  # fmt: skip
    results = lasso.run_experiment(cfg, tmp_path, plot=False, progress=False)
    for method in ("spred", "l1"):
        bad = [r for r in results.rows if r["method"] == method and r["lr"] == 100.0]
        good = [r for r in results.rows if r["method"] == method and r["lr"] == 0.1]
        assert bad and all(r["diverged"] and r["diverged_step"] >= 0 and math.isnan(r["error"]) for r in bad)
        assert not any(r["diverged"] for r in good)
        assert all(math.isfinite(r["error"]) for r in good)
    summary = {(s["method"], s["lr"]): s for s in results.summary}
    assert summary[("spred", 100.0)]["diverged"] == summary[("spred", 100.0)]["runs"]
    assert math.isinf(summary[("spred", 100.0)]["median_error"])
    assert "diverged" in lasso.summary_table(results.summary, cfg)
    assert (tmp_path / "lasso.csv").is_file() and not (tmp_path / "lasso.png").exists()
    # the saved results read back to the same config and rows (floats exactly)
    cfg_back, rows_back, coefs_back = lasso.load_results(tmp_path)
    assert cfg_back == cfg and len(coefs_back) == len(results.coef_rows)
    for got, want in zip(rows_back, results.rows, strict=True):
        assert got.keys() == want.keys()
        for k in want:
            same_nan = isinstance(want[k], float) and math.isnan(want[k]) and math.isnan(got[k])
            assert same_nan or got[k] == want[k], (k, got[k], want[k])


def test_train_stops_early_once_every_run_diverged():
    problem = lasso.make_problem(dataclasses.replace(QUICK, n_alphas=2))

    class Bar:
        n = 0

        def update(self, k=1):
            self.n += k

    bar = Bar()
    (fit,) = lasso.fit_spred(problem, "sgd", [1e3], n_steps=10_000, bar=bar)
    assert fit.diverged.all() and fit.diverged_step.max() < 100
    assert bar.n == 10_000  # the bar is completed even though training stopped


# --------------------------------------------------------------------------- config and command line


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"n_samples": 2.5}, TypeError, r"The 'n_samples' parameter of LassoConfig must be an int >= 1. Got 2.5"),
        ({"n_steps": -1}, ValueError, r"The 'n_steps' parameter of LassoConfig must be an int >= 0. Got -1"),
        ({"n_alphas": True}, TypeError, r"The 'n_alphas' parameter of LassoConfig must be an int"),
        ({"n_samples": 10, "n_features": 20}, ValueError, r"The 'n_samples' parameter of LassoConfig must be an int >= n_features=20 .* Got 10"),
        ({"n_informative": 200}, ValueError, r"The 'n_informative' parameter of LassoConfig must be an int <= n_features=100. Got 200"),
        ({"coef_range": 1.0}, TypeError, r"The 'coef_range' parameter of LassoConfig must be a pair"),
        ({"coef_range": (0.5, -1.0)}, ValueError, r"The 'coef_range' parameter of LassoConfig must be a pair \(low, high\) of floats > 0. Got \(0.5, -1.0\)"),
        ({"coef_range": (2.0, 1.0)}, ValueError, r"with low <= high. Got \(2.0, 1.0\)"),
        ({"noise": "loud"}, TypeError, r"The 'noise' parameter of LassoConfig must be a float in the range \[0, inf\). Got 'loud'"),
        ({"noise": math.nan}, ValueError, r"The 'noise' parameter of LassoConfig must be a float in the range \[0, inf\). Got nan"),
        ({"eps": 0.0}, ValueError, r"The 'eps' parameter of LassoConfig must be a float in the range \(0, 1\). Got 0.0"),
        ({"eps": 1.0}, ValueError, r"The 'eps' parameter of LassoConfig must be a float in the range \(0, 1\). Got 1.0"),
        ({"methods": "spred"}, TypeError, r"The 'methods' parameter of LassoConfig must be a non-empty tuple"),
        ({"methods": ("spred", "lars")}, ValueError, r"The 'methods' parameter of LassoConfig must be a non-empty tuple of distinct values from .* Got \('spred', 'lars'\)"),
        ({"optimizers": ("adamw",)}, ValueError, r"The 'optimizers' parameter of LassoConfig must be .* values from .* Got \('adamw',\)"),
        ({"lrs": ()}, TypeError, r"The 'lrs' parameter of LassoConfig must be a non-empty tuple of floats"),
        ({"lrs": (0.1, -1.0)}, ValueError, r"The 'lrs' parameter of LassoConfig must be a non-empty tuple of floats > 0. Got \(0.1, -1.0\)"),
        ({"main_lrs": 0.1}, TypeError, r"The 'main_lrs' parameter of LassoConfig must be a mapping"),
        ({"main_lrs": {"sgd": 1.0}}, ValueError, r"The 'main_lrs' parameter of LassoConfig must be a mapping with a learning rate for each optimizer .*'adam'"),
        ({"main_lrs": {"sgd": 0.5, "adam": 0.01}}, ValueError, r"whose learning rates are in lrs=.* Got \{'sgd': 0.5"),
        ({"threshold": -1e-8}, ValueError, r"The 'threshold' parameter of LassoConfig must be a float in the range \[0, inf\). Got -1e-08"),
        ({"seeds": ()}, TypeError, r"The 'seeds' parameter of LassoConfig must be a non-empty tuple of ints"),
        ({"seeds": (0, -1)}, ValueError, r"The 'seeds' parameter of LassoConfig must be a non-empty tuple of ints >= 0. Got \(0, -1\)"),
        ({"seeds": (1, 1)}, ValueError, r"The 'seeds' parameter of LassoConfig must be .* without repeats. Got \(1, 1\)"),
        ({"dtype": "float16"}, ValueError, r"The 'dtype' parameter of LassoConfig must be one of \('float64', 'float32'\). Got 'float16'"),
    ],
)
def test_check_config_names_the_parameter_and_the_value(changes, error, match):
    with pytest.raises(error, match=match):
        lasso.check_config(dataclasses.replace(lasso.LassoConfig(), **changes))


def test_command_line_options_override_quick_and_config_file(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"n_steps": 7, "threshold": 1e-6, "lrs": [0.5, 0.1], "main_lrs": {"sgd": 0.5, "adam": 0.1}}))
    parser = _parser()
    args = parser.parse_args(["run", "lasso", "--quick", "--config", str(tmp_path / "cfg.json"), "--steps", "9", "--seeds", "4", "5", "--dtype", "float32"])
    cfg = lasso.config_from_args(args)
    assert (cfg.n_steps, cfg.threshold, cfg.lrs, cfg.seeds, cfg.dtype) == (9, 1e-6, (0.5, 0.1), (4, 5), "float32")
    assert cfg.n_features == lasso.QUICK["n_features"]  # from --quick
    args = parser.parse_args(["run", "lasso", "--lrs", "0.2", "--main-lrs", "sgd=0.2", "adam=0.2"])
    assert lasso.config_from_args(args).main_lrs == {"sgd": 0.2, "adam": 0.2}


def test_bad_main_lrs_option_is_a_clear_error():
    args = _parser().parse_args(["run", "lasso", "--main-lrs", "sgd:1"])
    with pytest.raises(ValueError, match=r"--main-lrs expects OPTIMIZER=LR items such as sgd=1 adam=0.01. Got 'sgd:1'"):
        lasso.config_from_args(args)
    args = _parser().parse_args(["run", "lasso", "--main-lrs", "sgd=fast"])
    with pytest.raises(ValueError, match=r"Got 'sgd=fast'"):
        lasso.config_from_args(args)


def test_unknown_key_in_config_file_is_rejected(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"n_step": 7}))
    args = _parser().parse_args(["run", "lasso", "--config", str(tmp_path / "cfg.json")])
    with pytest.raises(ValueError, match=r"has unknown keys \['n_step'\]; valid keys are"):
        lasso.config_from_args(args)


def _parser():
    from spred.cli import build_parser

    return build_parser()


def test_importing_spred_and_the_experiment_does_not_import_matplotlib():
    code = "import sys, spred, spred.experiments.lasso; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- shared experiment helpers


def test_resolve_config_reports_a_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ValueError, match=r"The config file '.*nope.json' does not exist"):
        _common.resolve_config(lasso.LassoConfig, config_file=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"The config file '.*bad.json' is not valid JSON"):
        _common.resolve_config(lasso.LassoConfig, config_file=tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"must hold a JSON object of config values; got list"):
        _common.resolve_config(lasso.LassoConfig, config_file=tmp_path / "list.json")


def test_output_folder_creates_folders_and_refuses_a_file(tmp_path):
    with _common.output_folder(tmp_path / "a" / "b", "lasso") as folder:
        assert folder.path.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"The 'out' folder '.*file' exists and is not a folder"):
        with _common.output_folder(tmp_path / "file", "lasso"):
            pass


def test_num_threads_sets_and_restores_and_rejects_bad_values():
    before = torch.get_num_threads()
    with _common.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=r"The 'threads' parameter of spred run must be an int >= 1. Got 0 instead"):
        with _common.num_threads(0):
            pass


def test_torch_seed_is_reproducible_and_leaves_the_global_state_alone():
    state = torch.random.get_rng_state()
    with _common.torch_seed(3):
        a = torch.rand(3)
    with _common.torch_seed(3):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_import_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'spred\[plot\]'"):
        _common.import_matplotlib()


def test_write_csv_round_trips_floats_and_markdown_table_has_one_line_per_row(tmp_path):
    rows = [{"a": 0.1 + 0.2, "b": math.nan, "c": True}, {"a": math.inf, "b": 1e-300, "c": False}]
    back = _read_csv(_common.write_csv(rows, tmp_path / "t.csv"))
    assert float(back[0]["a"]) == 0.1 + 0.2 and math.isnan(float(back[0]["b"])) and back[0]["c"] == "True"
    assert math.isinf(float(back[1]["a"])) and float(back[1]["b"]) == 1e-300
    table = _common.markdown_table(rows, [("A", "a"), ("C", lambda r: "yes" if r["c"] else "no")])
    lines = table.splitlines()
    assert lines[0] == "| A | C |" and len(lines) == 4 and lines[3].endswith("| no |")


@pytest.mark.parametrize(("method", "optimizer"), [("spred", "sgd"), ("l1", "sgd")])
def test_a_diverging_run_never_puts_a_non_finite_value_into_the_model(monkeypatch, method, optimizer):
    # Training goes through spred.train.fit; a diverged run is masked and reset, so fit
    # never sees a non-finite loss or parameter, while the other runs train normally.
    from spred.experiments import _lasso_fit

    finite, real = [], _lasso_fit.fit

    def checked(model, data, **kwargs):
        def check(state):
            finite.append(all(bool(torch.isfinite(p).all()) for p in state.model.parameters()))

        return real(model, data, **{**kwargs, "callbacks": [*kwargs["callbacks"], check]})

    monkeypatch.setattr(_lasso_fit, "fit", checked)
    problem = lasso.make_problem(dataclasses.replace(QUICK, n_alphas=2))
    fitter = lasso.fit_spred if method == "spred" else lasso.fit_l1
    good, bad = fitter(problem, optimizer, [0.01, 1e4], n_steps=101)  # 101 is prime: one step per fit epoch
    assert bad.diverged.all() and np.isnan(bad.coefs).all()
    assert not good.diverged.any() and np.isfinite(good.coefs).all()
    assert len(finite) == 101 and all(finite)
