"""PruningPlan: JSON round trip, apply_plan on a fresh model, weights-only checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from spred.compress import LayerSlicer, PruningPlan, apply_plan, prune_channels
from spred.compress._plan import slicer_for

pytest.importorskip("torch_pruning")


def _zero_some_channels(model: nn.Module) -> None:
    """Zero the first two filters / rows of every Conv and Linear except the last layer, and make
    some BatchNorm shifts negative (so that some constants are 0 and some are not)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    with torch.no_grad():
        for layer in layers:
            layer.weight[:2] = 0.0
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.bias[:1] = -10.0


@pytest.fixture(params=[("mlp", None), ("vgg", None), ("resnet", None), ("vgg", 3)], ids=["mlp", "vgg", "resnet", "vgg-round_to-3"])
def pruned(request, make):
    name, round_to = request.param
    model, x = make(name)
    _zero_some_channels(model)
    small, plan = prune_channels(model, x, round_to=round_to)
    assert plan.n_removed > 0
    assert bool(plan.kept_rounding) == (round_to is not None)
    return name, small, plan, x


def test_json_round_trip(pruned):
    _, _, plan, _ = pruned
    text = plan.to_json()
    assert json.loads(text)["format"] == "spred.PruningPlan"
    assert PruningPlan.from_json(text) == plan
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    assert PruningPlan.from_json(plan.to_json(indent=2)).kept_out == plan.kept_out


def test_apply_plan_then_weights_only_load_reproduces_the_pruned_model(pruned, make, tmp_path):
    name, small, plan, x = pruned
    torch.save(small.state_dict(), tmp_path / "pruned.pt")
    (tmp_path / "plan.json").write_text(plan.to_json())

    fresh, _ = make(name, seed=1)  # same class, other weights, not pruned
    apply_plan(fresh, PruningPlan.from_json((tmp_path / "plan.json").read_text()))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    fresh.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small(x), rtol=0, atol=0)


def test_apply_plan_accepts_dict_and_json(pruned, make):
    name, small, plan, _ = pruned
    for form in (plan.to_dict(), plan.to_json()):
        fresh = apply_plan(make(name, seed=2)[0], form)
        assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


def test_apply_plan_adds_the_biases_that_folding_created(make, tmp_path):
    model, x = make("vgg")
    with torch.no_grad():
        model.conv1.weight[[0]] = 0.0
        model.bn1.bias[0] = 3.0  # positive constant into conv2 (padding=0, bias=False)
    small, plan = prune_channels(model, x)
    assert plan.added_bias == ["conv2"]
    fresh = apply_plan(make("vgg", seed=3)[0], plan)
    assert fresh.conv2.bias is not None and fresh.conv2.bias.shape == (12,)
    fresh.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), small.eval()(x), rtol=0, atol=0)


def test_str_summarises_the_plan(pruned):
    _, _, plan, _ = pruned
    text = str(plan)
    assert text.startswith(f"PruningPlan: {plan.n_removed} channels removed")
    assert all(name in text for name in plan.layers)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_from_json_errors():
    good = PruningPlan().to_dict()
    with pytest.raises(TypeError, match=r"'text' parameter of PruningPlan.from_json must be a JSON string. Got int"):
        PruningPlan.from_json(3)
    with pytest.raises(TypeError, match=r"'data' parameter of PruningPlan.from_dict must be a mapping. Got list"):
        PruningPlan.from_dict([])
    with pytest.raises(ValueError, match=r"not a spred pruning plan: expected format 'spred.PruningPlan', got 'other'"):
        PruningPlan.from_dict({**good, "format": "other"})
    with pytest.raises(ValueError, match=r"unsupported pruning plan version 99"):
        PruningPlan.from_dict({**good, "version": 99})
    with pytest.raises(ValueError, match=r"unknown keys in pruning plan: \['extra'\]"):
        PruningPlan.from_dict({**good, "extra": 1})


def test_apply_plan_rejects_other_architectures(make):
    model, x = make("vgg")
    with torch.no_grad():
        model.conv3.weight[[0]] = 0.0
    _, plan = prune_channels(model, x)
    with pytest.raises(TypeError, match=r"'fresh_model' parameter of apply_plan must be a torch.nn.Module. Got str"):
        apply_plan("model", plan)
    with pytest.raises(TypeError, match=r"'plan' parameter of apply_plan must be a PruningPlan, a dict or a JSON string. Got int"):
        apply_plan(make("vgg")[0], 3)
    wider = type(model)(c=(8, 12, 20))
    with pytest.raises(ValueError, match=r"the plan expects 'conv3' with 16 output channels, got 20"):
        apply_plan(wider, plan)
    with pytest.raises(ValueError, match=r"the model has no module\(s\) \['conv3'"):
        apply_plan(make("mlp")[0], plan)
    other = make("vgg")[0]
    other.conv3 = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"the plan was made for 'conv3' of type Conv2d, but the model has Linear"):
        apply_plan(other, plan)


