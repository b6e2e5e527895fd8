"""Reference networks: shapes, parameter counts, spred round trips, the factory and its errors."""

import inspect

import pytest
import torch
from torch import nn

import spred
import spred.models as models
from spred.models import MLP, CifarCNN, LeNet5Caffe, LeNet300100, ResNet18, ResNet20, SmallVGG, StudyCNN, build, list_models

# name -> (constructor kwargs, input shape, output classes)
CASES = {
    "mlp": ({"in_features": 784, "hidden": (64, 32), "out_features": 10}, (2, 1, 28, 28), 10),
    "lenet300100": ({}, (2, 1, 28, 28), 10),
    "lenet5caffe": ({}, (2, 1, 28, 28), 10),
    "smallvgg": ({"in_channels": 3}, (2, 3, 32, 32), 10),
    "resnet20": ({}, (2, 3, 32, 32), 10),
    "resnet56": ({}, (2, 3, 32, 32), 10),
    "resnet18": ({}, (2, 3, 32, 32), 10),
    "studycnn": ({}, (2, 1, 28, 28), 10),
    "cifarcnn": ({}, (2, 3, 32, 32), 10),
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_list_models_matches_the_cases():
    assert list_models() == list(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape(name):
    kwargs, shape, classes = CASES[name]
    model = build(name, seed=0, **kwargs).eval()
    assert model(torch.randn(shape)).shape == (shape[0], classes)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (LeNet300100(), 266_610),  # 784*300+300 + 300*100+100 + 100*10+10
        (LeNet5Caffe(), 431_080),  # 520 + 25,050 + 400,500 + 5,010
        (ResNet20(), 269_722),  # He et al. "0.27M" (option A shortcuts)
        (ResNet20(shortcut="B"), 272_474),  # + 1x1 projections and their BN
        (ResNet18(), 11_173_962),  # CIFAR ResNet-18, "11.17M"
        (MLP(784, (300, 100), 10), 266_610),
        (StudyCNN(), 20_522),  # 208 + 3,216 + 16,448 + 650 (the old docstring said 20,490)
        (CifarCNN(), 1_031_850),  # convs 864 + 18,432 + 73,728 + 147,456, BN 2 x 352, fc 786,816 + 3,850
    ],
    ids=["lenet300100", "lenet5caffe", "resnet20", "resnet20-B", "resnet18", "mlp-as-lenet", "studycnn", "cifarcnn"],
)
def test_parameter_counts_match_the_published_figures(model, expected):
    assert n_params(model) == expected


def test_lenet5caffe_layers_are_caffe_s():
    net = LeNet5Caffe()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(20, (5, 5), (0, 0)), (50, (5, 5), (0, 0))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(800, 500), (500, 10)]


def test_resnet18_is_the_cifar_variant():
    net = ResNet18()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_resnet20_has_three_stages_of_three_blocks():
    net = ResNet20()
    assert [len(stage) for stage in net.layers] == [3, 3, 3]
    assert [stage[0].conv1.out_channels for stage in net.layers] == [16, 32, 64]


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_small_vgg_takes_28_and_32_pixel_inputs(in_channels, size):
    net = SmallVGG(in_channels=in_channels).eval()
    assert net(torch.randn(3, in_channels, size, size)).shape == (3, 10)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("groups", [None, "out"])
def test_sparsify_then_collapse_keeps_the_function(name, groups):
    kwargs, shape, _ = CASES[name]
    model = build(name, seed=0, **kwargs).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    spred.sparsify(model, lam=1e-4, groups=groups)
    plain = spred.collapse(model)
    with torch.no_grad():
        sparsified, after = model(x), plain(x)
    torch.testing.assert_close(sparsified, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not spred.is_sparsified(plain)
    assert n_params(plain) == n_params(build(name, seed=0, **kwargs))
    assert all(type(m) in (nn.Linear, nn.Conv2d) for m in plain.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_build_normalises_names_and_seeds_without_touching_the_global_rng():
    state = torch.get_rng_state()
    a, b = build("LeNet-300-100", seed=3), build("lenet_300_100", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build("lenet300100", seed=4)
    assert not torch.equal(a[1].weight, c[1].weight)
    assert build("resnet20", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_build_errors():
    with pytest.raises(ValueError, match=r"The 'name' parameter of build must be one of \['mlp', .*Got 'alexnet' instead"):
        build("alexnet")
    with pytest.raises(TypeError, match=r"The 'name' parameter of build must be a str. Got 3 of type int"):
        build(3)
    with pytest.raises(TypeError, match=r"The 'seed' parameter of build must be an int or None. Got 1.5"):
        build("mlp", in_features=3, seed=1.5)


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: MLP(0), ValueError, r"The 'in_features' parameter of MLP must be an int >= 1. Got 0"),
        (lambda: MLP(4, out_features=-1), ValueError, r"The 'out_features' parameter of MLP must be an int >= 1. Got -1"),
        (lambda: MLP(4, hidden=32), TypeError, r"The 'hidden' parameter of MLP must be a sequence of ints"),
        (lambda: MLP(4, hidden=(8, 0)), ValueError, r"The 'hidden' parameter of MLP must be an int >= 1. Got 0"),
        (lambda: MLP(4, activation="swish"), ValueError, r"The 'activation' parameter of MLP must be one of \['gelu', 'relu', 'sigmoid', 'tanh'\]. Got 'swish'"),
        (lambda: MLP(4, dropout=1.0), ValueError, r"The 'dropout' parameter of MLP must be a float in the range \[0, 1\). Got 1.0"),
        (lambda: LeNet5Caffe(input_size=12), ValueError, r"The 'input_size' parameter of LeNet5Caffe must be at least 16.*Got 12"),
        (lambda: SmallVGG(widths=()), ValueError, r"The 'widths' parameter of SmallVGG must be a non-empty sequence of ints >= 1. Got \(\)"),
        (lambda: SmallVGG(convs_per_stage=0), ValueError, r"The 'convs_per_stage' parameter of SmallVGG must be an int >= 1. Got 0"),
        (lambda: ResNet20(shortcut="C"), ValueError, r"The 'shortcut' parameter of ResNet20 must be one of \('A', 'B'\). Got 'C'"),
        (lambda: StudyCNN(input_size=12), ValueError, r"The 'input_size' parameter of StudyCNN must be at least 16. Got 12"),
        (lambda: StudyCNN(hidden=0), ValueError, r"The 'hidden' parameter of StudyCNN must be an int >= 1. Got 0"),
        (lambda: CifarCNN(input_size=20), ValueError, r"The 'input_size' parameter of CifarCNN must be a multiple of 8. Got 20"),
        (lambda: CifarCNN(widths=(8, 8)), TypeError, r"The 'widths' parameter of CifarCNN must be 4 ints"),
        (lambda: MLP(1.5), TypeError, r"The 'in_features' parameter of MLP must be an int >= 1. Got 1.5 of type float"),
    ],
)
def test_constructor_errors(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


def test_mlp_options():
    net = MLP(5, hidden=(7,), out_features=3, activation="tanh", dropout=0.1, bias=False)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Flatten, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear]
    assert net[1].bias is None
    assert MLP(5, hidden=(), out_features=2)(torch.randn(4, 5)).shape == (4, 2)  # a linear model


def test_public_api_is_exported_and_documented():
    assert sorted(models.__all__) == sorted(set(models.__all__))
    for name in models.__all__:
        obj = getattr(models, name)
        assert inspect.getdoc(obj), f"spred.models.{name} has no docstring"
    params = inspect.signature(build).parameters
    doc = inspect.getdoc(build)
    assert all(p in doc for p in params if p != "kwargs")
