"""Small test networks for spred.compress, built here (independent of spred.models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=10, hidden=(32, 24), d_out=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.head = nn.Linear(hidden[1], d_out)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class VGGish(nn.Module):
    """conv-BN-ReLU blocks with and without zero padding, max-pool, and a flatten -> Linear head."""

    def __init__(self, c=(8, 12, 16), n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c[0], 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, padding=0, bias=False)  # no zero padding: constants fold
        self.bn2 = nn.BatchNorm2d(c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1)  # zero padding: nonzero constants cannot fold
        self.bn3 = nn.BatchNorm2d(c[2])
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(c[2] * 3 * 3, 32)
        self.head = nn.Linear(32, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(torch.relu(self.bn3(self.conv3(x))))
        return self.head(torch.relu(self.fc(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A stem, two identity blocks (residual adds couple stem and block outputs) and a downsampling block."""

    def __init__(self, w=8, n_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = BasicBlock(w, 2 * w, stride=2)
        self.fc = nn.Linear(2 * w, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial eval-mode BatchNorm statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


NETWORKS = {"mlp": MLP, "vgg": VGGish, "resnet": TinyResNet}
INPUT_SHAPES = {"mlp": (6, 10), "vgg": (4, 3, 8, 8), "resnet": (4, 3, 8, 8)}


@pytest.fixture
def make():
    """``make(name, seed=0)``: a test network in eval mode with random weights and BatchNorm
    statistics, and example inputs for it."""

    def _make(name: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # parameter init of the modules, without touching the caller's RNG
            model = _randomize_bn(NETWORKS[name](), g)
        x = torch.randn(*INPUT_SHAPES[name], generator=g)
        return model, x

    return _make


@pytest.fixture
def gen():
    """A seeded torch generator (tests never touch the global RNG)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
