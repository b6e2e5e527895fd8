"""The small CNN of ``spred run optimizers`` (MNIST / Fashion-MNIST)."""

from __future__ import annotations

from torch import nn

from spred._validation import check_int, param_error


class StudyCNN(nn.Module):
    """The small CNN of the optimizer study (20,522 parameters for 28x28 inputs).

    ``conv 8@5x5 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 -> fc 64 -> ReLU -> fc 10``.
    The convolutions have no padding, so the constant that a zero filter still emits
    (ReLU of its bias) folds exactly into the next layer's bias and
    :func:`spred.compress.prune_channels` can remove every zero filter and neuron.

    Parameters
    ----------
    in_channels : int, default=1
    num_classes : int, default=10
    widths : (int, int), default=(8, 16)
        Filters of the two convolutions.
    hidden : int, default=64
        Neurons of the hidden fully connected layer.
    input_size : int, default=28

    Examples
    --------
    >>> import torch
    >>> StudyCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (8, 16), hidden: int = 64, input_size: int = 28):
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise param_error(ValueError, "input_size", "StudyCNN", "at least 16", input_size)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, (tuple, list)) or len(widths) != 2:
            raise param_error(TypeError, "widths", "StudyCNN", "a pair of ints (filters of the two convolutions)", widths)
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("widths", widths[0]), ("widths", widths[1]), ("hidden", hidden)):
            check_int(value, name, "StudyCNN", 1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 5), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(widths[1] * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
