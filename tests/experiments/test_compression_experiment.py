"""`spred run compression`: the pipeline and the pruning baselines.

Fast tests run the whole pipeline on a tiny MLP and synthetic data (every method end
to end, the compression ratio each reaches, zeros that stay zero, parameters only in
the ratio, the files written); the baselines are checked on their own properties
(budgets, dead-unit removal keeps the function, SynFlow is data-free, STR's zeros).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math

import pytest
import torch
from torch import nn

import spred
from spred.compress import count_parameters, prune_channels
from spred.experiments import _baselines_prune as bp
from spred.experiments import _common
from spred.experiments import _compression_structured as S
from spred.experiments import _compression_unstructured as U
from spred.experiments import compression as C
from spred.models import LeNet5Caffe, LeNet300100, ResNet20, SmallVGG


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with _common.num_threads(1):
        yield


def _tiny(seed: int = 0) -> nn.Module:
    with _common.torch_seed(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _synthetic(n: int = 512, seed: int = 0) -> C.Data:
    """Three classes that depend on 5 of 20 features (images of 1 x 4 x 5)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2 * n, 1, 4, 5, generator=g)
    logits = X.flatten(1)[:, :5] @ torch.randn(5, 3, generator=g)
    y = logits.argmax(1)
    return C.Data(X[:n], y[:n], X[n:], y[n:])


TINY = C.CompressionConfig(
    models=("lenet300100",), ratios={"lenet300100": (4.0, 10.0)}, epochs=4, finetune_epochs=2, batch_size=32,
    lrs={m: 1e-2 for m in C.METHODS}, gmp_every=5, synflow_rounds=10, structured=False, seeds=(0,),
)  # fmt: skip


@pytest.fixture
def tiny_models(monkeypatch):
    """`lenet300100` builds the tiny MLP; the structured LeNet-5 stays real."""
    real = C.build_model

    def build(name, seed):
        return _tiny(seed) if name == "lenet300100" else real(name, seed)

    monkeypatch.setattr(C, "build_model", build)


