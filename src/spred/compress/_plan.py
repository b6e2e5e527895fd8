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

from spred._validation import Integral
from spred.compress._fold import add_zero_bias
from spred.compress._heads import apply_heads
from spred._inputs import check_module
from spred.compress._layers import is_depthwise, make_zero_channel_groupnorm, make_zero_channel_layernorm, retie, tied_parameters
from spred.nn._graph import is_hf_conv1d

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
    indices to keep. Register an instance with :func:`register_slicer`. A base class
    meant only to be subclassed is declared with ``class Base(LayerSlicer, abstract=True)``
    and needs no ``target``.
    """

    target: ClassVar[type[nn.Module]]

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if abstract:  # a base for other slicers (_WeightSlicer), never registered
            return
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
    if is_hf_conv1d(layer):  # transformers' Conv1D, recognised without importing transformers
        return _CONV1D
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


class _WeightSlicer(LayerSlicer, abstract=True):
    """A layer with ``weight`` (out, in, ...) and an optional ``bias`` (out,), sizes in two attributes."""

    _out_attr: ClassVar[str]
    _in_attr: ClassVar[str]

    def out_size(self, layer):
        return getattr(layer, self._out_attr)

    def in_size(self, layer):
        return getattr(layer, self._in_attr)

    def keep_out(self, layer, keep):
        _set_param(layer, "weight", 0, keep)
        _set_param(layer, "bias", 0, keep)
        setattr(layer, self._out_attr, len(keep))

    def keep_in(self, layer, keep):
        _set_param(layer, "weight", 1, keep)
        setattr(layer, self._in_attr, len(keep))


class LinearSlicer(_WeightSlicer):
    target = nn.Linear
    _out_attr, _in_attr = "out_features", "in_features"


class ConvSlicer(_WeightSlicer):
    target = nn.modules.conv._ConvNd
    _out_attr, _in_attr = "out_channels", "in_channels"

    def unsupported(self, layer):
        if layer.transposed:
            return f"{type(layer).__name__} (transposed convolution)"
        if layer.groups != 1 and not is_depthwise(layer):
            return f"{type(layer).__name__} with groups={layer.groups} (grouped convolution that is not depthwise)"
        return None

    def keep_out(self, layer, keep):
        depthwise = is_depthwise(layer)
        super().keep_out(layer, keep)
        if depthwise:  # one filter per input channel: the inputs go with the outputs
            layer.in_channels = layer.groups = len(keep)

    def keep_in(self, layer, keep):
        if layer.groups == 1:
            super().keep_in(layer, keep)
        elif layer.in_channels != len(keep):  # depthwise, outputs not sliced yet
            self.keep_out(layer, keep)


class Conv1DSlicer(LayerSlicer, abstract=True):
    """transformers' ``Conv1D`` (GPT-2): a Linear stored transposed, ``weight`` (in, out), ``nf`` outputs."""

    def out_size(self, layer):
        return layer.nf

    def in_size(self, layer):
        return layer.weight.shape[0]

    def keep_out(self, layer, keep):
        _set_param(layer, "weight", 1, keep)
        _set_param(layer, "bias", 0, keep)
        layer.nf = len(keep)

    def keep_in(self, layer, keep):
        _set_param(layer, "weight", 0, keep)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)


_CONV1D = Conv1DSlicer()


class LayerNormSlicer(LayerSlicer):
    """A LayerNorm over the last dim; the result is a :class:`~spred.compress._layers.ZeroChannelLayerNorm`,
    exact when the removed channels were 0 at its input."""

    target = nn.LayerNorm

    def unsupported(self, layer):
        if len(layer.normalized_shape) != 1:
            return f"LayerNorm over {len(layer.normalized_shape)} dims"
        return None

    def out_size(self, layer):
        return layer.normalized_shape[0]

    def keep_out(self, layer, keep):
        full = layer.normalized_shape[0]
        for name in ("weight", "bias"):
            _set_param(layer, name, 0, keep)
        layer.normalized_shape = (len(keep),)
        make_zero_channel_layernorm(layer, full)


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


class GroupNormSlicer(LayerSlicer):
    """A GroupNorm; the result is a :class:`~spred.compress._layers.ZeroChannelGroupNorm`,
    exact when the removed channels were 0 at its input."""

    target = nn.GroupNorm

    def out_size(self, layer):
        return layer.num_channels

    def keep_out(self, layer, keep):
        full = layer.num_channels
        for name in ("weight", "bias"):
            _set_param(layer, name, 0, keep)
        layer.num_channels = len(keep)
        make_zero_channel_groupnorm(layer, full, keep)


