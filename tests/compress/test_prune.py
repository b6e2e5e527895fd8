"""prune_channels: physical removal of zero channels keeps the function of the model."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import spred
from spred.compress import count_parameters, prune_channels

pytest.importorskip("torch_pruning")

ATOL = 1e-5


def assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=ATOL, rtol=ATOL)


def zero(layer: nn.Module, idx) -> None:
    with torch.no_grad():
        layer.weight[list(idx)] = 0.0


def set_(tensor: torch.Tensor, idx, value: float) -> None:
    with torch.no_grad():
        tensor[list(idx)] = value


# ---------------------------------------------------------------------------
# MLP: zero neurons with nonzero biases are folded into the next Linear
# ---------------------------------------------------------------------------


def test_mlp_zero_neurons_are_removed_and_their_constants_folded(make):
    model, x = make("mlp")
    zero(model.fc1, [0, 3, 7])
    with torch.no_grad():
        model.fc1.bias[[0, 3, 7]] = torch.tensor([0.5, -0.5, 1.0])  # relu: 0.5, 0, 1.0 reach fc2
    zero(model.fc2, [1, 2])  # tanh(bias) reaches the head
    pruned, plan = prune_channels(model, x)

    assert_same_function(pruned, model, x)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (29, 29)
    assert (pruned.fc2.out_features, pruned.head.in_features) == (22, 22)
    assert count_parameters(pruned) < count_parameters(model)
    assert plan.kept_out["fc1"] == [i for i in range(32) if i not in (0, 3, 7)]
    assert plan.kept_nonzero_constant == [] and plan.kept_last == []
    # the fold is exactly b2 + W2[:, removed] @ relu(b1[removed]), restricted to the kept rows of fc2
    expected = model.fc2.bias + model.fc2.weight[:, [0, 3, 7]] @ torch.relu(model.fc1.bias[[0, 3, 7]])
    keep2 = plan.kept_out["fc2"]
    torch.testing.assert_close(pruned.fc2.bias, expected[keep2].detach())


def test_never_removes_all_channels_of_a_layer(make):
    model, x = make("mlp")
    zero(model.fc2, range(24))
    pruned, plan = prune_channels(model, x)
    assert pruned.fc2.out_features == 1 and pruned.head.in_features == 1
    assert [k["layer"] for k in plan.kept_last] == ["fc2"]
    assert "one is kept" in plan.kept_last[0]["reason"]
    assert_same_function(pruned, model, x)


def test_output_channels_are_never_pruned(make):
    model, x = make("mlp")
    zero(model.head, [1])
    pruned, plan = prune_channels(model, x)
    assert pruned.head.out_features == 5
    assert [s["layer"] for s in plan.skipped] == ["head"]
    assert "outputs of the model" in plan.skipped[0]["reason"]
    assert plan.n_removed == 0
    assert_same_function(pruned, model, x)


def test_round_to_keeps_a_multiple_of_channels_preferring_those_that_need_a_fold(make):
    model, x = make("mlp")
    zero(model.fc1, range(10))  # 22 of 32 alive: round_to=8 keeps 24, i.e. two of the zero neurons
    set_(model.fc1.bias, [6, 9], 1.0)  # these two would need a fold; the others emit relu(b) == 0
    set_(model.fc1.bias, [0, 1, 2, 3, 4, 5, 7, 8], -1.0)
    zero(model.fc2, range(24))  # all zero: one kept as the last, then rounded up to 8
    pruned, plan = prune_channels(model, x, round_to=8)

    assert_same_function(pruned, model, x)
    assert (pruned.fc1.out_features, pruned.fc2.in_features) == (24, 24)
    assert pruned.fc2.out_features == 8 and pruned.head.in_features == 8
    assert {(k["layer"], k["channel"]) for k in plan.kept_rounding if k["layer"] == "fc1"} == {("fc1", 6), ("fc1", 9)}
    assert sum(k["layer"] == "fc2" for k in plan.kept_rounding) == 7 and len(plan.kept_last) == 1
    assert all("multiple of round_to=8" in k["reason"] for k in plan.kept_rounding)
    assert plan.round_to == 8 and "to round its width to a multiple of 8" in str(plan)

    unrounded, plan1 = prune_channels(model, x)  # the default removes all 10 and folds
    assert unrounded.fc1.out_features == 22 and plan1.kept_rounding == [] and plan1.round_to == 1
    # the kept channels are silenced: the head no longer reads fc2's eight zero neurons (their tanh(b) is folded)
    assert (pruned.head.weight == 0).all() and (unrounded.head.weight == 0).all()
    fc1_kept = [plan.kept_out["fc1"].index(c) for c in (6, 9)]
    assert (pruned.fc2.weight[:, fc1_kept] == 0).all()
    assert prune_channels(model, x, round_to=1)[0].fc1.out_features == 22


def test_round_to_never_adds_channels_and_leaves_unpruned_layers_alone(make):
    model, x = make("vgg")  # conv1 8, conv2 12, conv3 16 filters
    zero(model.conv2, [0, 1, 2])  # 9 alive: round_to=8 gives 16 > 12, so the layer keeps all 12
    set_(model.bn2.bias, [0, 1, 2], -10.0)
    zero(model.conv3, [0])
    set_(model.bn3.bias, [0], -10.0)  # 15 alive: rounded to 16, nothing removed
    pruned, plan = prune_channels(model, x, round_to=8)
    assert_same_function(pruned, model, x)
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.conv3.out_channels) == (8, 12, 16)
    assert plan.n_removed == 0 and len(plan.kept_rounding) == 4
    # silenced: the next layers no longer read the kept zero channels (conv2's 0-2, conv3's 0 = fc's first 9 inputs)
    assert (pruned.conv3.weight[:, :3] == 0).all() and (pruned.fc.weight[:, :9] == 0).all()
    assert (model.conv3.weight[:, :3] != 0).any() and (model.fc.weight[:, :9] != 0).any()
    exact = prune_channels(model, x)[0]
    weights = lambda m: sum(int(mod.weight.count_nonzero()) for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    assert weights(pruned) == weights(exact)  # as many nonzero conv / linear weights as with the exact widths
    assert prune_channels(model, x, round_to=4)[0].conv2.out_channels == 12  # 9 -> 12, all of them


# ---------------------------------------------------------------------------
# VGG-style CNN with BatchNorm: fold across padding=0, keep across zero padding
# ---------------------------------------------------------------------------


def test_vgg_constants_fold_without_padding_and_are_kept_across_zero_padding(make):
    model, x = make("vgg")
    zero(model.conv1, [1, 4])
    set_(model.bn1.bias, [1, 4], 3.0)  # relu(BN(b)) > 0 flows into conv2 (padding=0, no bias): folded
    zero(model.conv2, [0, 5, 9])
    set_(model.bn2.bias, [0], -10.0)  # relu(negative constant) == 0: removed without folding
    set_(model.bn2.bias, [5, 9], 5.0)  # positive constant into conv3 (padding=1): kept
    zero(model.conv3, [2, 3])  # constants reach fc through max-pool and flatten: folded per position
    pruned, plan = prune_channels(model, x)

    assert_same_function(pruned, model, x)
    assert (pruned.conv1.out_channels, pruned.bn1.num_features, pruned.conv2.in_channels) == (6, 6, 6)
    assert (pruned.conv2.out_channels, pruned.conv3.in_channels) == (11, 11)
    assert (pruned.conv3.out_channels, pruned.fc.in_features) == (14, 14 * 9)
    assert plan.added_bias == ["conv2"] and pruned.conv2.bias is not None
    kept = {(k["layer"], k["channel"]): k for k in plan.kept_nonzero_constant}
    assert set(kept) == {("conv2", 5), ("conv2", 9)}
    assert all(k["consumer"] == "conv3" and "zero padding" in k["reason"] and k["constant"] > 0 for k in kept.values())
    assert count_parameters(pruned) < count_parameters(model)
    assert type(pruned.conv1) is nn.Conv2d and type(pruned.bn1) is nn.BatchNorm2d


def test_channel_that_is_not_constant_at_its_consumer_is_kept():
    # zero padding inside an average pool makes a constant channel position dependent
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True),
        nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    ).eval()
    zero(model[0], [0])
    set_(model[0].bias, [0], 1.0)
    x = torch.randn(3, 3, 6, 6)
    pruned, plan = prune_channels(model, x)
    assert pruned[0].out_channels == 4
    [k] = plan.kept_nonzero_constant
    assert (k["layer"], k["channel"], k["consumer"]) == ("0", 0, "3")
    assert "not constant" in k["reason"]
    assert_same_function(pruned, model, x)


# ---------------------------------------------------------------------------
# ResNet: channels coupled by residual adds go only if zero in every coupled layer
# ---------------------------------------------------------------------------


def test_resnet_residual_channels_are_removed_only_when_zero_in_all_coupled_layers(make):
    model, x = make("resnet")
    stage1 = [model.stem, model.layer1[0].conv2, model.layer1[1].conv2]  # one dependency group (identity adds)
    zero(model.stem, [2])  # zero in the stem only: must stay
    for conv in stage1:
        zero(conv, [3])
    for bn in (model.bn, model.layer1[0].bn2, model.layer1[1].bn2):
        set_(bn.bias, [3], -10.0)  # relu(...) == 0 after every add
    zero(model.layer1[0].conv1, [1, 4])
    set_(model.layer1[0].bn1.bias, [1], 2.0)  # nonzero into a padded conv: kept
    set_(model.layer1[0].bn1.bias, [4], -10.0)  # zero after relu: removed
    zero(model.layer2.conv2, [5])  # the shortcut is not zero there: must stay
    zero(model.layer2.conv2, [6])
    zero(model.layer2.shortcut[0], [6])  # zero in both: constant reaches fc through the pool: folded
    pruned, plan = prune_channels(model, x)

    assert_same_function(pruned, model, x)
    assert pruned.stem.out_channels == 7
    assert all(m.in_channels == 7 for m in (pruned.layer1[0].conv1, pruned.layer1[1].conv1, pruned.layer2.conv1, pruned.layer2.shortcut[0]))
    assert pruned.layer1[0].conv2.out_channels == pruned.layer1[1].conv2.out_channels == 7
    assert plan.kept_out["stem"] == [0, 1, 2, 4, 5, 6, 7]
    assert pruned.layer1[0].conv1.out_channels == 7
    assert [(k["layer"], k["channel"]) for k in plan.kept_nonzero_constant] == [("layer1.0.conv1", 1)]
    assert pruned.layer2.conv2.out_channels == pruned.layer2.shortcut[0].out_channels == 15
    assert pruned.fc.in_features == 15
    assert 5 in plan.kept_out["layer2.conv2"] and 6 not in plan.kept_out["layer2.conv2"]


# ---------------------------------------------------------------------------
# Inputs: sparsified models, threshold, inplace, training mode
# ---------------------------------------------------------------------------


def test_sparsified_model_is_collapsed_first_and_left_untouched(make):
    model, x = make("mlp")
    spred.sparsify(model, 0.1, groups="out")
    u, _ = spred.factors(model.fc1, "weight")
    with torch.no_grad():
        u[[2, 5]] = 0.0
    pruned, plan = prune_channels(model, x)
    assert spred.is_sparsified(model) and not spred.is_sparsified(pruned)
    assert type(pruned.fc1) is nn.Linear and pruned.fc1.out_features == 30
    assert_same_function(pruned, spred.collapse(model), x)


def test_threshold_counts_small_rows_as_zero(make):
    model, x = make("mlp")
    with torch.no_grad():
        model.fc1.weight[[4, 6]] = 1e-9
    assert prune_channels(model, x)[0].fc1.out_features == 32
    pruned, plan = prune_channels(model, x, threshold=1e-6)
    assert pruned.fc1.out_features == 30 and plan.threshold == 1e-6
    reference = copy.deepcopy(model)
    zero(reference.fc1, [4, 6])
    assert_same_function(pruned, reference, x)


def test_a_sparsified_model_is_pruned_as_collapse_decides_its_zeros(make):
    """prune_channels(sparsified, x, threshold=t) is prune_channels(collapse(sparsified, threshold=t), x): a channel
    group whose filter is small but whose BatchNorm scale is not stays (no second zero rule on the rows)."""
    model, x = make("vgg")
    with torch.no_grad():
        model.conv1.weight[2] *= 1e-5 / model.conv1.weight[2].abs().max()  # every entry <= threshold
        model.bn1.running_var[2] = 1e-8  # BatchNorm amplifies the small filter: the channel matters
    spred.sparsify(model, 0.1, groups="channels", example_inputs=x)
    collapsed = spred.collapse(model, threshold=1e-4)
    assert bool(collapsed.conv1.weight[2].any())  # the group's norm (with bn1's scale) is above the threshold
    pruned, plan = prune_channels(model, x, threshold=1e-4)
    assert pruned.conv1.out_channels == 8 and plan.threshold == 1e-4
    assert_same_function(pruned, collapsed, x)
    assert_same_function(pruned, prune_channels(collapsed, x)[0], x)


def test_inplace_and_training_mode(make):
    model, x = make("mlp")
    zero(model.fc1, [0])
    model.train()
    copy_, _ = prune_channels(model, x)
    assert model.fc1.out_features == 32 and copy_ is not model
    assert copy_.training and copy_.fc1.training
    same, _ = prune_channels(model, x, inplace=True)
    assert same is model and model.fc1.out_features == 31 and model.training


def test_frozen_parameters_stay_frozen(make):
    model, x = make("vgg")
    zero(model.conv1, [0])
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        pruned, _ = prune_channels(model, x)
    assert not any(p.requires_grad for p in pruned.parameters())
    assert pruned.conv1.out_channels == 7


# ---------------------------------------------------------------------------
# Property: any pattern of zero filters (and BN shifts) keeps the function
# ---------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["vgg", "resnet"]))
def test_random_zero_patterns_preserve_the_function(make, data, name):
    model, x = make(name, seed=data.draw(st.integers(0, 3)))
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]:
        n = layer.weight.shape[0]
        idx = data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True))
        zero(layer, idx)
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        idx = data.draw(st.lists(st.integers(0, bn.num_features - 1), max_size=bn.num_features, unique=True))
        set_(bn.bias, idx, -10.0)
    round_to = data.draw(st.sampled_from([None, 2, 4]))
    pruned, plan = prune_channels(model, x, round_to=round_to)
    assert_same_function(pruned, model, x)
    assert plan.max_abs_diff <= ATOL
    assert count_parameters(pruned) <= count_parameters(model)
    assert (count_parameters(pruned) < count_parameters(model)) == (plan.n_removed > 0)
    for name_, e in plan.layers.items():  # every pruned width is a multiple of round_to, or the full width
        if e["kept_out"] is not None and round_to:
            assert len(e["kept_out"]) % round_to == 0 or len(e["kept_out"]) == e["out_size"], (name_, e)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_errors(make):
    model, x = make("mlp")
    with pytest.raises(TypeError, match=r"'model' parameter of prune_channels must be a torch.nn.Module. Got dict"):
        prune_channels({}, x)
    with pytest.raises(TypeError, match=r"'threshold' parameter of prune_channels must be a float .* Got 'a' of type str"):
        prune_channels(model, x, threshold="a")
    with pytest.raises(ValueError, match=r"'threshold' parameter of prune_channels must be a float in the range \[0, inf\). Got -1"):
        prune_channels(model, x, threshold=-1)
    with pytest.raises(TypeError, match=r"'round_to' parameter of prune_channels must be an int .* or None. Got 8.0 of type float"):
        prune_channels(model, x, round_to=8.0)
    with pytest.raises(ValueError, match=r"'round_to' parameter of prune_channels must be an int >= 1 or None. Got 0"):
        prune_channels(model, x, round_to=0)
    with pytest.raises(TypeError, match=r"'inplace' parameter of prune_channels must be a bool. Got 'yes'"):
        prune_channels(model, x, inplace="yes")
    with pytest.raises(TypeError, match=r"'example_inputs' parameter of prune_channels must be a tensor, .* Got int"):
        prune_channels(model, 3)


def test_missing_torch_pruning_names_the_extra(make, monkeypatch):
    model, x = make("mlp")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"pip install 'spred\[prune\]'"):
        prune_channels(model, x)


# ---------------------------------------------------------------------------
# Concatenation, unsupported layers, and the safety nets
# ---------------------------------------------------------------------------


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(9, 6, 3)  # padding 0: constants of either branch fold
        self.head = nn.Linear(6 * 4 * 4, 2)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        return self.head(torch.flatten(self.c(y), 1))


def test_concatenated_branches_map_channels_to_the_right_inputs():
    torch.manual_seed(0)
    model = _Concat().eval()
    zero(model.a, [1, 3])
    zero(model.b, [0, 4])
    x = torch.randn(3, 3, 6, 6)
    pruned, plan = prune_channels(model, x)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.in_channels) == (2, 3, 5)
    assert plan.layers["c"]["kept_in"] == [0, 2, 5, 6, 7]  # b's channels start at offset 4
    assert_same_function(pruned, model, x)


def test_layernorm_channels_go_only_when_zero_at_its_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)).eval()
    zero(model[0], [1, 3])
    set_(model[0].bias, [3], 0.0)  # channel 3 is 0 at the LayerNorm's input, channel 1 carries its bias
    set_(model[1].weight, [1, 3], 0.0)
    x = torch.randn(5, 4)
    pruned, plan = prune_channels(model, x)
    assert pruned[0].out_features == 5 and pruned[1].normalized_shape == (5,) and pruned[2].in_features == 5
    [k] = plan.kept_nonzero_constant
    assert k["channel"] == 1 and "not 0 at the input of the LayerNorm '1'" in k["reason"]
    assert type(pruned[1]).__name__ == "ZeroChannelLayerNorm" and pruned[1].full_size == 6
    assert_same_function(pruned, model, x)


def _group_normed():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 4),
    ).eval()  # fmt: skip


def test_groupnorm_channels_go_and_the_groups_keep_their_statistics():
    from spred.compress import apply_plan

    torch.manual_seed(0)
    model = _group_normed()
    with torch.no_grad():
        for m in (model[1], model[4]):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
        for conv, norm, idx in ((model[0], model[1], [1, 2, 6]), (model[3], model[4], [4])):
            for t in (conv.weight, conv.bias, norm.weight, norm.bias):
                t[idx] = 0.0
        model[3].bias[5] = 0.7  # channel 5 of the second conv: zero filter, nonzero input to its GroupNorm
        model[3].weight[5] = 0.0
        model[4].weight[5] = model[4].bias[5] = 0.0
    x = torch.randn(3, 3, 5, 5)
    pruned, plan = prune_channels(model, x)
    assert (pruned[1].num_channels, pruned[4].num_channels) == (5, 5) and plan.n_removed == 4
    assert type(pruned[1]).__name__ == "ZeroChannelGroupNorm" and pruned[1].group_of == [0, 0, 1, 1, 1]
    [k] = plan.kept_nonzero_constant
    assert k["channel"] == 5 and "not 0 at the input of the GroupNorm '4'" in k["reason"]
    assert_same_function(pruned, model, x)
    fresh = apply_plan(_group_normed(), plan.to_json())
    fresh.load_state_dict(pruned.state_dict())
    assert_same_function(fresh, pruned, x)


def test_groups_through_unsupported_layers_are_skipped_with_a_reason():
    grouped = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    zero(grouped[0], [0])
    _, plan = prune_channels(grouped, torch.randn(2, 3, 6, 6))
    assert any("groups=2 (grouped convolution that is not depthwise)" in s["reason"] for s in plan.skipped)


def test_a_group_refused_by_torch_pruning_is_skipped(make, monkeypatch):
    import torch_pruning as tp

    model, x = make("mlp")
    zero(model.fc1, [0])
    monkeypatch.setattr(tp.DependencyGraph, "check_pruning_group", lambda self, group: False)
    pruned, plan = prune_channels(model, x)
    assert pruned.fc1.out_features == 32
    assert [s["layer"] for s in plan.skipped] == ["fc1"] and "check_pruning_group refused" in plan.skipped[0]["reason"]


def test_a_group_whose_removal_changes_the_outputs_is_kept(make, monkeypatch):
    from spred.compress import _fold

    model, x = make("mlp")
    zero(model.fc1, [0])
    zero(model.fc2, [3])
    set_(model.fc1.bias, [0], 1.0)
    real = _fold.input_constants

    def wrong(ranges, consumer, index):  # a wrong constant for fc1's channels: folding them is off
        out = real(ranges, consumer, index)
        return torch.full_like(out, 5.0) if consumer is model_copy["fc2"] else out

    model_copy = {}
    monkeypatch.setattr(_fold, "input_constants", wrong)
    original = copy.deepcopy(model)
    model_copy["fc2"] = model.fc2
    pruned, plan = prune_channels(model, x, inplace=True)
    assert pruned is model and [h[0] for h in plan.history] == ["fc2"] and pruned.fc1.out_features == 32
    [s] = [s for s in plan.skipped if s["layer"] == "fc1"]
    assert "could not remove them exactly (removing them changed the outputs by" in s["reason"]
    assert plan.max_abs_diff < 1e-5
    assert_same_function(pruned, original, x)


def test_conv1d_batchnorm1d_and_linear_on_sequences():
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3)  # padding 0
            self.bn = nn.BatchNorm1d(6)
            self.conv2 = nn.Conv1d(6, 5, 1)
            self.proj = nn.Linear(5, 7)  # applied on (batch, time, channels)
            self.head = nn.Linear(7, 2)

        def forward(self, x):
            h = self.conv2(torch.relu(self.bn(self.conv(x))))
            return self.head(torch.relu(self.proj(h.transpose(1, 2)))).mean(1)

    model = Seq().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1), model.bn.bias.uniform_(-1, 1)
    zero(model.conv, [0, 4])
    zero(model.proj, [1, 2, 6])
    x = torch.randn(3, 4, 9)
    pruned, plan = prune_channels(model, x)
    assert (pruned.conv.out_channels, pruned.bn.num_features, pruned.conv2.in_channels) == (4, 4, 4)
    assert (pruned.proj.out_features, pruned.head.in_features) == (4, 4)
    assert_same_function(pruned, model, x)
