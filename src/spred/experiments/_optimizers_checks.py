"""``spred run optimizers``: checks of the study's arguments and the data it is given (clear errors, nothing run)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import torch
from torch import nn

import spred
from spred._validation import check_float, check_int, param_error
from spred.experiments._data import seeded_split
from spred.experiments._optimizers_runs import KINDS, OPTIMIZERS, SPARSITY_TYPES, STRUCTURED_GROUPS


# --------------------------------------------------------------------------- argument checks


def _real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _sequence(values, name: str, who: str, expected: str) -> None:
    """A non-empty sequence that is not a string (TypeError / ValueError otherwise)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise param_error(TypeError, name, who, expected, values)
    if not values:
        raise param_error(ValueError, name, who, expected, values)


def _check_names(values, allowed, name: str, who: str) -> tuple:
    expected = f"a non-empty subset of {list(allowed)}"
    _sequence(values, name, who, expected)
    if not set(values) <= set(allowed):
        raise param_error(ValueError, name, who, expected, values)
    return tuple(values)


def _check_targets(targets, who: str) -> tuple[float, ...]:
    expected = "a non-empty list of floats in (0, 1)"
    _sequence(targets, "targets", who, expected)
    if not all(_real(t) and 0 < t < 1 for t in targets):
        raise param_error(ValueError, "targets", who, expected, targets)
    return tuple(float(t) for t in targets)


def _check_seeds(seeds, who: str) -> tuple[int, ...]:
    expected = "a non-empty list of ints >= 0"
    _sequence(seeds, "seeds", who, expected)
    if not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise param_error(ValueError, "seeds", who, expected, seeds)
    return tuple(int(s) for s in seeds)


def _check_groups(groups, who: str) -> str:
    if groups not in STRUCTURED_GROUPS:
        raise param_error(ValueError, "structured_groups", who, f"one of {list(STRUCTURED_GROUPS)}", groups)
    return groups


def _check_lr_map(values, name: str, who: str, *, grid: bool = False) -> dict:
    if not isinstance(values, Mapping):
        raise param_error(TypeError, name, who, f"a mapping from optimizer names to {'lists of ' if grid else ''}floats", values)
    unknown = sorted(set(values) - set(OPTIMIZERS))
    if unknown:
        raise ValueError(f"The '{name}' parameter of {who} has unknown optimizers {unknown}; valid names are {list(OPTIMIZERS)}.")
    out = {}
    for key, value in values.items():
        items = value if grid else [value]
        if isinstance(items, str) or not isinstance(items, Sequence) or not items or not all(_real(v) and v > 0 for v in items):
            what = "a non-empty list of floats > 0" if grid else "a float > 0"
            raise ValueError(f"The '{name}' entry for {key!r} of {who} must be {what}. Got {value!r} instead.")
        out[key] = tuple(float(v) for v in items) if grid else float(value)
    return out


def _nested_lrs(lrs, who: str) -> dict[str, dict[str, float]]:
    """``{kind: {optimizer: lr}}`` for every kind, from a flat ``{optimizer: lr}`` or a nested mapping."""
    if not isinstance(lrs, Mapping):
        raise param_error(TypeError, "lrs", who, "a mapping {optimizer: lr} or {sparsity type: {optimizer: lr}}", lrs)
    if any(k in KINDS for k in lrs):
        unknown = sorted(set(lrs) - set(KINDS))
        if unknown:
            raise ValueError(f"The 'lrs' parameter of {who} mixes sparsity types and other keys {unknown}; nested keys must be among {list(KINDS)}.")
        out = {k: _check_lr_map(v, f"lrs['{k}']", who) for k, v in lrs.items()}
    else:
        flat = _check_lr_map(lrs, "lrs", who)
        out = {k: dict(flat) for k in KINDS}
    return {k: out.get(k, {}) for k in KINDS}


# --------------------------------------------------------------------------- data


def _is_tensor_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)


def _check_data(data, name: str) -> None:
    from torch.utils.data import DataLoader

    if _is_tensor_pair(data):
        if len(data[0]) != len(data[1]) or len(data[0]) < 2:
            raise ValueError(f"The '{name}' parameter of optimizer_study must hold at least 2 samples with as many targets as inputs. Got {len(data[0])} inputs and {len(data[1])} targets.")
        return
    if not isinstance(data, DataLoader):
        raise TypeError(f"The '{name}' parameter of optimizer_study must be a tuple (X, y) of tensors or a DataLoader. Got {type(data).__name__} instead.")


def _first_samples(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of ``(X, y)`` tensors, or of the batches a DataLoader yields (in its order)."""
    if _is_tensor_pair(data):
        return data[0][:n], data[1][:n]
    xs, ys, count = [], [], 0
    for x, y in data:
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def _validation_split(train_data, fraction: float, seed: int = 0):
    """``(train, val)``: the last ``fraction`` of a seeded permutation of ``(X, y)`` is held out."""
    X, y = train_data
    n_val = max(1, round(fraction * len(y)))
    tr, va = seeded_split(len(y), len(y) - n_val, seed)
    return (X[tr], y[tr]), (X[va], y[va])


def _check_study(model_factory, train_data, test_data, *, optimizers, sparsity_types, targets, seeds, ints: Mapping[str, int], threshold,
                 tolerance) -> tuple[tuple, tuple, tuple, tuple]:  # fmt: skip
    """Validate the study's arguments; ``(optimizers, sparsity_types, targets, seeds)`` as tuples."""
    who = "optimizer_study"
    if not callable(model_factory) or isinstance(model_factory, nn.Module):
        raise TypeError(f"The 'model_factory' parameter of {who} must be a callable that builds a fresh model (e.g. lambda: MyNet()), not a model. Got {type(model_factory).__name__} instead.")
    checked = (
        _check_names(optimizers, OPTIMIZERS, "optimizers", who), _check_names(sparsity_types, SPARSITY_TYPES, "sparsity_types", who),
        _check_targets(targets, who), _check_seeds(seeds, who),
    )  # fmt: skip
    _check_data(train_data, "train_data")
    _check_data(test_data, "test_data")
    for name, value in ints.items():
        check_int(value, name, who, 1)
    check_float(threshold, "threshold", who, 0, low_open=True)
    check_float(tolerance, "tolerance", who, 0, 1, low_open=True, high_open=True)
    return checked


def _check_probe(probe, who: str) -> None:
    """What ``model_factory()`` returned: a plain ``nn.Module``."""
    if not isinstance(probe, nn.Module):
        raise TypeError(f"The 'model_factory' parameter of {who} must return an nn.Module. Got {type(probe).__name__} instead.")
    if spred.is_sparsified(probe):
        raise ValueError(f"The 'model_factory' parameter of {who} must return a plain model; it returned a model already sparsified by spred.sparsify.")


def _example_inputs(example_inputs, test_data, who: str) -> torch.Tensor:
    """The inputs for pruning and timing (default: the first 64 test inputs), on the CPU."""
    if example_inputs is None:
        example_inputs = _first_samples(test_data, 64)[0]
    if not isinstance(example_inputs, torch.Tensor) or len(example_inputs) < 2:
        raise ValueError(f"The 'example_inputs' parameter of {who} must be a tensor with at least 2 samples (pruning reads the constants zero channels emit from them).")
    return example_inputs.cpu()