class EmbeddingSlicer(LayerSlicer):
    """An embedding table ``(num_embeddings, embedding_dim)``: its channels are the columns."""

    target = nn.Embedding

    def out_size(self, layer):
        return layer.embedding_dim

    def keep_out(self, layer, keep):
        _set_param(layer, "weight", 1, keep)
        layer.embedding_dim = len(keep)


for _slicer in (LinearSlicer(), ConvSlicer(), BatchNormSlicer(), PReLUSlicer(), LayerNormSlicer(), GroupNormSlicer(), EmbeddingSlicer()):
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
        Dependency groups with zero channels that were not pruned at all, and zero attention heads that stay:
        ``{"layer", "zero_channels", "reason"}`` (``zero_channels`` is ``None`` where Torch-Pruning's mapping of the
        group did not fit its layers and the count is unknown).
    parameters : dict of str to dict
        Parameters held directly by a module (a position embedding, a class token, a
        layer scale) that were sliced with the channels: ``{fqn: {"dim", "size", "kept"}}``.
    heads : dict of str to dict
        Attention layers that lost heads whose values were all 0 (removed before the
        channels): ``{fqn: {"kind", "num_heads", "kept"}}`` (:mod:`spred.compress._heads`).
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
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
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


_ENTRY_KEYS = ("type", "out_size", "kept_out", "in_size", "kept_in")


def _check_indices(name: str, dim: str, kept: Any, size: int) -> None:
    """``kept`` must be a non-empty list of distinct int indices in ``[0, size)``, in increasing order."""
    where = f"apply_plan: 'kept_{dim}' of '{name}'"
    if isinstance(kept, (str, bytes)) or not isinstance(kept, Sequence):
        raise TypeError(f"{where} must be a list of int indices. Got {type(kept).__name__} instead.")
    bad = [i for i in kept if isinstance(i, bool) or not isinstance(i, Integral)]
    if bad:
        raise TypeError(f"{where} must hold int indices. Got {bad[0]!r} of type {type(bad[0]).__name__}.")
    if not kept:
        raise ValueError(f"{where} is empty: a layer keeps at least one channel.")
    if any(b <= a for a, b in zip(kept, kept[1:])):
        raise ValueError(f"{where} must be sorted in increasing order without duplicates. Got {list(kept)}.")
    if kept[0] < 0 or kept[-1] >= size:
        raise ValueError(f"{where} must lie in [0, {size}) (its {dim}_size). Got {kept[0] if kept[0] < 0 else kept[-1]}.")


