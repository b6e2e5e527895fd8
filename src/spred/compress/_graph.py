"""Torch-Pruning's dependency graph of a model, and the first forward pass, with spred's own errors."""

from __future__ import annotations

import math

from torch import nn

from spred.compress import _fold
from spred._inputs import flat_tensors
from spred.nn._graph import find_attention, import_torch_pruning, trace  # noqa: F401  (one place for the optional import and the tracing)




def max_abs_diff(a, b) -> float:
    fa, fb = flat_tensors(a), flat_tensors(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return math.inf
    return max((float((x.double() - y.double()).abs().max()) for x, y in zip(fa, fb) if x.numel()), default=0.0)


# ---------------------------------------------------------------------------
# Decisions, one per dependency group
# ---------------------------------------------------------------------------


def attention_layers(model: nn.Module) -> dict[nn.Module, tuple[str, str]]:
    """``{layer: (attention name, "qkv" or "out")}`` for the q/k/v producers and output projections of the heads."""
    found = {}
    for att in find_attention(model):
        for producer, _ in att.sections:
            found[producer] = (att.name, "qkv")
        if att.out is not None:
            found[att.out] = (att.name, "out")
    return found


def first_pass(model: nn.Module, inputs):
    """The model's outputs on ``inputs`` and the input ranges of its layers; a clear error if it does not run."""
    try:
        return _fold.input_ranges(model, inputs)
    except Exception as exc:
        shapes = [tuple(t.shape) for t in flat_tensors([inputs[0], inputs[1]])]
        raise ValueError(
            f"prune_channels: the model does not run on example_inputs (tensor shapes {shapes}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def build_graph(tp, model: nn.Module, inputs):
    """Torch-Pruning's dependency graph of ``model``, and the autograd nodes of its outputs (:func:`spred.nn._graph.trace`)."""
    try:
        return trace(tp, model, inputs)
    except Exception as exc:
        raise RuntimeError(
            f"prune_channels: Torch-Pruning could not trace the model ({type(exc).__name__}: {exc}); its dependency "
            "graph is needed to find the coupled channels. Trace a submodule, or remove the operation it stops at."
        ) from exc
