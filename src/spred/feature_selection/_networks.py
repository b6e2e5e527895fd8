"""The networks of :class:`~spred.feature_selection.SpredSelector`, with one shared input layer.

Every built-in network reads the input through a single ``nn.Linear`` called
``input``. The selector sparsifies that layer with ``groups="in"``: one spred scalar
``s_j`` per input feature ``j`` multiplies the whole column ``W[:, j]``, i.e. all of
the feature's outgoing weights. With coupled weight decay ``lam`` on ``s`` and
``W`` the penalty is, at balance, the group lasso ``lam * sum_j ||v[:, j]||_2`` over
every weight leaving feature ``j``, so a feature that is dropped is exactly zero
everywhere in the network.

* ``"linear"`` (the paper's f_l): ``f(x) = input(x)``, a linear model.
* ``"mlp"`` (f_n): ``f(x) = head(relu(input(x)))``, a multilayer perceptron.
* ``"ensemble"`` (f_l + f_n): the rows of ``input`` are split: the first
  ``n_outputs`` rows are the linear model, the others are the MLP's first hidden
  layer, and ``f(x) = z[:, :n_outputs] + head(relu(z[:, n_outputs:]))`` with
  ``z = input(x)``. Because both parts read the input through the same layer, one
  scalar per feature gates the linear and the nonlinear part together: the group
  of feature ``j`` is its linear coefficients *and* its hidden-layer weights, so the
  penalty is exactly group lasso over all of the feature's outgoing weights. (A
  separate gate ``x * g`` in front of two networks would penalise ``g`` only, and
  the networks could undo any shrinkage of ``g`` by growing their own weights.)

This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["INPUT_LAYER", "KINDS", "SelectorNet", "build_network"]

INPUT_LAYER = "input"
KINDS = ("linear", "mlp", "ensemble")


class SelectorNet(nn.Module):
    """Linear model, MLP, or their sum, reading the input through one ``nn.Linear``.

    Parameters
    ----------
    n_features : int
        Number of input features.
    n_outputs : int
        Number of outputs (1 for regression and binary classification, the
        number of classes otherwise).
    kind : {"linear", "mlp", "ensemble"}
        Which network (see the module docstring).
    hidden_layer_sizes : tuple of int, default=(32,)
        Widths of the MLP's hidden layers (ignored for ``"linear"``).

    Attributes
    ----------
    input : nn.Linear
        The only layer that sees the input; shape ``(n_linear + hidden[0], n_features)``.
    head : nn.Sequential or None
        The MLP after its first hidden layer (None for ``"linear"``).
    n_linear : int
        How many rows of ``input`` form the linear part (0 for ``"mlp"``).
    """

    def __init__(self, n_features: int, n_outputs: int, kind: str = "ensemble", hidden_layer_sizes: tuple[int, ...] = (32,)):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"The 'kind' parameter of SelectorNet must be one of {KINDS}. Got {kind!r} instead.")
        hidden = tuple(int(h) for h in hidden_layer_sizes)
        if kind != "linear" and (not hidden or min(hidden) < 1):
            raise ValueError(
                f"The 'hidden_layer_sizes' parameter of SelectorNet must be a non-empty tuple of positive ints for kind={kind!r}. "
                f"Got {hidden_layer_sizes!r} instead."
            )
        self.kind = kind
        self.n_outputs = int(n_outputs)
        self.n_linear = 0 if kind == "mlp" else self.n_outputs
        n_hidden = 0 if kind == "linear" else hidden[0]
        self.input = nn.Linear(n_features, self.n_linear + n_hidden)
        if kind == "linear":
            self.head = None
        else:
            layers: list[nn.Module] = [nn.ReLU()]
            for a, b in zip(hidden[:-1], hidden[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(hidden[-1], self.n_outputs))
            self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.input(x)
        if self.head is None:
            return z
        out = self.head(z[:, self.n_linear :])
        if self.n_linear:
            out = out + z[:, : self.n_linear]
        return out


def build_network(
    kind: str, n_features: int, n_outputs: int, hidden_layer_sizes: tuple[int, ...] = (32,), *, seed: int = 0
) -> SelectorNet:
    """A freshly initialised :class:`SelectorNet`, reproducible from ``seed``.

    The initialisation uses its own random stream (the global torch RNG is left
    as it was).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SelectorNet(n_features, n_outputs, kind, hidden_layer_sizes)
