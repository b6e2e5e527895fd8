"""The inputs and outputs of a model, as spred.compress and the channel groups of spred.nn take and read them.

``example_inputs`` is a tensor (``model(x)``), a non-empty tuple / list of positional
inputs (``model(*inputs)``) or a dict of keyword inputs (``model(**inputs)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def check_module(model, name: str, who: str) -> nn.Module:
    """``model`` if it is a :class:`torch.nn.Module`; otherwise a TypeError naming its type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"The '{name}' parameter of {who} must be a torch.nn.Module. Got {type(model).__name__} instead.")
    return model


def split_inputs(example_inputs, who: str) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) > 0:
        return tuple(example_inputs), {}
    raise TypeError(
        f"The 'example_inputs' parameter of {who} must be a tensor, a non-empty tuple/list of positional inputs "
        f"or a dict of keyword inputs. Got {type(example_inputs).__name__} instead."
    )


def run(model: nn.Module, inputs: tuple[tuple, dict]):
    """``model(*args, **kwargs)`` for ``inputs = split_inputs(...)``."""
    args, kwargs = inputs
    return model(*args, **kwargs)


def flat_tensors(out) -> list[torch.Tensor]:
    """Every tensor in a (nested) output of tensors, tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flat_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flat_tensors(v)]
    return []
