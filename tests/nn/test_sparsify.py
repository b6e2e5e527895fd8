"""sparsify / param_groups / penalty / set_lam / checkpoints, and their error messages."""

import io
import warnings

import pytest
import torch
from torch import nn

import spred
from spred import NotSparsifiedError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.seq = nn.Conv1d(4, 4, 2)
        self.head = nn.Linear(4 * 6 * 5, 5)

    def forward(self, x):
        h = self.features(x)  # (B, 4, 6, 6)
        h = self.seq(h.flatten(2)[..., :36]).flatten(1)  # Conv1d over 36 positions -> (B, 4*35)
        return self.head(h[:, :120])


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("groups", [None, "out", "in"])
@pytest.mark.parametrize("depth", [2, 3])
def test_sparsify_preserves_the_function(net, groups, depth):
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    spred.sparsify(net, 0.1, groups=groups, depth=depth)
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-6)
    assert spred.is_sparsified(net) and spred.is_sparsified(net, "head.weight")
    assert not spred.is_sparsified(net, "features.1.weight")  # BatchNorm is not in the default include
    u, *_, w = spred.factors(net.features[0], "weight")
    assert w.shape == net.features[0].weight.shape
    expected = {None: (8, 3, 3, 3), "out": (8, 1, 1, 1), "in": (1, 3, 1, 1)}[groups]
    assert u.shape == expected


def test_conv_transpose_groups_follow_its_output_dim():
    layer = nn.ConvTranspose2d(3, 5, 2)  # weight (in=3, out=5, 2, 2)
    spred.sparsify(layer, 0.1, groups="out", include=(nn.ConvTranspose2d,))
    assert spred.factors(layer)[0].shape == (1, 5, 1, 1)


def test_lam_mapping_globs_and_exclude(net):
    spred.sparsify(net, {"features.*": 0.01, "head.weight": 0.5}, exclude=("features.3",))
    assert spred.get_lam(net) == {"features.0.weight": 0.01, "head.weight": 0.5}
    assert not spred.is_sparsified(net, "seq.weight")  # matched by no key: left dense


def test_param_groups_give_every_factor_its_lam(net):
    spred.sparsify(net, {"head.*": 0.5, "*": 0.01})
    groups = spred.param_groups(net, weight_decay=1e-4)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.5, 1e-4]
    assert groups[1]["names"] == ["head.weight"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    opt = torch.optim.SGD(groups, lr=0.1)
    assert opt.param_groups[0]["spred"] and not opt.param_groups[2]["spred"]


def test_coupled_weight_decay_equals_gradient_of_penalty():
    # SGD's weight_decay adds lam * factor: exactly d/d(factor) of spred.penalty.
    torch.manual_seed(1)
    model = spred.sparsify(nn.Linear(5, 3), 0.3, groups="out")
    x = torch.randn(4, 5)
    with_decay = spred.sparsify(nn.Linear(5, 3), 0.3, groups="out")
    with_decay.load_state_dict(model.state_dict())
    opt_a = torch.optim.SGD(spred.param_groups(with_decay), lr=0.1)
    opt_b = torch.optim.SGD([{"params": g["params"], "weight_decay": 0.0} for g in spred.param_groups(model)], lr=0.1)
    opt_a.zero_grad(), opt_b.zero_grad()
    with_decay(x).sum().backward()
    (model(x).sum() + spred.penalty(model)).backward()
    opt_a.step(), opt_b.step()
    for a, b in zip(with_decay.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)


def test_adamw_is_flagged():
    model = spred.sparsify(nn.Linear(3, 1), 0.1)
    with pytest.warns(UserWarning, match="AdamW decays weights decoupled"):
        groups = spred.param_groups(model, optimizer=torch.optim.AdamW)
    with pytest.warns(UserWarning, match="decoupled from the gradient"):
        assert not spred.check_optimizer(torch.optim.AdamW(groups, lr=1e-3))
    with pytest.warns(UserWarning, match="decoupled from the gradient"):
        spred.check_optimizer(torch.optim.Adam(spred.param_groups(model), lr=1e-3, decoupled_weight_decay=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert spred.check_optimizer(torch.optim.Adam(spred.param_groups(model), lr=1e-3))


def test_set_lam_updates_model_and_optimizer():
    model = spred.sparsify(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)), 0.1)
    opt = torch.optim.SGD(spred.param_groups(model), lr=0.1)
    spred.set_lam(model, 0.4, opt)
    assert set(spred.get_lam(model).values()) == {0.4}
    assert opt.param_groups[0]["weight_decay"] == 0.4
    with pytest.raises(ValueError, match="now mixes lam values"):
        spred.set_lam(model, {"0.*": 0.2}, opt)


def test_state_dict_round_trip_with_weights_only(net):
    spred.sparsify(net, 0.1, groups="out")
    spred.set_lam(net, 0.25)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = spred.sparsify(Net().eval(), 0.1, groups="out")
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), net(x))
    assert set(spred.get_lam(fresh).values()) == {0.25}  # lam travels with the checkpoint
    other = spred.sparsify(Net().eval(), 0.1, groups=None)
    with pytest.raises(ValueError, match="saved with groups='out'"):
        other.load_state_dict(net.state_dict())


