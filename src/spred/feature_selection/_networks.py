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

It also builds the selector's network from its ``model`` parameter (a kind, a module
or a factory), checks it against the task, and holds the layer surgery the selector
needs: finding the input layer of a user's network and swapping it for a narrower or
wider one.

This module imports only torch (and spred's validation).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from spred._validation import check_choice, param_error

__all__ = [
    "INPUT_LAYER", "KINDS", "SelectorNet", "build_network", "find_input_layer", "make_network", "new_linear", "probe_network",
    "swap_layer", "weight_name",
]  # fmt: skip

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
        check_choice(kind, "kind", "SelectorNet", KINDS)
        hidden = tuple(int(h) for h in hidden_layer_sizes)
        if kind != "linear" and (not hidden or min(hidden) < 1):
            raise param_error(ValueError, "hidden_layer_sizes", "SelectorNet", f"a non-empty tuple of positive ints for kind={kind!r}", hidden_layer_sizes)
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


def make_network(model, n_features: int, n_outputs: int, hidden: tuple[int, ...], seed: int) -> nn.Module:
    """The network for the selector's ``model``: a built-in kind, a deep copy of a module, or a factory's result.

    A factory ``model(n_features, n_outputs)`` is called with the global generator
    seeded by ``seed`` (and restored afterwards).
    """
    if isinstance(model, str):
        return build_network(model, n_features, n_outputs, hidden, seed=seed)
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = model(n_features, n_outputs)
    if not isinstance(net, nn.Module):
        raise TypeError(f"The 'model' callable of SpredSelector must return a torch.nn.Module. Got {type(net).__name__} instead.")
    return net


def probe_network(model, n_features: int, hidden: tuple[int, ...], n_classes: int, input_layer: str | None, seed: int) -> tuple[str, int, str]:
    """Input layer name, number of outputs and loss kind (``"squared"``, ``"binary"``, ``"multinomial"``).

    ``n_classes`` is 0 for regression. A user's network is built once and run on two
    zero rows to read its output width, which must fit the task.
    """
    n_out = 1 if n_classes <= 2 else n_classes
    if isinstance(model, str):
        kind = "squared" if not n_classes else ("binary" if n_classes == 2 else "multinomial")
        return INPUT_LAYER, n_out, kind
    net = make_network(model, n_features, n_out, hidden, seed)
    layer = find_input_layer(net, n_features, input_layer)
    with torch.no_grad():
        width = net(torch.zeros(2, n_features, dtype=next(net.parameters()).dtype)).reshape(2, -1).shape[1]
    if not n_classes and width == 1:
        return layer, 1, "squared"
    if n_classes and width == 1 and n_classes == 2:
        return layer, 1, "binary"
    if n_classes and width == n_classes:
        return layer, width, "multinomial"
    wanted = "1" if not n_classes else ("1 (sigmoid) or 2 (softmax)" if n_classes == 2 else str(n_classes))
    task = "classification" if n_classes else "regression"
    raise ValueError(f"The model of SpredSelector returns {width} outputs per sample; this task needs {wanted} (task={task!r}, {n_classes or 'no'} classes).")


# --------------------------------------------------------------------------- layer surgery


def find_input_layer(net: nn.Module, n_features: int, name: str | None) -> str:
    """Fully qualified name of the ``nn.Linear`` that reads the input (``name`` if given, checked)."""
    if name is not None:
        try:
            layer = net.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"The 'input_layer' parameter of SpredSelector names {name!r}, which is not a submodule of the model.") from exc
        if not isinstance(layer, nn.Linear) or layer.in_features != n_features:
            raise ValueError(
                f"The 'input_layer' {name!r} must be an nn.Linear with in_features={n_features} (the number of features). "
                f"Got {layer!r} instead."
            )
        return name
    found = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.in_features == n_features]
    if len(found) != 1:
        what = "no nn.Linear" if not found else f"{len(found)} nn.Linear layers ({found})"
        raise ValueError(
            f"SpredSelector needs the model's input layer: an nn.Linear with in_features={n_features}; the model has {what} "
            "with that many inputs. Pass input_layer='<name>' to say which one reads the input."
        )
    return found[0]


def swap_layer(net: nn.Module, name: str, layer: nn.Module) -> nn.Module:
    """Put ``layer`` at ``name`` in ``net``; returns the (possibly new) root module."""
    if name == "":
        return layer
    net.set_submodule(name, layer)
    return net


def new_linear(n_in: int, n_out: int, bias: bool, **kwargs) -> nn.Linear:
    """An ``nn.Linear`` whose values are overwritten right away, made without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        return nn.Linear(n_in, n_out, bias=bias, **kwargs)


def weight_name(layer_name: str) -> str:
    """The fully qualified name of a layer's weight (``"weight"`` for the root)."""
    return f"{layer_name}.weight" if layer_name else "weight"
