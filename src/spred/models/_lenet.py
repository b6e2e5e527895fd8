"""LeNet-5-Caffe, the convolutional MNIST compression benchmark."""

from __future__ import annotations

from torch import nn


class LeNet5Caffe(nn.Module):
    """LeNet-5 as in Caffe's MNIST example (431,080 parameters for 28x28 inputs).

    ``conv 20@5x5 -> max-pool 2 -> conv 50@5x5 -> max-pool 2 -> fc 500 -> ReLU -> fc 10``,
    no padding, ReLU only after the first fully connected layer (as in Caffe's
    ``lenet_train_test.prototxt``). This is the variant used by Han et al. (2015) and
    Sparse Variational Dropout (Molchanov et al., 2017).

    Parameters
    ----------
    in_channels : int, default=1
    num_classes : int, default=10
    input_size : int, default=28
        Height (= width) of the input images; 28 gives a 4x4x50 = 800 feature map.

    Examples
    --------
    >>> import torch
    >>> LeNet5Caffe()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28):
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"The 'input_size' parameter of LeNet5Caffe must be at least 16 (two 5x5 convolutions and two poolings). Got {input_size!r} instead.")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
