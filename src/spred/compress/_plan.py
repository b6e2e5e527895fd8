"""What a structural pruning did, as JSON, and how to redo it on a fresh model.

A :class:`PruningPlan` lists, for every module whose shape changed, the output and
input indices it kept (in the numbering of the unpruned model), the modules that
gained a bias (when a constant channel was folded into a layer that had none), and
the channels that were *not* removed and why. :func:`apply_plan` slices a freshly
constructed, unpruned model to the same shapes, so that the pruned weights load from
a weights-only checkpoint (``torch.load(path, weights_only=True)``): no pickled
modules are needed to deploy a pruned model.

Slicing goes through a small registry of :class:`LayerSlicer` objects (one per
module type), which is also what :func:`spred.compress.prune_channels` uses to decide
which modules it supports.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

PLAN_FORMAT = "spred.PruningPlan"
PLAN_VERSION = 1


# ---------------------------------------------------------------------------
# Slicers: the only place that knows how to shrink a module along a channel dim.
# ---------------------------------------------------------------------------


class LayerSlicer:
    """Shrinks one module type along its output (and input) channel dimension.

    Subclasses set ``target`` (a subclass of :class:`torch.nn.Module`) and implement
    :meth:`out_size` / :meth:`keep_out` (and :meth:`in_size` / :meth:`keep_in` when the
    module has an input channel dimension of its own). ``keep`` is the sorted list of
    indices to keep. Register an instance with :func:`register_slicer`.
    """

    target: ClassVar[type[nn.Module]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        target = cls.__dict__.get("target")
        if not (isinstance(target, type) and issubclass(target, nn.Module)):
            raise TypeError(f"{cls.__name__} must set the class attribute 'target' to a subclass of torch.nn.Module; got {target!r}.")

    def unsupported(self, layer: nn.Module) -> str | None:
        """Why this particular ``layer`` cannot be sliced (``None`` when it can)."""
        return None

    def out_size(self, layer: nn.Module) -> int:
        raise NotImplementedError

    def in_size(self, layer: nn.Module) -> int | None:
        return None

    def keep_out(self, layer: nn.Module, keep: list[int]) -> None:
        raise NotImplementedError

    def keep_in(self, layer: nn.Module, keep: list[int]) -> None:
        raise NotImplementedError(f"{type(layer).__name__} has no separate input channel dimension")


_SLICERS: dict[type[nn.Module], LayerSlicer] = {}


def register_slicer(slicer: LayerSlicer) -> LayerSlicer:
    """Register ``slicer`` for modules of type ``slicer.target`` (and its subclasses).

    :func:`prune_channels` prunes only through modules that have a slicer, and
    :func:`apply_plan` uses the same slicers to reshape a fresh model.

    Parameters
    ----------
    slicer : LayerSlicer
        An instance of a :class:`LayerSlicer` subclass.

    Returns
    -------
    LayerSlicer
        ``slicer``, so that it can be used as ``register_slicer(MySlicer())`` at import.
    """
    if not isinstance(slicer, LayerSlicer):
        raise TypeError(f"The 'slicer' parameter of register_slicer must be a LayerSlicer instance. Got {type(slicer).__name__} instead.")
    _SLICERS[slicer.target] = slicer
    return slicer


def slicer_for(layer: nn.Module) -> LayerSlicer | None:
    """The registered slicer for ``type(layer)`` (most specific base class first), or ``None``."""
    for cls in type(layer).__mro__:
        if cls in _SLICERS:
            return _SLICERS[cls]
    return None


def _index(t: torch.Tensor | None, dim: int, keep: list[int]) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.index_select(t.detach(), dim, torch.as_tensor(keep, dtype=torch.long, device=t.device)).contiguous()


def _set_param(layer: nn.Module, name: str, dim: int, keep: list[int]) -> None:
    old = getattr(layer, name)
    if old is None:
        return
    new = nn.Parameter(_index(old, dim, keep), requires_grad=old.requires_grad)
    setattr(layer, name, new)


def _set_buffer(layer: nn.Module, name: str, dim: int, keep: list[int]) -> None:
    old = getattr(layer, name, None)
    if old is not None:
        setattr(layer, name, _index(old, dim, keep))


class LinearSlicer(LayerSlicer):
    target = nn.Linear

    def out_size(self, layer):
        return layer.out_features

    def in_size(self, layer):
        return layer.in_features

    def keep_out(self, layer, keep):
        _set_param(layer, "weight", 0, keep)
        _set_param(layer, "bias", 0, keep)
        layer.out_features = len(keep)

    def keep_in(self, layer, keep):
        _set_param(layer, "weight", 1, keep)
        layer.in_features = len(keep)


class ConvSlicer(LayerSlicer):
    target = nn.modules.conv._ConvNd

    def unsupported(self, layer):
        if layer.transposed:
            return f"{type(layer).__name__} (transposed convolution)"
        if layer.groups != 1:
            return f"{type(layer).__name__} with groups={layer.groups} (grouped or depthwise convolution)"
        return None

    def out_size(self, layer):
        return layer.out_channels

    def in_size(self, layer):
        return layer.in_channels

    def keep_out(self, layer, keep):
        _set_param(layer, "weight", 0, keep)
        _set_param(layer, "bias", 0, keep)
        layer.out_channels = len(keep)

    def keep_in(self, layer, keep):
        _set_param(layer, "weight", 1, keep)
        layer.in_channels = len(keep)


class BatchNormSlicer(LayerSlicer):
    target = nn.modules.batchnorm._BatchNorm

    def out_size(self, layer):
        return layer.num_features

    def keep_out(self, layer, keep):
        for name in ("weight", "bias"):
            _set_param(layer, name, 0, keep)
        for name in ("running_mean", "running_var"):
            _set_buffer(layer, name, 0, keep)
        layer.num_features = len(keep)


class PReLUSlicer(LayerSlicer):
    target = nn.PReLU

    def out_size(self, layer):
        return layer.num_parameters

    def keep_out(self, layer, keep):
        if layer.num_parameters > 1:
            _set_param(layer, "weight", 0, keep)
            layer.num_parameters = len(keep)


for _slicer in (LinearSlicer(), ConvSlicer(), BatchNormSlicer(), PReLUSlicer()):
    register_slicer(_slicer)


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


@dataclass
class PruningPlan:
    """The structural changes made by :func:`spred.compress.prune_channels`, as plain data.

    Attributes
    ----------
    layers : dict of str to dict
        For each module (by fully qualified name) whose shape changed:
        ``{"type": class name, "out_size": n, "kept_out": [...] or None,
        "in_size": m or None, "kept_in": [...] or None}``. Sizes and indices are those
        of the unpruned model; ``None`` means that dimension was not touched.
    history : list of [str, list of int]
        The pruning operations in the order they were applied: the root layer of each
        Torch-Pruning dependency group and the output channels removed from it (all
        coupled layers followed). Torch-Pruning's ``load_pruning_history`` format,
        minus its ``is_out`` flag (always True here).
    added_bias : list of str
        Modules that had ``bias=None`` and received a bias to absorb a folded constant.
    kept_nonzero_constant : list of dict
        Zero channels *kept* because they emit a nonzero constant that cannot be folded
        exactly into the next layer: ``{"layer", "channel", "constant", "consumer", "reason"}``.
    kept_last : list of dict
        Zero channels kept because removing them would empty a layer: ``{"layer", "channel", "reason"}``.
    kept_rounding : list of dict
        Zero channels kept so that a layer keeps a multiple of ``round_to`` channels:
        ``{"layer", "channel", "reason"}``. These and the ``kept_last`` channels are
        silenced: the next layers' weights that read them are zero.
    skipped : list of dict
        Dependency groups with zero channels that were not pruned at all: ``{"layer", "zero_channels", "reason"}``.
    threshold : float
        Weights with ``|w| <= threshold`` counted as zero.
    round_to : int
        The ``round_to`` given to ``prune_channels`` (1: no rounding).
    max_abs_diff : float or None
        Largest absolute difference between the outputs of the pruned and the unpruned
        (collapsed) model on the ``example_inputs`` given to ``prune_channels``.
    """

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[list[Any]] = field(default_factory=list)
    added_bias: list[str] = field(default_factory=list)
    kept_nonzero_constant: list[dict[str, Any]] = field(default_factory=list)
    kept_last: list[dict[str, Any]] = field(default_factory=list)
    kept_rounding: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = 0.0
    round_to: int = 1
    max_abs_diff: float | None = None

    @property
    def kept_out(self) -> dict[str, list[int]]:
        """``{fqn: kept output indices}`` for every module whose outputs were pruned."""
        return {name: list(e["kept_out"]) for name, e in self.layers.items() if e.get("kept_out") is not None}

    @property
    def n_removed(self) -> int:
        """Number of channels / neurons removed (counted at the root layer of each group)."""
        return sum(len(idx) for _, idx in self.history)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (with a format tag and version)."""
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **asdict(self)}

    def to_json(self, **kwargs) -> str:
        """Serialise to a JSON string; ``kwargs`` go to :func:`json.dumps` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise TypeError(f"The 'data' parameter of PruningPlan.from_dict must be a mapping. Got {type(data).__name__} instead.")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a spred pruning plan: expected format {PLAN_FORMAT!r}, got {data.get('format')!r}.")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"unsupported pruning plan version {data.get('version')!r}; this spred reads version {PLAN_VERSION}.")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown keys in pruning plan: {sorted(unknown)}.")
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> PruningPlan:
        """Inverse of :meth:`to_json`."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"The 'text' parameter of PruningPlan.from_json must be a JSON string. Got {type(text).__name__} instead.")
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        lines = [f"PruningPlan: {self.n_removed} channels removed in {len(self.history)} groups, {len(self.layers)} layers reshaped"]
        for name, e in self.layers.items():
            parts = []
            if e.get("kept_out") is not None:
                parts.append(f"out {e['out_size']} -> {len(e['kept_out'])}")
            if e.get("kept_in") is not None:
                parts.append(f"in {e['in_size']} -> {len(e['kept_in'])}")
            lines.append(f"  {name} ({e['type']}): {', '.join(parts)}")
        if self.added_bias:
            lines.append(f"  bias added to: {', '.join(self.added_bias)}")
        for k in self.kept_nonzero_constant:
            lines.append(f"  kept {k['layer']}[{k['channel']}]: {k['reason']}")
        for k in self.kept_last:
            lines.append(f"  kept {k['layer']}[{k['channel']}]: {k['reason']}")
        for layer, n in Counter(k["layer"] for k in self.kept_rounding).items():
            lines.append(f"  kept {n} zero channels of {layer} to round its width to a multiple of {self.round_to}")
        for s in self.skipped:
            lines.append(f"  skipped group of {s['layer']} ({s['zero_channels']} zero channels): {s['reason']}")
        return "\n".join(lines)


