"""What spred reads from a model's dependency graph: which slices of which tensors make one channel.

Torch-Pruning's ``DependencyGraph`` traces the model once and groups every channel with
everything coupled to it (BatchNorm, residual adds, concatenation, depthwise convolutions,
the input slices of the layers that read it). This module is the small adapter spred keeps
on top of it:

* the *producing* slices of a layer type (:func:`producer_slices`): which parameter and
  which dimension hold one output channel, e.g. a Conv2d's filter and bias, a norm's scale
  and shift, and the transposed layout of Hugging Face's ``Conv1D`` (GPT-2);
* a Torch-Pruning pruner for that ``Conv1D``, which Torch-Pruning does not know;
* the attention heads of the attention modules spred recognises (:func:`find_attention`).

Torch-Pruning is an optional dependency (``spred[prune]``); it is imported only here and
only when a graph is built.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from spred._inputs import flat_tensors, run

logger = logging.getLogger(__name__)

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a Linear whose weight is stored as (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None and module.weight.dim() == 2


def out_dim_of(module: nn.Module) -> int:
    """The dimension of ``module.weight`` that indexes output channels."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) or is_hf_conv1d(module) else 0


def producer_slices(module: nn.Module) -> list[tuple[str, int]] | None:
    """``[(parameter name, dim)]`` whose slice ``i`` along ``dim`` belongs to output channel ``i`` of ``module``.

    ``[]`` for a module without parameters (an activation, a pooling: it maps 0 to 0 or has nothing to gate) and for
    PReLU (``prelu(0) = 0`` whatever its slope); ``None`` for a module with parameters that spred does not know how
    to gate.
    """
    if isinstance(module, nn.PReLU) or not any(True for _ in module.parameters(recurse=False)):
        return []
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        slices = [("weight", 1), ("bias", 0)] if module.groups == 1 else None
    elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_hf_conv1d(module):
        slices = [("weight", out_dim_of(module)), ("bias", 0)]
    elif isinstance(module, NORMS):
        slices = [("weight", 0), ("bias", 0)] if getattr(module, "weight", None) is not None and module.weight.dim() == 1 else None
    else:
        return None
    return None if slices is None else [(n, d) for n, d in slices if getattr(module, n, None) is not None]


def import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "channel groups and prune_channels need Torch-Pruning, an optional dependency: "
            "install it with pip install 'spred[prune]' (or pip install torch-pruning)."
        ) from exc
    return torch_pruning


def _conv1d_pruner(tp):
    """A Torch-Pruning pruner for Hugging Face's ``Conv1D`` (weight (in, out), ``nf`` outputs)."""

    class Conv1DPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.nf)) - set(idxs))
            layer.nf = len(keep)
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            if hasattr(layer, "nx"):
                layer.nx = len(keep)
            return layer

        def get_out_channels(self, layer):
            return layer.nf

        def get_in_channels(self, layer):
            return layer.weight.shape[0]

    return Conv1DPruner()


def customized_pruners(tp, model: nn.Module) -> dict:
    """The pruners spred adds to Torch-Pruning's for the layer types of ``model`` it lacks."""
    conv1d = {type(m) for m in model.modules() if is_hf_conv1d(m)}
    if not conv1d:
        return {}
    pruner = _conv1d_pruner(tp)
    return {cls: pruner for cls in conv1d}


def trace(tp, model: nn.Module, inputs: tuple[tuple, dict]):
    """``(DG, out_fns)``: Torch-Pruning's dependency graph of ``model`` on ``inputs`` (with spred's pruners for the layer
    types it lacks) and the autograd nodes of the outputs. Parameters are set to require gradients (Torch-Pruning
    follows autograd); the caller restores them. Torch-Pruning's own errors pass through."""
    for p in model.parameters():
        p.requires_grad_(True)
    outputs = []

    def forward_fn(m, _):
        out = run(m, inputs)
        outputs.append(out)
        return out

    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning's notes on unknown ops: spred reports what it skips
        DG = tp.DependencyGraph().build_dependency(
            model, example_inputs=inputs, forward_fn=forward_fn, verbose=False, customized_pruners=customized_pruners(tp, model)
        )
    return DG, {t.grad_fn for t in flat_tensors(outputs[-1]) if t.grad_fn is not None}


def dependency_groups(model: nn.Module, DG, include):
    """Torch-Pruning's dependency groups of ``model``, each named after its first layer in the model's order.

    Yields ``(name, module, channels, group)``: for every module that ``include(module)`` accepts, in
    ``model.named_modules()`` order, whose output channels are not yet in an earlier group, the group of those
    ``channels`` rooted at it. ``sparsify(groups="channels")`` names its gates and ``prune_channels`` its plan
    by this one walk, so a channel group and the plan's entry for it carry the same name.
    """
    covered: set[tuple[int, int]] = set()
    for name, module in model.named_modules():
        if not include(module) or module not in DG.module2node:
            continue
        pruner = DG.get_pruner_of_module(module)
        n_out = pruner.get_out_channels(module) if pruner is not None else None
        if not n_out:
            continue
        channels = [i for i in range(n_out) if (id(module), i) not in covered]
        if not channels:
            continue
        group = DG.get_pruning_group(module, pruner.prune_out_channels, channels)
        for item in group:
            if DG.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, nn.Module):
                covered.update((id(item.dep.target.module), int(i)) for i in item.idxs)
        yield name, module, channels, group