def _check_entry(name: str, module: nn.Module, entry: Any) -> None:
    """One ``plan.layers`` entry against the module it reshapes (before anything is sliced)."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"apply_plan: the plan entry of '{name}' must be a dict. Got {type(entry).__name__} instead.")
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        raise ValueError(f"apply_plan: the plan entry of '{name}' lacks the key(s) {missing}; it needs {list(_ENTRY_KEYS)}.")
    if type(module).__name__ != entry["type"]:
        raise ValueError(f"apply_plan: the plan was made for '{name}' of type {entry['type']}, but the model has {type(module).__name__}.")
    slicer = slicer_for(module)
    if slicer is None:
        raise ValueError(f"apply_plan: no slicer registered for {type(module).__name__} ('{name}').")
    why = slicer.unsupported(module)
    if why is not None:
        raise ValueError(f"apply_plan: '{name}' is a {why}, which cannot be sliced.")
    for dim in ("out", "in"):
        if entry[f"kept_{dim}"] is None:
            continue
        size = slicer.out_size(module) if dim == "out" else slicer.in_size(module)
        if size is None:
            raise ValueError(f"apply_plan: the plan slices the inputs of '{name}', but {type(module).__name__} has no input channel dimension.")
        expected = entry[f"{dim}_size"]
        if isinstance(expected, bool) or not isinstance(expected, Integral) or expected != size:
            word = "output" if dim == "out" else "input"
            raise ValueError(
                f"apply_plan: the plan expects '{name}' with {expected} {word} channels, got {size}; "
                "pass a freshly constructed, unpruned model of the same architecture."
            )
        _check_indices(name, dim, entry[f"kept_{dim}"], size)


def _check_plan(plan: PruningPlan, modules: dict[str, nn.Module]) -> None:
    """Validate the whole plan against ``modules`` (clear errors naming the layer), so that nothing is half applied."""
    if not isinstance(plan.layers, Mapping) or not all(isinstance(k, str) for k in plan.layers):
        raise TypeError(f"apply_plan: 'layers' of the plan must be a dict of module names to entries. Got {type(plan.layers).__name__}.")
    if isinstance(plan.added_bias, (str, bytes)) or not isinstance(plan.added_bias, Sequence) or not all(isinstance(k, str) for k in plan.added_bias):
        raise TypeError(f"apply_plan: 'added_bias' of the plan must be a list of module names. Got {plan.added_bias!r}.")
    missing = [name for name in [*plan.layers, *plan.added_bias] if name not in modules]
    if missing:
        raise ValueError(f"apply_plan: the model has no module(s) {missing}; was the plan made for another architecture?")
    for name, entry in plan.layers.items():
        _check_entry(name, modules[name], entry)
    for name in plan.added_bias:
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or not hasattr(modules[name], "bias"):
            raise ValueError(f"apply_plan: the plan adds a bias to '{name}', but {type(modules[name]).__name__} is not a Linear / convolution layer.")


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

    Raises
    ------
    TypeError, ValueError
        If the plan does not fit the model or is malformed (a missing key, an entry
        that is not a dict, indices that are not ints, not sorted, repeated or out of
        range, a layer the model lacks), naming the layer. The whole plan is checked
        before any module is touched, so on error ``fresh_model`` is left as it was.
    """
    check_module(fresh_model, "fresh_model", "apply_plan")
    if isinstance(plan, (str, bytes, bytearray)):
        plan = PruningPlan.from_json(plan)
    elif isinstance(plan, Mapping):
        plan = PruningPlan.from_dict(plan)
    elif not isinstance(plan, PruningPlan):
        raise TypeError(f"The 'plan' parameter of apply_plan must be a PruningPlan, a dict or a JSON string. Got {type(plan).__name__} instead.")
    if not isinstance(plan.heads, Mapping):
        raise TypeError(f"apply_plan: 'heads' of the plan must be a dict. Got {type(plan.heads).__name__}.")
    apply_heads(fresh_model, plan.heads)  # the channel entries are in the numbering of the model without those heads
    modules = dict(fresh_model.named_modules())
    _check_plan(plan, modules)
    params = _check_parameters(plan, fresh_model)
    ties = tied_parameters(fresh_model)
    for name, entry in plan.layers.items():
        module, slicer = modules[name], slicer_for(modules[name])
        with torch.no_grad():
            if entry["kept_out"] is not None:
                slicer.keep_out(module, [int(i) for i in entry["kept_out"]])
            if entry["kept_in"] is not None:
                slicer.keep_in(module, [int(i) for i in entry["kept_in"]])
    for name, entry in plan.parameters.items():
        owner, attr = params[name]
        with torch.no_grad():
            _set_param(owner, attr, int(entry["dim"]), [int(i) for i in entry["kept"]])
    retie(fresh_model, ties)
    for name in plan.added_bias:
        add_zero_bias(modules[name])
    return fresh_model


def _check_parameters(plan: PruningPlan, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{fqn: (owner module, attribute)}`` for ``plan.parameters``, each checked against ``model``."""
    if not isinstance(plan.parameters, Mapping):
        raise TypeError(f"apply_plan: 'parameters' of the plan must be a dict. Got {type(plan.parameters).__name__}.")
    found = dict(model.named_parameters())
    owners = {}
    for name, entry in plan.parameters.items():
        if name not in found:
            raise ValueError(f"apply_plan: the model has no parameter '{name}'; was the plan made for another architecture?")
        if not isinstance(entry, Mapping) or not {"dim", "size", "kept"} <= set(entry):
            raise ValueError(f"apply_plan: the plan entry of parameter '{name}' must be a dict with 'dim', 'size' and 'kept'.")
        p, dim = found[name], entry["dim"]
        if isinstance(dim, bool) or not isinstance(dim, Integral) or not 0 <= dim < p.dim() or p.shape[dim] != entry["size"]:
            raise ValueError(f"apply_plan: the plan expects parameter '{name}' with size {entry['size']} along dim {dim}, "
                             f"got shape {tuple(p.shape)}; pass a freshly constructed, unpruned model.")  # fmt: skip
        _check_indices(name, "out", entry["kept"], p.shape[dim])
        module_name, _, attr = name.rpartition(".")
        owners[name] = (model.get_submodule(module_name), attr)
    return owners
