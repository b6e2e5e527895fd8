"""ResNets for 32x32 inputs: ResNet-20 (He et al., 2016, CIFAR) and the CIFAR variant of ResNet-18."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from spred._validation import check_choice

SHORTCUTS = ("A", "B")


class _PadShortcut(nn.Module):
    """He et al.'s option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _PadShortcut(out_channels - in_channels)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class _ResNet(nn.Module):
    """A 3x3 stem (no max-pool), stages of basic blocks (the first of each stage but the
    first strided), global average pool and a linear classifier."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], in_channels: int, num_classes: int, shortcut: str, who: str):
        super().__init__()
        check_choice(shortcut, "shortcut", who, SHORTCUTS)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        channels = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(channels, width, stride, shortcut)]
            layers += [BasicBlock(width, width, 1, shortcut) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(self.pool(out).flatten(1))


class ResNet20(_ResNet):
    """ResNet-20 for CIFAR (He et al., 2016, section 4.2): about 0.27M parameters.

    Three stages of three basic blocks with 16, 32 and 64 channels on 32x32 inputs.

    Parameters
    ----------
    num_classes : int, default=10
    in_channels : int, default=3
    shortcut : {"A", "B"}, default="A"
        How a block that changes the width is bypassed. ``"A"`` (the paper's CIFAR
        choice, 269,722 parameters) subsamples and zero-pads, without parameters;
        ``"B"`` uses a 1x1 convolution and batch norm (272,474 parameters). Use ``"B"``
        when channels are to be removed physically: a padded shortcut ties the
        channel counts of consecutive stages together in a way pruning tools do not
        track.

    Examples
    --------
    >>> import torch
    >>> ResNet20()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
        super().__init__((16, 32, 64), (3, 3, 3), in_channels, num_classes, shortcut, "ResNet20")


class ResNet56(_ResNet):
    """ResNet-56 for CIFAR (He et al., 2016, section 4.2): three stages of nine basic blocks, 16-32-64 channels.

    Parameters as :class:`ResNet20` (about 0.85M parameters with ``shortcut="A"``).

    Examples
    --------
    >>> import torch
    >>> ResNet56()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
        super().__init__((16, 32, 64), (9, 9, 9), in_channels, num_classes, shortcut, "ResNet56")


class ResNet18(_ResNet):
    """ResNet-18, CIFAR variant: 3x3 stem with stride 1 and no max-pool (11,173,962 parameters).

    Four stages of two basic blocks with 64, 128, 256 and 512 channels and 1x1
    projection shortcuts (option B), as in the widely used ``kuangliu/pytorch-cifar``
    and in the STR / spred CIFAR baselines at 32x32 resolution.

    Parameters
    ----------
    num_classes : int, default=10
    in_channels : int, default=3

    Examples
    --------
    >>> import torch
    >>> ResNet18()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__((64, 128, 256, 512), (2, 2, 2, 2), in_channels, num_classes, "B", "ResNet18")