@pytest.fixture(scope="module")
def tiny_rows():
    """Every method at 4x and 10x on the tiny MLP (about 10 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "build_model", lambda name, seed: _tiny(seed))
        return C.run_unstructured(C.check_config(TINY), "lenet300100", 0, _synthetic())


# --------------------------------------------------------------------------- the pipeline


def test_every_method_runs_and_reaches_its_target_ratio(tiny_rows):
    assert tuple(U.RUNNERS) == C.METHODS  # the runner table is the method list, in its order
    total = count_parameters(_tiny())
    methods = [r["method"] for r in tiny_rows]
    assert methods == ["dense"] + [m for r in TINY.ratios["lenet300100"] for m in C.METHODS]
    for row in tiny_rows[1:]:
        budget = bp.max_nonzero(total, row["target_ratio"])
        assert row["nonzero"] <= budget, row
        assert row["compression_ratio"] >= row["target_ratio"]
        assert row["compression_ratio"] <= 1.25 * row["target_ratio"], row  # the budget is used, not wasted
        assert 0.0 <= row["test_error"] <= 1.0 and math.isfinite(row["wall_s"])
        assert row["epochs"] == TINY.epochs + TINY.finetune_epochs  # equal epochs for every method
        assert row["total"] == total and set(C.CSV_COLUMNS) == set(row)
    assert tiny_rows[0]["compression_ratio"] == 1.0
    # they learn this easy problem (3 classes: chance is ~2/3 error)
    assert tiny_rows[0]["test_error"] < 0.15
    assert sorted(r["test_error"] for r in tiny_rows[1:] if r["target_ratio"] == 4.0)[1] < 0.2
    l1 = {r["target_ratio"]: r["lam"] for r in tiny_rows if r["method"] == "l1"}
    sp = {r["target_ratio"]: r["lam"] for r in tiny_rows if r["method"] == "spred"}
    assert l1 == sp  # the L1 baseline uses spred's final lam


def test_training_cost_is_recorded(tiny_rows):
    by = {(r["method"], r["target_ratio"]): r for r in tiny_rows}
    assert by[("synflow", 4.0)]["prune_steps"] == TINY.synflow_rounds
    assert by[("synflow", 4.0)]["train_epochs"] == 0 and by[("synflow", 4.0)]["finetune_epochs"] == 6
    assert by[("magnitude", 4.0)]["prune_steps"] == 1
    assert by[("gmp", 10.0)]["prune_steps"] > 1
    assert by[("magnitude", 4.0)]["train_epochs"] == TINY.epochs  # the shared dense training is its training phase
    assert all(r["wall_s"] > 0 for r in by.values())
    assert by[("spred", 10.0)]["prune_steps"] in (0, 1)


def test_zeros_stay_zero_through_masked_finetuning():
    data = _synthetic()
    model = _tiny()
    cfg = C.check_config(TINY)
    ctx = U._Context(cfg, "lenet300100", 0, data, count_parameters(model), bp.find_chain(model, data.example), False)
    budget = bp.max_nonzero(ctx.total, 6.0)
    bp.magnitude_prune(model, budget, ctx.chain)
    bp.remove_dead_units(model, ctx.chain, data.example)
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    row = U._finish(ctx, model, "magnitude", 6.0, train_epochs=0, finetune_epochs=3, seconds=0.0, prune_steps=1)
    changed = False
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            assert bool((p[zeros[n]] == 0).all()), n
        else:  # a removed unit's bias stays 0; the other biases train
            rows = dict(model.named_parameters())[n.replace("bias", "weight")].flatten(1).ne(0).any(1)
            assert bool((p[~rows & zeros[n]] == 0).all()), n
        changed |= not torch.equal(p, before[n])
    assert changed  # it did train
    assert row["nonzero"] == count_parameters(model, nonzero=True) <= budget


def test_compression_ratio_counts_parameters_only_never_buffers():
    data = C.Data(torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,)), torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,)))
    model = SmallVGG(in_channels=3, widths=(4, 8), convs_per_stage=1)  # BatchNorm: buffers, and not a chain
    assert bp.find_chain(model, data.example) is None
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    assert n_buffers > 0
    cfg = dataclasses.replace(C.check_config(TINY), batch_size=32)
    ctx = U._Context(cfg, "smallvgg", 0, data, count_parameters(model), None, False)
    assert ctx.total == n_params
    bp.magnitude_prune(model, bp.max_nonzero(ctx.total, 5.0), None)
    row = U._finish(ctx, model, "magnitude", 5.0, train_epochs=0, finetune_epochs=1, seconds=0.0, prune_steps=1)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert row["nonzero"] == nonzero and row["compression_ratio"] == pytest.approx(n_params / nonzero)
    assert row["compression_ratio"] == pytest.approx(spred.sparsity_report(model).compression_ratio)
    assert row["compression_ratio"] >= 5.0


def test_run_experiment_writes_csv_figure_config_and_table(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setattr(C, "load_data", lambda dataset, **kw: _images() if dataset == "mnist" else None)
    cfg = dataclasses.replace(TINY, ratios={"lenet300100": (5.0,)}, methods=("spred", "magnitude"), structured=True,
                              structured_epochs=1, structured_finetune_epochs=1, structured_sparsity=0.5, latency_repeats=2,
                              structured_lam_exponents=(0.5,))  # fmt: skip
    monkeypatch.setattr(C, "build_model", lambda name, seed: _tiny_784(seed) if name == "lenet300100" else LeNet5Caffe())
    res = C.run_experiment(cfg, tmp_path, progress=False)
    for name in ("compression.csv", "compression_summary.csv", "compression_structured.csv", "compression.png", "summary.md", "config.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "compression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "compression.csv")))
    assert [r["method"] for r in rows] == ["dense", "spred", "magnitude"] and list(rows[0]) == list(C.CSV_COLUMNS)
    structured = list(csv.DictReader(open(tmp_path / "compression_structured.csv")))
    assert [r["method"] for r in structured] == ["spred_group", "filter_norm"] and list(structured[0]) == list(C.STRUCTURED_COLUMNS)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["spred_version"] == spred.__version__ and config["config"]["ratios"] == {"lenet300100": [5.0]}
    text = (tmp_path / "summary.md").read_text()
    assert "| model | target | method |" in text and "spred at 5.0x" not in text and "lenet300100 at 5x" in text
    assert "| method | target | lam exponent | seed | widths |" in text and "| spred (groups) | 50% | 0.5 | 0 |" in text
    assert res.summary and {r["method"] for r in res.summary} == {"dense", "spred", "magnitude"}


def test_structured_only_run_writes_its_csv_figure_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "load_data", lambda dataset, **kw: _images())
    cfg = dataclasses.replace(TINY, models=(), structured=True, structured_epochs=1, structured_finetune_epochs=1,
                              structured_sparsity=(0.5,), structured_lam_exponents=(0.5,), latency_repeats=2)  # fmt: skip
    res = C.run_experiment(cfg, tmp_path, progress=False)
    assert not res.rows and [r["method"] for r in res.structured] == ["spred_group", "filter_norm"]
    assert (tmp_path / "compression_structured.csv").is_file() and not (tmp_path / "compression.csv").exists()
    assert (tmp_path / "compression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Unstructured" not in (tmp_path / "summary.md").read_text()


def _images(n: int = 256) -> C.Data:
    g = torch.Generator().manual_seed(1)
    X = torch.rand(2 * n, 1, 28, 28, generator=g)
    y = (X[:, 0, 10:18, 10:18].mean((1, 2)) * 30).long() % 10
    return C.Data(X[:n], y[:n], X[n:], y[n:])


def _tiny_784(seed):
    with _common.torch_seed(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


# --------------------------------------------------------------------------- the output folder (issue 19, items 1 and 6)

SMALL = dataclasses.replace(TINY, ratios={"lenet300100": (5.0,)}, methods=("spred",), dense=False, epochs=1, finetune_epochs=1)


@pytest.fixture
def small_run(monkeypatch):
    """A run of one method on the tiny 784-input MLP (under a second); ``calls`` records every data load."""
    calls: list = []
    monkeypatch.setattr(C, "load_data", lambda dataset, **kw: calls.append(dataset) or _images())
    monkeypatch.setattr(C, "build_model", lambda name, seed: _tiny_784(seed))
    monkeypatch.setattr(C, "_warm_up", lambda device: calls.append("warm-up"))

    def run(out, **changes):
        return C.run_experiment(dataclasses.replace(SMALL, **changes), out, plot_figure=False, progress=False)

    run.calls = calls
    return run



def test_a_folder_with_the_users_files_is_refused_before_any_work_and_left_untouched(tmp_path, small_run, spred_cli):
    (tmp_path / "compression.csv").write_text("my,data\n")
    (tmp_path / "summary.md").write_text("my notes")
    code, err = spred_cli("run", "compression", "--quick", "--out", str(tmp_path))
    assert code == 2 and err.startswith("spred: error: The 'out' folder") and "was not written by spred run" in err
    assert len(err.strip().splitlines()) == 1 and small_run.calls == []  # refused before the warm-up and the data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compression.csv", "summary.md"]
    assert (tmp_path / "compression.csv").read_text() == "my,data\n" and (tmp_path / "summary.md").read_text() == "my notes"
    with pytest.raises(ValueError, match=r"The 'out' folder '.*' is not empty and was not written by spred run \(it holds compression.csv"):
        small_run(tmp_path)
    assert small_run.calls == []


def test_results_are_read_back_through_the_manifest(tmp_path, small_run):
    res = small_run(tmp_path, seeds=(0, 1))
    assert set(res.files) == {"runs", "summary", "summary_md", "config"} and all(p.parent == tmp_path and p.is_file() for p in res.files.values())
    cfg, rows, structured = C.load_results(tmp_path)
    assert cfg == C.check_config(dataclasses.replace(SMALL, seeds=(0, 1))) and structured == []
    assert [(r["method"], r["seed"]) for r in rows] == [("spred", 0), ("spred", 1)]
    assert rows[0]["compression_ratio"] == res.rows[0]["compression_ratio"]  # exact round trip
    assert C.summarise(rows)[0]["n_seeds"] == 2
    with (tmp_path / "compression.csv").open("a") as fh:
        fh.write("lenet300100,spred,7\n")  # a row of another run appended by hand
    with pytest.raises(ValueError, match=r"are mixed: 'compression.csv' is not the file that run \w+ wrote"):
        C.load_results(tmp_path)
    with pytest.raises(ValueError, match=r"holds no results of 'spred run compression'"):
        C.load_results(tmp_path / "nothing")


def test_an_interrupted_run_leaves_the_previous_set_and_a_rerun_replaces_it(tmp_path, small_run, monkeypatch):
    small_run(tmp_path, seeds=(0,))
    real = C.run_unstructured

    def interrupt_on_seed_2(cfg, model, seed, data, **kw):
        if seed == 2:
            raise KeyboardInterrupt
        return real(cfg, model, seed, data, **kw)

    monkeypatch.setattr(C, "run_unstructured", interrupt_on_seed_2)
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path, seeds=(1, 2))  # seed 1 finished, its CSV staged
    cfg, rows, _ = C.load_results(tmp_path)  # the previous, complete set, not seed 1's partial CSV
    assert cfg.seeds == (0,) and {r["seed"] for r in rows} == {0}
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".spred-tmp-")]
    assert len(staged) == 1 and {r["seed"] for r in _common.read_csv(staged[0] / "compression.csv")} == {1}
    small_run(tmp_path, seeds=(3,))
    assert C.load_results(tmp_path)[0].seeds == (3,) and not any(p.name.startswith(".spred-tmp-") for p in tmp_path.iterdir())


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path, small_run, monkeypatch, spred_cli):
    import threading

    started, release = threading.Event(), threading.Event()

    def slow(dataset, **kw):
        started.set()
        release.wait(30)
        return _images()

    monkeypatch.setattr(C, "load_data", slow)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(small_run(tmp_path)))
    thread.start()
    try:
        assert started.wait(30)
        code, err = spred_cli("run", "compression", "--quick", "--out", str(tmp_path))
    finally:
        release.set()
        thread.join(60)
    assert code == 2 and "is in use by another spred run (pid" in err and len(err.strip().splitlines()) == 1
    cfg, rows, _ = C.load_results(tmp_path)  # the first run finished, its set whole
    assert first and cfg.epochs == 1 and [r["seed"] for r in rows] == [0]


# --------------------------------------------------------------------------- structured


def test_structured_prunes_to_a_smaller_module_with_equal_outputs(tiny_models):
    cfg = dataclasses.replace(C.check_config(TINY), structured_epochs=6, structured_finetune_epochs=1, structured_sparsity=(0.3, 0.6),
                              latency_repeats=3, lam=1e-4, structured_lam_exponents=(0.0, 1.0))  # fmt: skip
    rows = C.run_structured(cfg, 0, _images())
    runs = [(0.3, 0.0), (0.3, 1.0), (0.6, 0.0), (0.6, 1.0)]
    assert [(r["method"], r["target_sparsity"], r["lam_exponent"]) for r in rows] == [("spred_group", *k) for k in runs] + [("filter_norm", *k) for k in runs]
    for gentle, steep in zip(rows[:2], rows[2:4]):  # a higher target removes more
        assert steep["params_pruned"] < gentle["params_pruned"] and steep["flop_ratio"] >= gentle["flop_ratio"]
    for spred_row, baseline in zip(rows[:4], rows[4:]):
        assert spred_row["params_pruned"] < spred_row["params"] and spred_row["flop_ratio"] > 1
        assert spred_row["test_error"] == pytest.approx(spred_row["test_error_collapsed"], abs=1e-3)
        assert baseline["widths_after"] == spred_row["widths_after"]  # the baseline is pruned to the same widths
        assert baseline["widths_nonzero"] == spred_row["widths_nonzero"]
    for r in rows:
        assert r["round_to"] is None and r["widths_nonzero"] == r["widths_after"]  # exact widths: every kept channel is nonzero
        assert r["max_abs_diff_fp64"] <= 1e-10  # the pruned module computes the same function
        assert r["max_rel_diff"] <= 1e-5 and r["max_abs_diff"] <= 1e-4
        # each float32 module against the collapsed function in float64: float32 rounding only, the same size for both
        assert 0 <= r["fp32_error_pruned"] <= 1e-4 and 0 <= r["fp32_error_collapsed"] <= 1e-4
        assert r["max_abs_diff"] <= r["fp32_error_pruned"] + r["fp32_error_collapsed"] + 1e-12
        assert set(r) == set(C.STRUCTURED_COLUMNS)
        for layout in ("", "_cl"):  # NCHW and channels-last timings of the same pair
            assert r[f"speedup_b256{layout}"] == pytest.approx(r[f"latency_b256{layout}_ms"] / r[f"latency_b256{layout}_pruned_ms"])
            assert r[f"speedup_b1{layout}"] > 0


def test_structured_smallvgg_loses_whole_channels_and_keeps_its_function(monkeypatch):
    net = C.build_model("smallvgg", 0)  # the real one: MNIST input, no BatchNorm, every conv with a bias
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128] and convs[0].in_channels == 1
    assert all(c.bias is not None for c in convs) and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    monkeypatch.setattr(C, "build_model", lambda name, seed: SmallVGG(in_channels=1, widths=(4, 8), batch_norm=False))
    cfg = dataclasses.replace(C.check_config(TINY), models=(), structured=True, structured_model="smallvgg", structured_epochs=6,
                              structured_finetune_epochs=1, structured_sparsity=(0.5,), structured_lam_exponents=(0.5,),
                              latency_repeats=2, lam=1e-2)  # fmt: skip
    rows = C.run_structured(cfg, 0, _images())
    assert [r["method"] for r in rows] == ["spred_group", "filter_norm"]
    for r in rows:
        assert r["model"] == "smallvgg" and r["widths_before"] == "4-4-8-8" and r["widths_after"] != r["widths_before"]
        assert r["params_pruned"] < r["params"] and r["flop_ratio"] > 1
        assert r["max_abs_diff_fp64"] <= 1e-10 and r["max_abs_diff"] <= 1e-5


def test_structured_round_to_keeps_multiples_of_n_channels_and_the_function():
    data = _images(64)
    cfg = dataclasses.replace(C.check_config(TINY), structured_model="smallvgg", finetune_epochs=0, latency_repeats=2, round_to=4)
    collapsed = SmallVGG(in_channels=1, widths=(6, 10), batch_norm=False)
    hidden = S.grouped_layers(collapsed)
    zero = {0: [0, 1, 2], 1: [4], 2: [0, 2, 4, 6, 8], 3: list(range(8))}  # nonzero 3, 5, 5, 2 of 6, 6, 10, 10
    modules = dict(collapsed.named_modules())
    with torch.no_grad():
        for i, rows in zero.items():
            modules[hidden[i]].weight[rows] = 0.0
            modules[hidden[i]].bias[rows] = 0.0
    ctx = U._Context(cfg, "smallvgg", 0, data, count_parameters(collapsed), None, False)
    row = {**S._structured_row(ctx, "spred_group", 0.5, collapsed, 0.0, 0.0, 1, hidden), "lam_exponent": 0.5}
    # 3 -> 4; 5 -> 8 > 6, so all 6; 5 -> 8; 2 -> 4: multiples of 4 or the full width, the fewest zero channels kept
    assert (row["round_to"], row["widths_nonzero"], row["widths_after"]) == (4, "3-5-5-2", "4-6-8-4")
    assert row["max_abs_diff_fp64"] <= 1e-10 and row["max_abs_diff"] <= 1e-5  # the kept zero channels change nothing
    # the kept zero channels are silenced (zero bias, the next layer's weights that read them zeroed): the exact widths' count
    assert row["params_pruned"] == count_parameters(prune_channels(collapsed, data.example)[0], nonzero=True)
    assert row["params_pruned"] < count_parameters(collapsed, nonzero=True)
    baseline = S._filter_norm(ctx, SmallVGG(in_channels=1, widths=(6, 10), batch_norm=False), 0.0, hidden, row)
    assert (baseline["widths_nonzero"], baseline["widths_after"]) == ("3-5-5-2", "4-6-8-4")  # as many nonzero channels as spred
    assert "-> 3-5-5-2 nonzero, 4-6-8-4 kept (multiples of 4)" in C.structured_table([row, baseline])


def test_structured_lam_is_weighted_by_output_positions():
    lams = S._layer_lams(LeNet5Caffe(), ["features.0", "features.2", "classifier.1"], 1e-3, 0.5, torch.zeros(2, 1, 28, 28))
    assert lams == pytest.approx({"features.0.weight": 1e-3 * 24, "features.2.weight": 1e-3 * 8, "classifier.1.weight": 1e-3})
    flat = S._layer_lams(LeNet5Caffe(), ["features.0", "classifier.1"], 1e-3, 0.0, torch.zeros(2, 1, 28, 28))
    assert flat == {"features.0.weight": 1e-3, "classifier.1.weight": 1e-3}


# --------------------------------------------------------------------------- budgets and dead units


def test_find_chain_accepts_lenets_and_refuses_residual_and_batchnorm_networks():
    x = torch.zeros(2, 1, 28, 28)
    assert bp.find_chain(LeNet300100(), x) == bp.Chain(("1.weight", "3.weight", "5.weight"), (1, 1))
    chain = bp.find_chain(LeNet5Caffe(), x)
    assert chain.names == ("features.0.weight", "features.2.weight", "classifier.1.weight", "classifier.3.weight")
    assert chain.expansion == (1, 16, 1)
    assert bp.find_chain(ResNet20(), torch.zeros(2, 3, 32, 32)) is None
    assert bp.find_chain(SmallVGG(in_channels=1), x) is None
    padded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    assert bp.find_chain(padded, x) is None


@pytest.mark.parametrize("density", [0.002, 0.01, 0.05])
def test_remove_dead_units_keeps_the_function_and_matches_the_count(density):
    torch.manual_seed(0)
    model = LeNet5Caffe()
    x = torch.rand(16, 1, 28, 28)
    chain = bp.find_chain(model, x)
    masks = {n: torch.rand_like(m.weight) < density for n, m in bp.prunable_weights(model).items()}
    bp.apply_masks(model, masks)
    predicted = bp.count_nonzero_after_cleanup(model, masks, chain)
    with torch.no_grad():
        ref = model(x)
        removed = bp.remove_dead_units(model, chain, x)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert sum(removed.values()) > 0
    assert count_parameters(model, nonzero=True) == predicted


def test_budget_masks_keeps_the_most_weights_that_fit():
    model = LeNet300100()
    chain = bp.find_chain(model, torch.zeros(2, 784))
    scores = {n: m.weight.detach().abs() for n, m in bp.prunable_weights(model).items()}
    budget = bp.max_nonzero(count_parameters(model), 50)
    masks = bp.budget_masks(model, scores, budget, chain)
    k = sum(int(m.sum()) for m in masks.values())
    assert bp.count_nonzero_after_cleanup(model, masks, chain) <= budget
    assert bp.count_nonzero_after_cleanup(model, bp.top_k_masks(scores, k + 1), chain) > budget
    # the kept weights are the k largest
    kept = torch.cat([s[masks[n]] for n, s in scores.items()])
    dropped = torch.cat([s[~masks[n]] for n, s in scores.items()])
    assert kept.min() >= dropped.max()


def test_budget_masks_refuses_a_budget_below_the_fixed_parameters():
    model = LeNet300100()
    scores = {n: m.weight.detach().abs() for n, m in bp.prunable_weights(model).items()}
    with pytest.raises(ValueError, match=r"A budget of 100 nonzero parameters is smaller than the parameters that are never pruned \(410"):
        bp.budget_masks(model, scores, 100, None)


@pytest.mark.parametrize("ratio", [0.5, float("inf"), True, "12"])
def test_max_nonzero_refuses_bad_ratios(ratio):
    with pytest.raises(ValueError, match="The compression 'ratio' must be a finite number >= 1"):
        bp.max_nonzero(1000, ratio)


def test_keep_masks_freezes_zeros_and_removed_units():
    model = _tiny()
    with torch.no_grad():
        model[1].weight[3] = 0.0
        model[1].bias[3] = 0.0
        model[1].weight[4] = 0.0  # a unit without weights but with a nonzero bias keeps training that bias
        model[1].weight[0, :5] = 0.0
    masks = bp.keep_masks(model)
    assert torch.equal(masks["1.weight"], model[1].weight != 0)
    assert not masks["1.bias"][3] and masks["1.bias"][4] and masks["1.bias"][0]


# --------------------------------------------------------------------------- baselines


def test_magnitude_prune_is_global_top_k_through_torch_prune():
    model = LeNet300100()
    original = {n: m.weight.detach().clone() for n, m in bp.prunable_weights(model).items()}
    budget = bp.max_nonzero(count_parameters(model), 20)
    masks = bp.magnitude_prune(model, budget, None)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # prune.remove made it permanent
    k = sum(int(m.sum()) for m in masks.values())
    assert k == budget - 410  # no chain: every bias counts
    threshold = torch.cat([w.abs().flatten() for w in original.values()]).topk(k).values.min()
    for n, m in bp.prunable_weights(model).items():
        torch.testing.assert_close(m.weight, original[n] * (original[n].abs() >= threshold))


def test_gradual_magnitude_pruning_follows_the_cubic_schedule_to_the_budget():
    model = LeNet300100()
    budget = bp.max_nonzero(count_parameters(model), 30)
    gmp = bp.GradualMagnitudePruning(model, budget, start=0, end=10, every=2)
    kept = []
    for _ in range(12):
        gmp()
        kept.append(gmp.kept())
    assert all(a >= b for a, b in zip(kept, kept[1:]))  # masks only shrink
    assert kept[0] == sum(m.weight.numel() for m in bp.prunable_weights(model).values())
    assert gmp.n_prunes == 5
    masks = gmp.remove()
    assert sum(int(m.sum()) for m in masks.values()) + 410 <= budget
    assert not hasattr(model[1], "weight_orig")
    # the first steps remove more than the last ones (cubic)
    drops = [a - b for a, b in zip(kept, kept[1:]) if a != b]
    assert drops[0] > drops[-1]


def test_gradual_magnitude_pruning_checks_its_schedule():
    with pytest.raises(ValueError, match="GradualMagnitudePruning needs start <= end and every >= 1. Got start=5, end=2"):
        bp.GradualMagnitudePruning(_tiny(), 100, start=5, end=2, every=1)


def test_synflow_is_data_free_within_budget_and_leaves_the_model_alone():
    model = LeNet300100()
    chain = bp.find_chain(model, torch.zeros(2, 784))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    budget = bp.max_nonzero(count_parameters(model), 40)
    a = bp.synflow_masks(model, torch.zeros(4, 784), budget, chain, rounds=10)
    b = bp.synflow_masks(model, torch.randn(4, 784), budget, chain, rounds=10)
    assert all(torch.equal(a[n], b[n]) for n in a)  # only the shape of the example is used
    assert bp.count_nonzero_after_cleanup(model, a, chain) <= budget
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # iterative pruning differs from one-shot scoring (the point of SynFlow's 100 rounds)
    one = bp.synflow_masks(model, torch.zeros(4, 784), budget, chain, rounds=1)
    assert any(not torch.equal(a[n], one[n]) for n in a)


def test_synflow_rounds_are_validated():
    with pytest.raises(ValueError, match="The 'rounds' parameter of synflow_masks must be an int >= 1. Got 0 instead."):
        bp.synflow_masks(_tiny(), torch.zeros(2, 20), 100, rounds=0)


def test_str_soft_threshold_and_collapse_give_exact_zeros():
    st = bp.SoftThreshold(s_init=0.0)  # threshold sigmoid(0) = 0.5
    w = torch.tensor([-2.0, -0.4, 0.0, 0.3, 0.7])
    torch.testing.assert_close(st(w), torch.tensor([-1.5, 0.0, 0.0, 0.0, 0.2]))
    model = _tiny()
    s = bp.str_sparsify(model, s_init=-2.0)
    assert len(s) == 3 and all(p.requires_grad for p in s)
    effective = {n: m.weight.detach().clone() for n, m in bp.prunable_weights(model).items()}
    bp.str_collapse(model)
    assert type(model[1]) is nn.Linear and not hasattr(model[1], "parametrizations")
    for n, m in bp.prunable_weights(model).items():
        torch.testing.assert_close(m.weight, effective[n])
        assert bool((m.weight == 0).any())


def test_str_controller_raises_weight_decay_when_behind_and_lowers_it_when_ahead():
    model = _tiny()
    bp.str_sparsify(model, s_init=-10.0)
    opt = torch.optim.SGD([{"params": list(model.parameters()), "weight_decay": 1e-4, "str": True}], lr=0.1)
    ctrl = bp.STRController(model, 0.9, ramp_steps=10, update_every=1)
    ctrl(opt)
    assert opt.param_groups[0]["weight_decay"] > 1e-4  # no zeros yet, the ramp wants some
    bp.str_sparsify(big := _tiny(), s_init=10.0)  # threshold ~1: everything is zero
    opt2 = torch.optim.SGD([{"params": list(big.parameters()), "weight_decay": 1e-4, "str": True}], lr=0.1)
    bp.STRController(big, 0.5, ramp_steps=1000, update_every=1)(opt2)
    assert opt2.param_groups[0]["weight_decay"] < 1e-4


def _str_groups(model, thresholds, decay):
    ids = {id(p) for p in thresholds}
    return [{"params": list(thresholds), "weight_decay": decay, "str": True},
            {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": decay, "str_weights": True}]


def test_str_controller_moves_the_weights_decay_only_once_the_thresholds_saturate():
    # thresholds far below saturation: only the thresholds' decay moves
    model = _tiny()
    opt = torch.optim.SGD(_str_groups(model, bp.str_sparsify(model, s_init=-10.0), 1e-4), lr=0.1)
    ctrl = bp.STRController(model, 0.9, ramp_steps=10, update_every=1)
    ctrl(opt)
    assert ctrl.mean_threshold() < 1e-3
    assert opt.param_groups[0]["weight_decay"] > 1e-4 and opt.param_groups[1]["weight_decay"] == 1e-4
    # thresholds at sigmoid(0) = 0.5 (what decay on s converges to) and behind the ramp: the weights' decay rises too
    sat = _tiny()
    with torch.no_grad():
        for m in bp.prunable_weights(sat).values():
            m.weight.fill_(1.0)  # every weight above 0.5: no zeros
    opt = torch.optim.SGD(_str_groups(sat, bp.str_sparsify(sat, s_init=0.0), 1e-4), lr=0.1)
    ctrl = bp.STRController(sat, 0.99, ramp_steps=1, update_every=1)
    assert ctrl.mean_threshold() == pytest.approx(0.5) and ctrl.sparsity() == 0.0
    for _ in range(3):
        ctrl(opt)
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(1e-4 * math.exp(3 * ctrl.max_step))
    # ahead of the ramp: it falls back, never below its initial value
    with torch.no_grad():
        for m in bp.prunable_weights(sat).values():
            m.parametrizations.weight.original.zero_()
    for _ in range(10):
        ctrl(opt)
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(1e-4)


def test_l1_loss_adds_the_penalty_of_the_prunable_weights():
    model = _tiny()
    out, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    l1 = sum(m.weight.abs().sum() for m in bp.prunable_weights(model).values())
    torch.testing.assert_close(bp.l1_loss(model, 0.01)(out, y), nn.functional.cross_entropy(out, y) + 0.01 * l1)


def test_random_crop_flip_is_identity_in_eval_and_a_translation_in_training():
    assert C.RandomCropFlip is spred.datasets.RandomCropFlip  # the transform lives in spred.datasets
    aug = C.RandomCropFlip(padding=2)
    x = torch.rand(6, 3, 8, 8)
    assert aug.eval()(x) is x
    with _common.torch_seed(0):
        y = aug.train()(x)
    assert y.shape == x.shape
    for i in range(6):  # every output is a shifted (maybe flipped) crop of the zero-padded input
        padded = nn.functional.pad(x[i], (2, 2, 2, 2))
        crops = [padded[:, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(y[i], c) or torch.equal(y[i], c.flip(2)) for c in crops)


# --------------------------------------------------------------------------- config and command line


def _args(*argv):
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_preset_resolves():
    cfg = C.config_from_args(_args("--quick"))
    assert cfg.models == ("lenet300100",) and cfg.seeds == (0,) and cfg.train_size == 10_000
    assert cfg.ratios == {"lenet300100": (12.0, 68.0)} and cfg.structured and cfg.structured_sparsity == (0.5, 0.95)
    assert C.config_from_args(_args("--quick", "--structured-sparsity", "0.7")).structured_sparsity == (0.7,)
    assert C.check_config(dataclasses.replace(TINY, structured_sparsity=0.9)).structured_sparsity == (0.9,)
    assert cfg.round_to is None and C.config_from_args(_args("--quick", "--round-to", "8")).round_to == 8
    only = C.config_from_args(_args("--quick", "--structured-only", "--structured-sparsity", "0.5", "0.8"))
    assert only.models == () and only.structured and only.structured_sparsity == (0.5, 0.8) and only.train_size == 10_000
    with pytest.raises(ValueError, match="--structured-only runs the structured CNN only: drop --models"):
        C.config_from_args(_args("--structured-only", "--models", "lenet300100"))
    with pytest.raises(TypeError, match="The 'models' parameter of CompressionConfig must be a non-empty tuple"):
        C.check_config(dataclasses.replace(TINY, models=(), structured=False))


def test_resnet18_on_cifar10_resolves_and_needs_the_data_path():
    cfg = C.config_from_args(_args("--models", "resnet18", "--cifar10", "data/cifar-10-batches-py", "--device", "cuda", "--no-structured"))
    assert cfg.models == ("resnet18",) and cfg.device == "cuda" and cfg.ratios == {"resnet18": C.DEFAULT_RATIOS["resnet18"]}
    assert not cfg.structured and C.DATASET["resnet18"] == "cifar10"
    with pytest.raises(ValueError, match="The 'resnet18' model runs on CIFAR-10: pass --cifar10 PATH"):
        C.config_from_args(_args("--models", "resnet18"))


def test_cli_ratios_apply_to_every_model_and_help_works():
    cfg = C.config_from_args(_args("--models", "lenet300100", "lenet5caffe", "--ratios", "20", "100", "--epochs", "3"))
    assert cfg.ratios == {"lenet300100": (20.0, 100.0), "lenet5caffe": (20.0, 100.0)} and cfg.epochs == 3
    from spred.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main(["run", "compression", "--help"])
    assert exc.value.code == 0 and "--finetune-epochs" in out.getvalue()


@pytest.mark.parametrize(
    ("changes", "kind", "match"),
    [
        ({"models": "lenet300100"}, TypeError, r"The 'models' parameter of CompressionConfig must be a non-empty tuple"),
        ({"models": ("vgg",)}, ValueError, r"The 'models' parameter of CompressionConfig must be a non-empty tuple of distinct values from \('lenet300100'"),
        ({"methods": ("spred", "spred")}, ValueError, r"The 'methods' parameter of CompressionConfig must be a non-empty tuple of distinct values from \('spred'.* Got \('spred', 'spred'\)"),
        ({"ratios": [12]}, TypeError, r"The 'ratios' parameter of CompressionConfig must be a mapping"),
        ({"ratios": {}}, ValueError, r"has no ratios for model 'lenet300100'"),
        ({"ratios": {"lenet300100": 12}}, TypeError, r"must be a non-empty tuple of numbers for 'lenet300100'"),
        ({"ratios": {"lenet300100": ("12",)}}, TypeError, r"The 'ratios' parameter of CompressionConfig must be numbers >= 1. Got '12'"),
        ({"ratios": {"lenet300100": (0.5,)}}, ValueError, r"must be numbers >= 1. Got 0.5 instead"),
        ({"epochs": 0}, ValueError, r"The 'epochs' parameter of CompressionConfig must be an int >= 1. Got 0 instead"),
        ({"epochs": 2.0}, TypeError, r"The 'epochs' parameter of CompressionConfig must be an int >= 1. Got 2.0 of type float"),
        ({"train_size": 1}, ValueError, r"The 'train_size' parameter of CompressionConfig must be an int >= 2"),
        ({"optimizer": "adamw"}, ValueError, r"The 'optimizer' parameter of CompressionConfig must be one of \('adam', 'sgd'\)"),
        ({"finetune_lr": 0.0}, ValueError, r"The 'finetune_lr' parameter of CompressionConfig must be a float in the range \(0, inf\). Got 0.0"),
        ({"lam": float("inf")}, ValueError, r"The 'lam' parameter of CompressionConfig must be a float in the range \(0, inf\). Got inf"),
        ({"str_s_init": float("nan")}, ValueError, r"The 'str_s_init' parameter of CompressionConfig must be a float in the range \(-inf, inf\). Got nan"),
        ({"finetune_lr": "0.1"}, TypeError, r"The 'finetune_lr' parameter of CompressionConfig must be a float"),
        ({"lrs": 0.1}, TypeError, r"The 'lrs' parameter of CompressionConfig must be a mapping method -> learning rate"),
        ({"lrs": {"spred": 0.1}}, ValueError, r"The 'lrs' parameter of CompressionConfig has no learning rate for \['gmp', 'l1', 'magnitude'"),
        ({"lrs": {**C.DEFAULT_LRS, "gmp": -1.0}}, ValueError, r"The 'lrs' parameter of CompressionConfig must be positive numbers. Got -1.0"),
        ({"lrs": {**C.DEFAULT_LRS, "gmp": "big"}}, TypeError, r"The 'lrs' parameter of CompressionConfig must be positive numbers. Got 'big'"),
        ({"ramp": 1.5}, ValueError, r"The 'ramp' parameter of CompressionConfig must be a float in the range \(0, 1\]"),
        ({"gmp_start": 0.8}, ValueError, r"The 'gmp_start' parameter of CompressionConfig must be smaller than 'ramp'"),
        ({"structured": 1}, TypeError, r"The 'structured' parameter of CompressionConfig must be a bool"),
        ({"structured_model": "resnet18"}, ValueError, r"The 'structured_model' parameter of CompressionConfig must be one of \('lenet5caffe', 'smallvgg'\)"),
        ({"dense": 1}, TypeError, r"The 'dense' parameter of CompressionConfig must be a bool. Got 1 of type int"),
        ({"dense": False}, ValueError, r"The 'dense' parameter of CompressionConfig must be True when 'methods' has 'magnitude'"),
        ({"structured_sparsity": 1.0}, ValueError, r"The 'structured_sparsity' parameter of CompressionConfig must be a float or a non-empty tuple of floats in \(0, 1\). Got 1.0"),
        ({"structured_sparsity": (0.5, 0.0)}, ValueError, r"The 'structured_sparsity' parameter of CompressionConfig must be .* Got \(0.5, 0.0\)"),
        ({"structured_sparsity": ()}, TypeError, r"The 'structured_sparsity' parameter of CompressionConfig must be a float or a non-empty tuple"),
        ({"structured_sparsity": "0.9"}, TypeError, r"The 'structured_sparsity' parameter of CompressionConfig must be a float or a non-empty tuple"),
        ({"structured_lam_exponents": 0.5}, TypeError, r"The 'structured_lam_exponents' parameter of CompressionConfig must be a non-empty tuple"),
        ({"structured_lam_exponents": (2.0,)}, ValueError, r"The 'structured_lam_exponents' parameter of CompressionConfig must be a non-empty tuple of floats in \[0, 1\]. Got \(2.0,\)"),
        ({"round_to": 0}, ValueError, r"The 'round_to' parameter of CompressionConfig must be an int >= 1 or None. Got 0 instead"),
        ({"round_to": 8.0}, TypeError, r"The 'round_to' parameter of CompressionConfig must be an int >= 1 or None. Got 8.0 of type float"),
        ({"controller_margin": -0.1}, ValueError, r"The 'controller_margin' parameter of CompressionConfig must be a float in the range \[0, 1\]"),
        ({"seeds": 0}, TypeError, r"The 'seeds' parameter of CompressionConfig must be a non-empty tuple"),
        ({"seeds": (0, 0)}, ValueError, r"The 'seeds' parameter of CompressionConfig must be distinct ints >= 0"),
        ({"device": 0}, TypeError, r"The 'device' parameter of CompressionConfig must be a device string"),
        ({"device": "gpu0"}, ValueError, r"The 'device' parameter of CompressionConfig must be a device string"),
    ],
)
def test_check_config_names_the_field_and_the_value(changes, kind, match):
    with pytest.raises(kind, match=match):
        C.check_config(dataclasses.replace(TINY, **changes))


def test_no_dense_skips_the_reference_and_bad_options_exit_with_one_line(capsys, monkeypatch):
    monkeypatch.setattr(C, "build_model", lambda name, seed: _tiny(seed))
    cfg = C.check_config(dataclasses.replace(TINY, dense=False, methods=("spred",), ratios={"lenet300100": (4.0,)}))
    assert [r["method"] for r in C.run_unstructured(cfg, "lenet300100", 0, _synthetic())] == ["spred"]
    assert C.config_from_args(_args("--no-dense", "--methods", "spred", "gmp")).dense is False
    assert C.config_from_args(_args("--structured-only", "--structured-model", "smallvgg")).structured_model == "smallvgg"
    from spred.cli import main

    assert main(["run", "compression", "--methods", "magnitude", "--no-dense"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("spred: error: The 'dense' parameter of CompressionConfig must be True when 'methods' has 'magnitude': "
                            "one-shot magnitude pruning starts from the dense model. Drop 'magnitude' or keep the dense run.\n")
    assert "Traceback" not in captured.out + captured.err


def test_load_data_refuses_unknown_datasets():
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'; expected 'mnist' or 'cifar10'"):
        C.load_data("svhn")


def test_import_spred_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, spred, spred.experiments.compression; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.slow
@pytest.mark.data
def test_mnist_lenet300100_spred_beats_magnitude_on_a_small_run(data_home, tmp_path, monkeypatch):
    """A reduced quick run on real MNIST (about 30 s): spred ahead of one-shot magnitude pruning at 68x."""
    monkeypatch.setenv("SPRED_DATA", str(data_home))
    cfg = dataclasses.replace(C.CompressionConfig(**{**C.QUICK, "structured": False}), methods=("spred", "magnitude"),
                              ratios={"lenet300100": (68.0,)}, train_size=5000, epochs=10, finetune_epochs=3)  # fmt: skip
    res = C.run_experiment(cfg, tmp_path, plot_figure=False, progress=False)
    by = {r["method"]: r for r in res.rows}
    assert by["spred"]["compression_ratio"] >= 68 and by["magnitude"]["compression_ratio"] >= 68
    assert by["spred"]["test_error"] < by["magnitude"]["test_error"]


@pytest.mark.parametrize("module", [C, bp])
def test_all_names_exist_and_are_documented(module):
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        obj = getattr(module, name)
        if callable(obj):
            assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
