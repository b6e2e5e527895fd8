"""The plain CNN of the CIFAR-10 optimizer study: four convolutions with BatchNorm, two fully connected layers."""

from __future__ import annotations

from torch import nn

from spred._validation import check_int, param_error


class CifarCNN(nn.Module):
    """A standard CIFAR CNN (1,031,850 parameters with the defaults), the kind the optimizer comparison used.

    ``conv 32 -> BN -> ReLU -> max-pool 2 -> conv 64 -> BN -> ReLU -> max-pool 2 ->
    conv 128 -> BN -> ReLU -> conv 128 -> BN -> ReLU -> max-pool 2 -> fc 384 -> ReLU -> fc 10``,
    3x3 convolutions with padding 1 and no bias (BatchNorm has the shift). About 20.5M
    multiply-adds per 32x32 image; three quarters of the parameters sit in the first
    fully connected layer, as in the usual "several convolutions, then dense layers"
    classifiers.

    Parameters
    ----------
    in_channels : int, default=3
    num_classes : int, default=10
    widths : 4 ints, default=(32, 64, 128, 128)
        Filters of the four convolutions.
    hidden : int, default=384
        Neurons of the hidden fully connected layer.
    input_size : int, default=32
        Side of the square input; a multiple of 8.

    Examples
    --------
    >>> import torch
    >>> CifarCNN()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 128), hidden: int = 384, input_size: int = 32):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, (tuple, list)) or len(widths) != 4:
            raise param_error(TypeError, "widths", "CifarCNN", "4 ints (filters of the four convolutions)", widths)
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("hidden", hidden), *(("widths", w) for w in widths)):
            check_int(value, name, "CifarCNN", 1)
        check_int(input_size, "input_size", "CifarCNN", 8)
        if input_size % 8:
            raise param_error(ValueError, "input_size", "CifarCNN", "a multiple of 8", input_size)
        c1, c2, c3, c4 = widths

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, c1), nn.MaxPool2d(2), *block(c1, c2), nn.MaxPool2d(2), *block(c2, c3), *block(c3, c4), nn.MaxPool2d(2),
        )  # fmt: skip
        side = input_size // 8
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c4 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