def test_a_registered_slicer_lets_apply_plan_handle_a_new_layer_type():
    from spred.compress import register_slicer
    from spred.compress._plan import _SLICERS

    class Scale(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.gain = nn.Parameter(torch.arange(float(n)))

    class ScaleSlicer(LayerSlicer):
        target = Scale

        def out_size(self, layer):
            return layer.gain.numel()

        def keep_out(self, layer, keep):
            layer.gain = nn.Parameter(layer.gain.detach()[keep])

    try:
        register_slicer(ScaleSlicer())
        plan = PruningPlan(layers={"s": {"type": "Scale", "out_size": 4, "kept_out": [1, 3], "in_size": None, "kept_in": None}})
        model = apply_plan(nn.ModuleDict({"s": Scale(4)}), plan)
        torch.testing.assert_close(model["s"].gain.detach(), torch.tensor([1.0, 3.0]))
    finally:
        _SLICERS.pop(Scale, None)
    with pytest.raises(TypeError, match=r"'slicer' parameter of register_slicer must be a LayerSlicer instance. Got type"):
        register_slicer(ScaleSlicer)


def test_slicer_subclass_must_declare_its_target():
    with pytest.raises(TypeError, match=r"Bad must set the class attribute 'target' to a subclass of torch.nn.Module"):

        class Bad(LayerSlicer):
            pass


def test_slicers_refuse_grouped_and_transposed_convolutions():
    conv = nn.Conv2d(4, 4, 3, groups=2)
    assert "groups=2" in slicer_for(conv).unsupported(conv)
    tconv = nn.ConvTranspose2d(4, 4, 3)
    assert "transposed" in slicer_for(tconv).unsupported(tconv)
    assert slicer_for(nn.InstanceNorm2d(3)) is None


# --------------------------------------------------------------------------- malformed plans (issue 19)


def _vgg_plan(make):
    model, x = make("vgg")
    _zero_some_channels(model)
    _, plan = prune_channels(model, x)
    data = plan.to_dict()
    assert data["layers"][_last(data)]["kept_in"] is not None  # the last entry slices inputs (corrupted below)
    return data


def _last(data):
    return list(data["layers"])[-1]


def _drop_key(data):
    del data["layers"][_last(data)]["in_size"]


def _not_a_dict(data):
    data["layers"][_last(data)] = [1, 2, 3]


def _duplicate(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = [e["kept_in"][0]] + e["kept_in"][:-1]


def _floats(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = [float(i) for i in e["kept_in"]]


def _unsorted(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = e["kept_in"][::-1]


def _out_of_range(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = e["kept_in"][:-1] + [e["in_size"]]


def _negative(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = [-1] + e["kept_in"][1:]


def _empty(data):
    data["layers"][_last(data)]["kept_in"] = []


def _bool_indices(data):
    e = data["layers"][_last(data)]
    e["kept_in"] = [True] + e["kept_in"][1:]


def _bias_on_batchnorm(data):
    data["added_bias"] = ["bn1"]


@pytest.mark.parametrize(
    ("corrupt", "error", "match"),
    [
        (_drop_key, ValueError, r"the plan entry of '{last}' lacks the key\(s\) \['in_size'\]"),
        (_not_a_dict, TypeError, r"the plan entry of '{last}' must be a dict. Got list"),
        (_duplicate, ValueError, r"'kept_in' of '{last}' must be sorted in increasing order without duplicates"),
        (_floats, TypeError, r"'kept_in' of '{last}' must hold int indices. Got \d+\.0 of type float"),
        (_unsorted, ValueError, r"'kept_in' of '{last}' must be sorted in increasing order without duplicates"),
        (_out_of_range, ValueError, r"'kept_in' of '{last}' must lie in \[0, \d+\) \(its in_size\)"),
        (_negative, ValueError, r"'kept_in' of '{last}' must lie in \[0, \d+\) \(its in_size\). Got -1"),
        (_empty, ValueError, r"'kept_in' of '{last}' is empty: a layer keeps at least one channel"),
        (_bool_indices, TypeError, r"'kept_in' of '{last}' must hold int indices. Got True of type bool"),
        (_bias_on_batchnorm, ValueError, r"the plan adds a bias to 'bn1', but BatchNorm2d is not a Linear / convolution layer"),
    ],
)
def test_apply_plan_checks_the_whole_plan_before_touching_the_model(make, corrupt, error, match):
    """A bad entry (here the last one) used to raise a bare KeyError / TypeError after the first layers were
    sliced, or to be accepted (duplicate / float indices); now nothing is sliced and the error names the layer."""
    data = _vgg_plan(make)
    corrupt(data)
    fresh, _ = make("vgg", seed=1)
    before = copy.deepcopy(fresh)
    with pytest.raises(error, match=match.format(last=_last(data))):
        apply_plan(fresh, data)
    assert repr(fresh) == repr(before)
    after, orig = fresh.state_dict(), before.state_dict()
    assert after.keys() == orig.keys() and all(torch.equal(after[k], orig[k]) for k in orig)
    assert apply_plan(fresh, _vgg_plan(make)) is fresh  # the intact plan still applies


def test_apply_plan_accepts_numpy_integer_indices(make):
    np = pytest.importorskip("numpy")
    data = _vgg_plan(make)
    e = data["layers"][_last(data)]
    e["kept_in"] = list(np.asarray(e["kept_in"], dtype=np.int64))
    fresh, _ = make("vgg", seed=1)
    apply_plan(fresh, data)
    assert dict(fresh.named_modules())[_last(data)].weight.shape[1] == len(e["kept_in"])
