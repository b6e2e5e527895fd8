"""Fully connected reference networks: a configurable MLP and LeNet-300-100."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spred._validation import check_int

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def _check_width(value, name: str, who: str) -> int:
    return check_int(value, name, who, 1)


class MLP(nn.Sequential):
    """Multi-layer perceptron ``in_features -> hidden... -> out_features``.

    Inputs of any shape ``(batch, ...)`` are flattened first, so the same network
    takes tabular rows or images. Each hidden layer is ``Linear -> activation``
    (``-> Dropout`` when ``dropout > 0``); the last layer is a plain ``Linear``
    (logits for classification, values for regression).

    Parameters
    ----------
    in_features : int
        Number of input features (``28 * 28 = 784`` for MNIST).
    hidden : sequence of int, default=(300, 100)
        Width of each hidden layer; ``()`` gives a linear model.
    out_features : int, default=10
        Number of outputs.
    activation : {"relu", "tanh", "gelu", "sigmoid"}, default="relu"
    dropout : float, default=0.0
        Dropout probability after each hidden activation.
    bias : bool, default=True

    Examples
    --------
    >>> import torch
    >>> MLP(20, hidden=(64,), out_features=2)(torch.zeros(5, 20)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (300, 100),
        out_features: int = 10,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ):
        who = "MLP"
        _check_width(in_features, "in_features", who)
        _check_width(out_features, "out_features", who)
        if isinstance(hidden, int) or not isinstance(hidden, Sequence):
            raise TypeError(f"The 'hidden' parameter of MLP must be a sequence of ints, e.g. (300, 100). Got {hidden!r} instead.")
        for width in hidden:
            _check_width(width, "hidden", who)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"The 'activation' parameter of MLP must be one of {sorted(_ACTIVATIONS)}. Got {activation!r} instead.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"The 'dropout' parameter of MLP must be a float in the range [0, 1). Got {dropout!r} instead.")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden]
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out, bias=bias), _ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], out_features, bias=bias))
        super().__init__(*layers)


class LeNet300100(MLP):
    """LeNet-300-100: the fully connected MNIST network ``784 -> 300 -> 100 -> 10`` (266,610 parameters).

    The network of LeCun et al. (1998) used as a compression benchmark by Han et al.
    (2015) and Sparse Variational Dropout (Molchanov et al., 2017): ReLU activations,
    no dropout.

    Parameters
    ----------
    in_features : int, default=784
    num_classes : int, default=10
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__(in_features, (300, 100), num_classes)
