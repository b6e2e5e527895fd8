"""Fully connected reference networks: a configurable MLP and LeNet-300-100."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from spred._validation import check_float, check_int, param_error

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


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
        check_int(in_features, "in_features", who, 1)
        check_int(out_features, "out_features", who, 1)
        if isinstance(hidden, (int, str, bytes)) or not isinstance(hidden, Sequence):
            raise param_error(TypeError, "hidden", who, "a sequence of ints, e.g. (300, 100)", hidden)
        for width in hidden:
            check_int(width, "hidden", who, 1)
        if activation not in _ACTIVATIONS:
            raise param_error(ValueError, "activation", who, f"one of {sorted(_ACTIVATIONS)}", activation)
        check_float(dropout, "dropout", who, 0, 1, high_open=True)
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
