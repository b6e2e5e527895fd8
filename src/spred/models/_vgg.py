"""A small VGG-style CNN for 28x28 (MNIST, Fashion-MNIST) and 32x32 (CIFAR) images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spred._validation import check_int, param_error


class SmallVGG(nn.Module):
    """VGG-style CNN: stages of ``(conv 3x3 -> BN -> ReLU) x convs_per_stage -> max-pool 2``.

    After the last stage a global average pool and one ``Linear`` give the logits,
    so the same network takes 28x28 and 32x32 inputs (any size >= ``2**len(widths)``).
    With the defaults (widths 32/64/128, two convolutions per stage) it has about
    0.29M parameters: large enough to be worth compressing, small enough for CPU tests.

    Parameters
    ----------
    in_channels : int, default=3
        1 for MNIST / Fashion-MNIST, 3 for CIFAR.
    num_classes : int, default=10
    widths : sequence of int, default=(32, 64, 128)
        Output channels of each stage.
    convs_per_stage : int, default=2
    batch_norm : bool, default=True
        Without batch norm the convolutions carry a bias.

    The convolutions start from He initialisation (``kaiming_normal_``, fan-out,
    ReLU gain) with zero biases, as in the VGG paper's successors: without batch
    norm, PyTorch's default initialisation shrinks the signal at every layer and
    the network barely trains.

    Examples
    --------
    >>> import torch
    >>> SmallVGG(in_channels=1)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 2,
        batch_norm: bool = True,
    ):
        super().__init__()
        if isinstance(widths, (int, str, bytes)) or not isinstance(widths, Sequence) or not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise param_error(ValueError, "widths", "SmallVGG", "a non-empty sequence of ints >= 1", widths)
        check_int(convs_per_stage, "convs_per_stage", "SmallVGG", 1)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