def _check_entry(name: str, module: nn.Module, entry: Mapping[str, Any], slicer: LayerSlicer | None) -> None:
    if type(module).__name__ != entry["type"]:
        raise ValueError(f"apply_plan: the plan was made for '{name}' of type {entry['type']}, but the model has {type(module).__name__}.")
    if slicer is None:
        raise ValueError(f"apply_plan: no slicer registered for {type(module).__name__} ('{name}').")
    if entry.get("kept_out") is not None and slicer.out_size(module) != entry["out_size"]:
        raise ValueError(
            f"apply_plan: the plan expects '{name}' with {entry['out_size']} output channels, got {slicer.out_size(module)}; "
            "pass a freshly constructed, unpruned model of the same architecture."
        )
    if entry.get("kept_in") is not None and slicer.in_size(module) != entry["in_size"]:
        raise ValueError(
            f"apply_plan: the plan expects '{name}' with {entry['in_size']} input channels, got {slicer.in_size(module)}; "
            "pass a freshly constructed, unpruned model of the same architecture."
        )


def apply_plan(fresh_model: nn.Module, plan: PruningPlan | Mapping[str, Any] | str) -> nn.Module:
    """Give a freshly built (unpruned) model the shapes of a pruned one, in place.

    The values of the result are those of ``fresh_model`` sliced to the kept channels;
    load the pruned weights afterwards::

        model = apply_plan(MyNet(), PruningPlan.from_json(text))
        model.load_state_dict(torch.load("pruned.pt", weights_only=True))

    Only torch is needed (not Torch-Pruning).

    Parameters
    ----------
    fresh_model : nn.Module
        A model of the same class and configuration as the one given to
        :func:`prune_channels`, not pruned yet.
    plan : PruningPlan, dict or str
        The plan returned by :func:`prune_channels`, or its ``to_dict()`` / ``to_json()`` form.

    Returns
    -------
    nn.Module
        ``fresh_model``, reshaped.
    """
    if not isinstance(fresh_model, nn.Module):
        raise TypeError(f"The 'fresh_model' parameter of apply_plan must be a torch.nn.Module. Got {type(fresh_model).__name__} instead.")
    if isinstance(plan, (str, bytes, bytearray)):
        plan = PruningPlan.from_json(plan)
    elif isinstance(plan, Mapping):
        plan = PruningPlan.from_dict(plan)
    elif not isinstance(plan, PruningPlan):
        raise TypeError(f"The 'plan' parameter of apply_plan must be a PruningPlan, a dict or a JSON string. Got {type(plan).__name__} instead.")
    modules = dict(fresh_model.named_modules())
    missing = [name for name in [*plan.layers, *plan.added_bias] if name not in modules]
    if missing:
        raise ValueError(f"apply_plan: the model has no module(s) {missing}; was the plan made for another architecture?")
    for name, entry in plan.layers.items():
        _check_entry(name, modules[name], entry, slicer_for(modules[name]))
    for name, entry in plan.layers.items():
        module, slicer = modules[name], slicer_for(modules[name])
        with torch.no_grad():
            if entry.get("kept_out") is not None:
                slicer.keep_out(module, _sorted(entry["kept_out"]))
            if entry.get("kept_in") is not None:
                slicer.keep_in(module, _sorted(entry["kept_in"]))
    for name in plan.added_bias:
        add_zero_bias(modules[name])
    return fresh_model


def _sorted(idx: Sequence[int]) -> list[int]:
    return sorted(int(i) for i in idx)


def add_zero_bias(layer: nn.Module) -> bool:
    """Give a Linear / Conv layer without bias a zero bias; return whether one was added."""
    if getattr(layer, "bias", None) is not None:
        return False
    n = layer.weight.shape[0]
    layer.bias = nn.Parameter(torch.zeros(n, dtype=layer.weight.dtype, device=layer.weight.device), requires_grad=layer.weight.requires_grad)
    return True