def test_collapse_leaves_the_original_usable(net):
    spred.sparsify(net, 0.1)
    collapsed = spred.collapse(net)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(collapsed(x), net(x))
    assert spred.is_sparsified(net) and type(net.head).__name__ == "ParametrizedLinear"


# ---- error messages ---------------------------------------------------------------


def test_errors_name_the_parameter_and_value(net):
    with pytest.raises(ValueError, match=r"The 'lam' parameter of sparsify must be a float in the range \[0, inf\). Got -0.1 instead"):
        spred.sparsify(net, -0.1)
    with pytest.raises(TypeError, match=r"The 'lam' parameter of sparsify .* Got '0.1' of type str"):
        spred.sparsify(net, "0.1")
    with pytest.raises(ValueError, match=r"The 'lam\['head.\*'\]' parameter of sparsify .* Got nan"):
        spred.sparsify(net, {"head.*": float("nan")})
    with pytest.raises(ValueError, match=r"The 'groups' parameter of sparsify must be one of \(None, 'out', 'in', 'channels'\). Got 'rows'"):
        spred.sparsify(net, 0.1, groups="rows")
    with pytest.raises(ValueError, match=r"The 'depth' parameter of sparsify must be an int in the range \[2, 16\]. Got 1"):
        spred.sparsify(net, 0.1, depth=1)
    with pytest.raises(ValueError, match=r"The 'init' parameter of sparsify"):
        spred.sparsify(net, 0.1, init="random")
    with pytest.raises(TypeError, match=r"sparsify expects a torch.nn.Module; got Tensor"):
        spred.sparsify(torch.zeros(3), 0.1)
    with pytest.raises(TypeError, match=r"The 'include' parameter of sparsify"):
        spred.sparsify(net, 0.1, include=("Linear",))
    with pytest.raises(ValueError, match=r"has keys that match no sparsifiable weight: \['nope.\*'\]"):
        spred.sparsify(net, {"*": 0.1, "nope.*": 0.1})
    assert not spred.is_sparsified(net)  # nothing registered by a failed call


def test_groups_on_a_1d_weight(net):
    with pytest.raises(ValueError, match=r"groups='out' needs a weight with ndim >= 2; 'features.1.weight' has shape \(8,\)"):
        spred.sparsify(net, 0.1, groups="out", include=(nn.BatchNorm2d, nn.Linear))
    assert not spred.is_sparsified(net)


def test_sparsifying_twice(net):
    spred.sparsify(net, 0.1)
    with pytest.raises(ValueError, match=r"'features.0.weight' is already sparsified"):
        spred.sparsify(net, 0.2)


def test_other_parametrization_is_refused():
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'weight' already carries a parametrization"):
        spred.sparsify(layer, 0.1)


def test_no_matching_layer():
    with pytest.raises(ValueError, match=r"sparsify found no weight to sparsify: no module of type \(Linear, Conv1d, Conv2d\)"):
        spred.sparsify(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.1)


def test_not_sparsified_errors():
    plain = nn.Linear(3, 2)
    for fn, name in [(spred.collapse, "collapse"), (spred.param_groups, "param_groups"), (spred.penalty, "penalty")]:
        with pytest.raises(NotSparsifiedError, match=rf"{name} needs a model sparsified by spred.sparsify; Linear has no spred factors"):
            fn(plain)
    with pytest.raises(NotSparsifiedError, match=r"Linear.weight is not sparsified"):
        spred.factors(plain)
    with pytest.raises(ValueError, match=r"The 'threshold' parameter of collapse"):
        spred.collapse(spred.sparsify(plain, 0.1), threshold=-1)


def test_penalty_in_loss_route_for_adamw():
    model = spred.sparsify(nn.Linear(3, 1), 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = spred.param_groups(model, optimizer=torch.optim.AdamW, penalty_in_loss=True)
        opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01)
        assert spred.check_optimizer(opt)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["penalty_in_loss"]
    spred.set_lam(model, 0.3, opt)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["lam"] == 0.3
    opt.param_groups[0]["weight_decay"] = 0.3
    with pytest.warns(UserWarning, match="the penalty is applied twice"):
        assert not spred.check_optimizer(opt)


