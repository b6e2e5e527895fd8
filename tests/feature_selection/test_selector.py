"""SpredSelector: exactly k features, exact zeros, the L1 equivalences, the path, errors."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from spred.feature_selection import PathPoint, SpredSelector
from spred.feature_selection._path import _alpha_max, _between, _next_alpha, _top_k

FAST = dict(max_iter=20, refit_iter=20, max_bisect=3, hidden_layer_sizes=(8,))


def _data(n=90, p=25, classes=2, seed=0):
    return make_classification(n_samples=n, n_features=p, n_informative=4, n_redundant=0, n_classes=classes,
                               n_clusters_per_class=1, random_state=seed)  # fmt: skip


# --------------------------------------------------------------------------- exactly k, exact zeros


@pytest.mark.parametrize("model", ["linear", "mlp", "ensemble"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("p", "classes", "k"), [(25, 2, 3), (40, 3, 7), (12, 4, 11)])
def test_exactly_k_features(model, seed, p, classes, k):
    X, y = _data(p=p, classes=classes, seed=seed)
    sel = SpredSelector(model, n_features_to_select=k, random_state=seed, **FAST).fit(X, y)
    assert sel.get_support().sum() == k
    assert sel.transform(X).shape == (len(X), k)


def test_fraction_and_default_number_of_features():
    X, y = _data(p=20)
    assert SpredSelector("linear", n_features_to_select=0.25, random_state=0, **FAST).fit(X, y).get_support().sum() == 5
    assert SpredSelector("linear", random_state=0, **FAST).fit(X, y).get_support().sum() == 10


@pytest.mark.parametrize("refit", [True, False])
@pytest.mark.parametrize("model", ["linear", "mlp", "ensemble"])
def test_dropped_features_are_exact_zeros_in_the_fitted_network(model, refit):
    X, y = _data(p=30, classes=3)
    sel = SpredSelector(model, n_features_to_select=4, refit=refit, random_state=0, **FAST).fit(X, y)
    W = sel.model_.get_submodule(sel.input_layer_).weight.detach()
    assert torch.all(W[:, ~torch.as_tensor(sel.get_support())] == 0)
    assert torch.all(W[:, torch.as_tensor(sel.get_support())].norm(dim=0) > 0)
    # so the prediction cannot depend on a dropped feature
    X2 = X.copy()
    X2[:, ~sel.get_support()] = np.random.default_rng(0).normal(size=(len(X), (~sel.get_support()).sum())) * 100
    np.testing.assert_array_equal(sel.predict_proba(X), sel.predict_proba(X2))


def test_selection_ignores_rows_it_was_not_given():
    X, y = _data(n=120, p=20)
    train = np.arange(90)
    a = SpredSelector("ensemble", n_features_to_select=5, random_state=3, **FAST).fit(X[train], y[train])
    X2 = X.copy()
    X2[90:] = np.random.default_rng(1).permutation(X2[90:]) * 7  # "test rows": shuffled and rescaled
    b = SpredSelector("ensemble", n_features_to_select=5, random_state=3, **FAST).fit(X2[train], y[train])
    np.testing.assert_array_equal(a.get_support(), b.get_support())
    np.testing.assert_array_equal(a.predict(X[90:])[::-1], a.predict(X[90:][::-1]))


def test_same_seed_same_result_and_global_rng_untouched():
    X, y = _data()
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a = SpredSelector("mlp", n_features_to_select=4, random_state=5, **FAST).fit(X, y)
    b = SpredSelector("mlp", n_features_to_select=4, random_state=5, **FAST).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    np.testing.assert_array_equal(a.get_support(), b.get_support())
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


# --------------------------------------------------------------------------- the L1 equivalences (linear model)


@pytest.mark.parametrize("alpha", [0.02, 0.05])
def test_linear_binary_is_l1_logistic_regression(alpha):
    X, y = make_classification(n_samples=200, n_features=30, n_informative=5, n_redundant=0, random_state=1)
    Xs = StandardScaler().fit_transform(X)
    ref = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=1 / (len(y) * alpha), tol=1e-10, max_iter=10000,
                             intercept_scaling=100).fit(Xs, y)  # fmt: skip
    sel = SpredSelector("linear", alpha=alpha, refit=False, max_iter=200, random_state=0).fit(X, y)
    np.testing.assert_array_equal(sel.get_support(), ref.coef_[0] != 0)
    coef = sel.model_.input.weight.detach().numpy()[0]
    np.testing.assert_allclose(coef, ref.coef_[0], atol=2e-3)
    assert sel.path_[-1].kkt < 0.05


def test_linear_regression_is_the_lasso():
    X, y = make_regression(n_samples=150, n_features=40, n_informative=6, noise=5, random_state=0)
    Xs = StandardScaler().fit_transform(X)
    ref = Lasso(alpha=5.0, tol=1e-12, max_iter=100000).fit(Xs, y)
    sel = SpredSelector("linear", task="regression", alpha=5.0, refit=False, max_iter=300, random_state=0).fit(X, y)
    np.testing.assert_array_equal(sel.get_support(), ref.coef_ != 0)
    coef = sel.model_.input.weight.detach().numpy()[0] * sel.y_scale_
    np.testing.assert_allclose(coef, ref.coef_, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(sel.predict(X[:5]), ref.predict(Xs[:5]), rtol=1e-3)


def test_alpha_max_is_the_lasso_alpha_max():
    X, y = make_regression(n_samples=50, n_features=8, random_state=0)
    Xs = StandardScaler().fit_transform(X)
    amax = _alpha_max(Xs, y[:, None])
    assert np.all(Lasso(alpha=amax * 1.0001, tol=1e-12).fit(Xs, y).coef_ == 0)
    assert np.any(Lasso(alpha=amax * 0.95, tol=1e-12).fit(Xs, y).coef_ != 0)


def test_fixed_alpha_above_alpha_max_selects_nothing_and_warns():
    X, y = _data()
    with pytest.warns(UserWarning, match="selected no feature"):
        sel = SpredSelector("linear", alpha=10.0, random_state=0, **FAST).fit(X, y)
    assert sel.get_support().sum() == 0


# --------------------------------------------------------------------------- path, importances, warm start


def test_path_records_and_importances_are_the_strength_at_which_features_leave():
    X, y = _data(p=30, classes=3)
    sel = SpredSelector("ensemble", n_features_to_select=5, random_state=0, **FAST).fit(X, y)
    assert all(isinstance(pt, PathPoint) for pt in sel.path_)
    assert sel.path_[0].stage == "warmup"
    for pt in sel.path_:
        assert pt.n_selected == len(pt.selected)
        assert np.isfinite(pt.train_loss) and np.isnan(pt.val_loss) and pt.kkt >= 0
    main = [pt.alpha for pt in sel.path_ if pt.stage in ("warmup", "path")]
    assert main == sorted(main)
    expected = np.zeros(X.shape[1])
    for pt in sel.path_:
        for j in pt.selected:
            expected[j] = max(expected[j], pt.alpha)
    np.testing.assert_allclose(sel.feature_importances_, expected)
    assert sel.alpha_max_ > 0 and sel.n_iter_ > 0


def test_warm_start_continues_the_path_to_a_smaller_k():
    X, y = _data(p=30)
    sel = SpredSelector("linear", n_features_to_select=8, warm_start=True, random_state=0, **FAST).fit(X, y)
    first = list(sel.path_)
    sel.set_params(n_features_to_select=3).fit(X, y)
    assert sel.get_support().sum() == 3
    assert sel.path_[: len(first)] == first and len(sel.path_) > len(first)
    assert sel.path_[len(first)].stage in ("path", "bisect")  # no new warm-up


def test_early_stopping_uses_a_validation_split():
    X, y = _data(n=120)
    sel = SpredSelector("mlp", n_features_to_select=4, early_stopping=True, random_state=0, **FAST).fit(X, y)
    assert all(np.isfinite(pt.val_loss) for pt in sel.path_)
    assert sel.get_support().sum() == 4


def test_stability_selection():
    X, y = _data(n=100, p=20)
    sel = SpredSelector("linear", n_features_to_select=4, stability_selection=3, random_state=0, **FAST).fit(X, y)
    freq = sel.selection_frequencies_
    assert sel.get_support().sum() == 4 and np.all((freq >= 0) & (freq <= 1))
    assert freq[sel.get_support()].min() >= freq[~sel.get_support()].max()
    assert np.isnan(sel.alpha_) and {pt.subsample for pt in sel.path_} == {0, 1, 2}


# --------------------------------------------------------------------------- prediction, tasks, user networks


def test_classifier_api_with_string_labels():
    X, y = _data(classes=3)
    labels = np.array(["a", "b", "c"])[y]
    sel = SpredSelector("ensemble", n_features_to_select=4, random_state=0, **FAST).fit(X, labels)
    proba = sel.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(sel.predict(X)) <= {"a", "b", "c"} and list(sel.classes_) == ["a", "b", "c"]
    assert sel.score(X, labels) > 0.7


def test_regressor_api():
    X, y = make_regression(n_samples=120, n_features=15, n_informative=3, noise=1.0, random_state=0)
    sel = SpredSelector("mlp", task="regression", n_features_to_select=3, random_state=0, max_iter=50, refit_iter=200).fit(X, y)
    assert not hasattr(sel, "predict_proba")
    assert sel.score(X, y) > 0.9


class _Net(nn.Module):
    def __init__(self, p, out):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(p, 6), nn.Linear(6, out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def test_user_module_and_factory():
    X, y = _data(p=15, classes=3)
    module = _Net(15, 3)
    before = [q.detach().clone() for q in module.parameters()]
    sel = SpredSelector(module, n_features_to_select=4, random_state=0, **FAST).fit(X, y)
    assert sel.input_layer_ == "fc1" and sel.get_support().sum() == 4
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # the parameter is not touched
    assert torch.all(sel.model_.fc1.weight[:, ~torch.as_tensor(sel.get_support())] == 0)
    sel2 = SpredSelector(lambda p, out: nn.Linear(p, out), n_features_to_select=4, random_state=0, **FAST).fit(X, y)
    assert sel2.input_layer_ == "" and sel2.get_support().sum() == 4


# --------------------------------------------------------------------------- errors


def test_errors():
    X, y = _data(p=10)
    with pytest.raises(ValueError, match="got both n_features_to_select=3 and alpha=0.1; set only one"):
        SpredSelector(n_features_to_select=3, alpha=0.1).fit(X, y)
    with pytest.raises(ValueError, match="'n_features_to_select' parameter of SpredSelector is 11, more than the 10 features"):
        SpredSelector(n_features_to_select=11).fit(X, y)
    with pytest.raises(ValueError, match="The 'max_iter' parameter of SpredSelector must be an int in the range"):
        SpredSelector(max_iter=0).fit(X, y)
    with pytest.raises(TypeError, match=r"The 'hidden_layer_sizes' parameter of SpredSelector must be an array-like. Got 8 instead"):
        SpredSelector(hidden_layer_sizes=8).fit(X, y)
    with pytest.raises(TypeError, match=r"'hidden_layer_sizes' parameter of SpredSelector must be a tuple of ints. Got \(1.5,\) instead"):
        SpredSelector(hidden_layer_sizes=(1.5,)).fit(X, y)
    with pytest.raises(ValueError, match=r"non-empty tuple of positive ints for model='mlp'. Got \(\) instead"):
        SpredSelector("mlp", hidden_layer_sizes=()).fit(X, y)
    with pytest.raises(ValueError, match="stability_selection=3 needs refit=True"):
        SpredSelector(stability_selection=3, refit=False).fit(X, y)
    with pytest.raises(ValueError, match=r"The 'device' parameter of SpredSelector must be the name of a torch device \('cpu', 'cuda', 'cuda:1', ...\). Got 'gpu9' instead"):
        SpredSelector(device="gpu9").fit(X, y)
    with pytest.raises(ValueError, match=r"needs at least 2 classes in y; got 1 class"):
        SpredSelector().fit(X, np.zeros(len(y)))
    with pytest.raises(TypeError, match="The 'model' callable of SpredSelector must return a torch.nn.Module. Got int"):
        SpredSelector(lambda p, out: 3).fit(X, y)


class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 3), nn.Linear(10, 3)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_user_module_errors():
    X, y = _data(p=10, classes=3)
    two = _TwoReaders()
    with pytest.raises(ValueError, match=r"the model has 2 nn.Linear layers \(\['a', 'b'\]\) with that many inputs. Pass input_layer="):
        SpredSelector(two, **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"names 'c', which is not a submodule"):
        SpredSelector(two, input_layer="c", **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"returns 2 outputs per sample; this task needs 3"):
        SpredSelector(nn.Linear(10, 2), **FAST).fit(X, y)


def test_non_finite_loss_raises_floating_point_error():
    X, y = _data(p=6)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(FloatingPointError, match="Lower lr .* or standardise the features"):
        SpredSelector("linear", standardize=False, n_features_to_select=2, **FAST).fit(X * 1e39, y)


# --------------------------------------------------------------------------- path helpers (pure)


def test_next_alpha_is_a_clipped_secant_step():
    assert _next_alpha([1.0], [100], 10) == pytest.approx(3.0)  # one point: the largest step
    assert _next_alpha([1.0, 2.0], [100, 90], 10) == pytest.approx(6.0)  # slow fall: clipped at 3x
    assert _next_alpha([1.0, 2.0], [100, 11], 10) == pytest.approx(2.5)  # close to k: clipped at 1.25x
    assert _next_alpha([1.0, 2.0], [80, 80], 10) == pytest.approx(6.0)  # plateau


def test_between_stays_inside_the_bracket():
    for lo, hi in [((1.0, 60), (2.0, 30)), ((1.0, 51), (4.0, 2)), ((1.0, 51), (1.1, 51))]:
        mid = _between(lo, hi, 50)
        assert lo[0] < mid < hi[0]
    assert _between((0.0, 100), (2.0, 5), 10) == pytest.approx(0.2)


def test_top_k_ranks_by_importance_then_norm():
    importance = np.array([0.5, 1.0, 1.0, 0.2, 1.0])
    norms = np.array([9.0, 0.1, 0.3, 9.0, 0.2])
    assert np.flatnonzero(_top_k(importance, norms, 2)).tolist() == [2, 4]
    assert np.flatnonzero(_top_k(importance, norms, 4)).tolist() == [0, 1, 2, 4]


def test_no_warning_on_a_normal_fit():
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpredSelector("linear", n_features_to_select=3, random_state=0, **FAST).fit(X, y)


def test_warm_start_with_the_same_k_keeps_the_selection():
    X, y = _data(p=20)
    sel = SpredSelector("linear", n_features_to_select=4, warm_start=True, random_state=0, **FAST).fit(X, y)
    support, n_points = sel.get_support().copy(), len(sel.path_)
    sel.fit(X, y)
    np.testing.assert_array_equal(sel.get_support(), support)
    assert len(sel.path_) == n_points


# --------------------------------------------------------------------------- issue 19: refused inputs


@pytest.mark.parametrize("name", ["n_features_to_select", "max_iter", "refit_iter", "batch_size", "n_iter_no_change", "stability_selection"])
def test_a_bool_is_not_an_int(name):
    # scikit-learn's Interval(Integral) takes True for 1: n_features_to_select=True selected one feature
    X, y = _data(p=10)
    with pytest.raises(TypeError, match=rf"The '{name}' parameter of SpredSelector must be .*\. Got True of type bool instead"):
        SpredSelector("linear", **{**FAST, name: True}).fit(X, y)


@pytest.mark.parametrize("value", [3.0, 0.1, -2.5e6])
def test_a_constant_regression_target_is_refused(value):
    # a constant y used to select k arbitrary features (alpha_max is 0, every feature is equally useless)
    X, _ = make_regression(n_samples=60, n_features=8, random_state=0)
    y = np.full(60, value)
    with pytest.raises(ValueError, match=r"needs a target that varies: y is constant \(.* on 60 samples\)"):
        SpredSelector("linear", task="regression", n_features_to_select=2, **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"y is constant \(.* on 54 samples used for training\)"):
        SpredSelector("linear", task="regression", early_stopping=True, n_features_to_select=2, **FAST).fit(X, y)


def test_a_constant_class_target_is_refused():
    X, _ = _data(p=8)
    with pytest.raises(ValueError, match=r"needs at least 2 classes in y; got 1 class \(\['a'\]\)"):
        SpredSelector("linear", n_features_to_select=2, **FAST).fit(X, np.full(len(X), "a"))


# --------------------------------------------------------------------------- issue 18: one rule, one loop


def test_the_selection_decision_is_the_zero_rule_and_the_kkt_rule():
    from spred.feature_selection._path import _KKT_TOL, selected
    from spred.nn._rules import group_norms, kkt_zero, relative_threshold, zero_mask, zero_units

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 40, generator=gen, dtype=torch.float64) * torch.logspace(-6, 0, 40, dtype=torch.float64)
    W[:, 3] = 0.0
    G = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    norms, grads = group_norms(W, "in").reshape(-1), group_norms(G, "in").reshape(-1)
    for threshold in (0.0, 1e-3, 0.2):
        thr = relative_threshold(norms, threshold)
        zero = zero_units(W, 1, thr, groups="in")  # the rule structured pruning applies to input columns
        assert np.array_equal(selected(norms.numpy(), grads.numpy(), 0.0, threshold), ~zero.numpy())
        alpha = float(grads.median())
        leaving = kkt_zero(norms, grads, (1 - _KKT_TOL) * alpha, float("inf"))
        expect = ~(zero_mask(norms, None, 0, thr) | leaving)
        got = selected(norms.numpy(), grads.numpy(), alpha, threshold)
        assert np.array_equal(got, expect.numpy()) and 0 < got.sum() < (~zero).sum()
    assert not selected(np.zeros(5), np.ones(5), 1.0, 1e-3).any()  # all-zero: nothing selected


def test_every_path_stage_is_one_call_of_train_fit_without_history(monkeypatch):
    import spred.feature_selection._trainer as trainer

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    real = trainer.fit
    monkeypatch.setattr(trainer, "fit", spy)
    X, y = _data()
    sel = SpredSelector("linear", n_features_to_select=3, refit=False, random_state=0, **FAST).fit(X, y)
    assert len(calls) == len(sel.path_) and all(c["history"] is False for c in calls)
    assert [c["epochs"] for c in calls] == [pt.n_epochs for pt in sel.path_]


def test_verbose_levels_of_the_log(caplog):
    X, y = _data(p=10)
    for verbose, selector_line, epoch_lines in ((0, False, False), (1, True, False), (2, True, True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="spred"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SpredSelector("linear", n_features_to_select=3, verbose=verbose, random_state=0, **FAST).fit(X, y)
        assert ("features at alpha=" in caplog.text) == selector_line, verbose
        assert ("train loss" in caplog.text) == epoch_lines, verbose
    assert logging.getLogger("spred.train").level == logging.NOTSET  # restored