def build_graph(model: nn.Module, inputs: tuple[tuple, dict], who: str):
    """``(tp, DG, out_fns)`` as :func:`trace` gives them; a model that does not run on ``inputs`` or that
    Torch-Pruning cannot trace raises ``ValueError`` naming ``who``."""
    tp = import_torch_pruning()
    with torch.enable_grad():
        try:
            run(model, inputs)
        except Exception as exc:
            raise ValueError(f"{who}: the model does not run on example_inputs ({type(exc).__name__}: {exc}). "
                             "Pass inputs of the shape and type the model takes.") from exc  # fmt: skip
    try:
        DG, out_fns = trace(tp, model, inputs)
    except Exception as exc:
        raise ValueError(f"{who}: Torch-Pruning could not trace the model's dependency graph ({type(exc).__name__}: {exc}).") from exc
    return tp, DG, out_fns


# ---------------------------------------------------------------------------
# Attention heads
# ---------------------------------------------------------------------------


@dataclass
class Attention:
    """One attention module: its name, head count and the (module, parameter, dim, rows) holding Q, K and V.

    ``rows[j]`` is the head of row ``j`` along ``dim`` of that parameter (-1 for rows outside Q, K, V).
    """

    name: str
    module: nn.Module
    num_heads: int | None
    parts: list[tuple[nn.Module, str, int, list[int]]]
    projections: tuple[nn.Module, ...]  # the layers whose output channels are Q, K and V


def _heads_of(rows: int, embed: int, num_heads: int, stacked: int) -> list[int]:
    """Head of each of ``rows`` rows that stack ``stacked`` projections of width ``embed`` (Q, K, V)."""
    head_dim = embed // num_heads
    return [(r % embed) // head_dim for r in range(rows)] if rows == stacked * embed else []


def _num_heads(module: nn.Module) -> int | None:
    for attr in ("num_heads", "num_attention_heads", "n_head", "n_heads"):
        n = getattr(module, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _attention_parts(module: nn.Module, n: int | None):
    """``(parts, projections)`` of an attention module of a known layout, or ``None``."""
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            return None
        parts = [(module, name, 0, _heads_of(module.in_proj_weight.shape[0], module.embed_dim, n, 3)) for name in ("in_proj_weight", "in_proj_bias") if getattr(module, name, None) is not None]
        return parts, (module,)
    qkv = getattr(module, "qkv", None) or getattr(module, "c_attn", None)  # timm ViT, GPT-2
    if isinstance(qkv, nn.Linear) or (qkv is not None and is_hf_conv1d(qkv)):
        dim = out_dim_of(qkv)
        width = qkv.weight.shape[dim]
        parts = [(qkv, "weight", dim, _heads_of(width, width // 3, n, 3))]
        if qkv.bias is not None:
            parts.append((qkv, "bias", 0, _heads_of(width, width // 3, n, 3)))
        return parts, (qkv,)
    qkv = [getattr(module, a, None) for a in ("query", "key", "value")]  # Hugging Face BERT and relatives
    if all(isinstance(p, nn.Linear) for p in qkv):
        parts = [(p, name, 0, _heads_of(p.out_features, p.out_features, n, 1)) for p in qkv for name in ("weight", "bias") if getattr(p, name, None) is not None]
        return parts, tuple(qkv)
    return None


def find_attention(model: nn.Module, heads: bool | int) -> list[Attention]:
    """Every attention module of ``model`` spred recognises, with its Q, K, V rows mapped to heads.

    Recognised: ``nn.MultiheadAttention`` (one ``in_proj_weight``), a module with one ``qkv`` Linear (timm's ViT) or
    ``c_attn`` Conv1D (GPT-2), and a module with ``query``, ``key`` and ``value`` Linears (BERT). The head count is the
    module's ``num_heads`` / ``num_attention_heads`` / ``n_head`` attribute, or ``heads`` when it is an int.
    """
    found = []
    for name, module in model.named_modules():
        n = _num_heads(module)
        if isinstance(heads, int) and not isinstance(heads, bool):
            n = heads
        parts = _attention_parts(module, n or 1)
        if parts is None:
            continue
        if n is None or any(not rows for *_, rows in parts[0]):
            found.append(Attention(name, module, None, [], parts[1]))  # an attention whose heads spred cannot map
            continue
        found.append(Attention(name, module, n, parts[0], parts[1]))
    return found