def test_collapse_under_no_grad_keeps_weights_as_parameters():
    model = spred.sparsify(nn.Linear(3, 2), 0.1)
    with torch.no_grad():
        out = spred.collapse(model)
    assert isinstance(out.weight, nn.Parameter) and "weight" in dict(out.named_parameters())
    assert list(dict(out.named_parameters())) == ["weight", "bias"]


# ---- reliability (issue 19): set_lam all or nothing, checkpoint lam, depth bound ---------------------------


def _two_layers():
    model = spred.sparsify(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)), 0.1)
    return model, torch.optim.SGD(spred.param_groups(model), lr=0.1)


def test_set_lam_refuses_unknown_names():
    model, opt = _two_layers()
    with pytest.raises(ValueError, match=r"keys that match no sparsified tensor: \['typo.weight'\]. The sparsified tensors are \['0.weight', '1.weight'\]"):
        spred.set_lam(model, {"typo.weight": 5}, opt)
    with pytest.raises(ValueError, match=r"keys that never apply, .* matched by an earlier key first: \['0.weight'\]"):
        spred.set_lam(model, {"*": 0.2, "0.weight": 0.5})
    assert spred.get_lam(model) == {"0.weight": 0.1, "1.weight": 0.1}


def test_set_lam_is_all_or_nothing():
    model, opt = _two_layers()
    with pytest.raises(ValueError, match=r"The 'lam\['1.weight'\]' parameter of set_lam must be a float in the range \[0, inf\). Got -1"):
        spred.set_lam(model, {"0.weight": 0.5, "1.weight": -1}, opt)
    with pytest.raises(ValueError, match="now mixes lam values"):
        spred.set_lam(model, {"0.*": 0.5}, opt)  # one optimizer group holds both tensors
    assert spred.get_lam(model) == {"0.weight": 0.1, "1.weight": 0.1}  # the model was left as it was
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    other, _ = _two_layers()
    foreign = torch.optim.SGD(spred.param_groups(spred.sparsify(nn.Sequential(nn.Linear(2, 2)), {"0": 0.1})), lr=0.1)
    foreign.param_groups[0]["names"] = ["nope.weight"]
    with pytest.raises(ValueError, match=r"an optimizer group holds \['nope.weight'\], not sparsified tensors of this model"):
        spred.set_lam(other, 0.3, foreign)
    assert spred.get_lam(other) == {"0.weight": 0.1, "1.weight": 0.1}
    spred.set_lam(model, {"0.*": 0.5, "1.*": 0.5}, opt)
    assert spred.get_lam(model) == {"0.weight": 0.5, "1.weight": 0.5} and opt.param_groups[0]["weight_decay"] == 0.5


@pytest.mark.parametrize(
    ("lam", "match"),
    [
        (-1.0, r"cannot load the spred state of 'head.weight': The 'lam' parameter of the checkpoint's spred state must be a float in the range \[0, inf\). Got -1.0"),
        (float("nan"), r"'head.weight': .*Got nan"),
        ("0.1", r"'head.weight': .*Got '0.1' of type str"),
        (None, r"'head.weight': the spred state in the checkpoint must be a dict with a 'lam' entry"),
    ],
)
def test_checkpoint_with_a_bad_lam_is_refused(net, lam, match):
    spred.sparsify(net, 0.1)
    state = net.state_dict()
    key = "head.parametrizations.weight.0._extra_state"
    state[key] = {k: v for k, v in state[key].items() if k != "lam"} if lam is None else {**state[key], "lam": lam}
    fresh = spred.sparsify(Net(), 0.1)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert spred.get_lam(fresh)["head.weight"] == 0.1


def test_depth_is_bounded():
    with pytest.raises(ValueError, match=r"The 'depth' parameter of sparsify must be an int in the range \[2, 16\]. Got 1000000 instead"):
        spred.sparsify(nn.Linear(3, 2), 0.1, depth=10**6)
    with pytest.raises(TypeError, match=r"The 'depth' parameter of sparsify .* Got 2.0 of type float"):
        spred.sparsify(nn.Linear(3, 2), 0.1, depth=2.0)
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    before = layer(x)
    spred.sparsify(layer, 0.1, depth=16)
    assert len(spred.factors(layer)) == 16
    torch.testing.assert_close(layer(x), before)
