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
import sys
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from spred._inputs import flat_tensors, run

logger = logging.getLogger(__name__)

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def hf_conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class if ``transformers`` is already imported (a model using it imported it), else ``None``."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def is_hf_conv1d(module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a Linear whose weight is stored as (in, out); recognised without importing
    ``transformers`` (the one test of it, for sparsify, folding and pruning alike)."""
    cls = hf_conv1d_type()
    return cls is not None and isinstance(module, cls)


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
    """One attention layer spred recognises: where the rows of its heads live, and its output projection.

    ``kind`` is its layout: ``"mha"`` (``nn.MultiheadAttention``, one ``in_proj_weight``), ``"qkv"`` (timm's ViT: one
    ``qkv`` Linear laid out as (3, heads, head_dim), a ``proj`` Linear), ``"gpt2"`` (Hugging Face GPT-2: a ``c_attn``
    Conv1D laid out alike, a ``c_proj`` Conv1D) or ``"bert"`` (Hugging Face BERT: ``self.query`` / ``key`` /
    ``value`` Linears, ``output.dense``). ``sections`` are the (producer, first row) of the query, key and value rows,
    ``num_heads * head_dim`` rows each; ``out`` reads the heads' outputs as its input columns. ``num_heads`` is
    ``None`` where spred cannot map rows to heads; ``fixed`` says why the heads cannot be removed (``None``: they can).
    """

    kind: str
    name: str
    module: nn.Module
    num_heads: int | None
    head_dim: int | None
    sections: list[tuple[nn.Module, int]]
    out: nn.Module | None
    projections: tuple[nn.Module, ...]  # the layers whose output channels are Q, K and V
    fixed: str | None = None

    def slices(self, producer: nn.Module) -> list[tuple[str, int]]:
        """``[(parameter name, dim)]`` of ``producer`` whose rows along ``dim`` are its query / key / value rows."""
        if isinstance(producer, nn.MultiheadAttention):
            return [(n, 0) for n in ("in_proj_weight", "in_proj_bias") if getattr(producer, n, None) is not None]
        return producer_slices(producer) or []

    def head_rows(self) -> list[tuple[nn.Module, str, int, list[tuple[int, int]]]]:
        """``(module, parameter, dim, [(row, head)])`` for every parameter holding query, key and value rows."""
        rows: dict[nn.Module, list[tuple[int, int]]] = {}
        for producer, start in self.sections:
            width = self.num_heads * self.head_dim
            rows.setdefault(producer, []).extend((start + r, r // self.head_dim) for r in range(width))
        return [(m, name, dim, pairs) for m, pairs in rows.items() for name, dim in self.slices(m)]


def _num_heads(module: nn.Module, heads: bool | int) -> int | None:
    for attr in ("num_heads", "num_attention_heads", "n_head", "n_heads"):
        n = getattr(module, attr, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def _is_linear(m) -> bool:
    return isinstance(m, nn.Linear) or is_hf_conv1d(m)


def _stacked(kind, name, module, qkv, out, n, head_dim=None) -> Attention:
    """An attention whose ``qkv`` layer stacks Q, K and V (timm, GPT-2) and whose ``out`` reads the heads."""
    width = qkv.weight.shape[out_dim_of(qkv)]
    e = width // 3
    head_dim = head_dim or (e // n if n else None)
    fixed = None
    if n is None or width != 3 * e or n * head_dim != e:
        n, fixed = None, f"its {width} query / key / value rows do not split into {n} heads"
    elif not _is_linear(out) or out.weight.shape[1 - out_dim_of(out)] != e:
        fixed = "no output projection reading its heads was found"
    elif kind == "gpt2" and getattr(module, "split_size", e) != e:
        fixed = "its split_size is not the width of its heads"
    return Attention(kind, name, module, n, head_dim, [(qkv, 0), (qkv, e), (qkv, 2 * e)], out if _is_linear(out) else None, (qkv,), fixed)


def _attention_of(name: str, module: nn.Module, heads: bool | int, inner: set) -> Attention | None:
    """The attention layer ``module`` is, or ``None``; ``inner`` collects BERT self-attentions found through their parent."""
    n = _num_heads(module, heads)
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            return None
        d = module.head_dim
        e = n * d
        fixed = None if module.bias_k is None and not module.add_zero_attn else "it has bias_k / bias_v or add_zero_attn, which prune_channels does not slice"
        if module.in_proj_weight.shape[0] != 3 * e:
            return Attention("mha", name, module, None, None, [], module.out_proj, (module,), "its in_proj rows do not split into heads")
        return Attention("mha", name, module, n, d, [(module, 0), (module, e), (module, 2 * e)], module.out_proj, (module,), fixed)
    if getattr(module, "is_cross_attention", False) and is_hf_conv1d(getattr(module, "c_attn", None)):
        return Attention("gpt2", name, module, None, None, [], None, (module.c_attn, getattr(module, "q_attn", module.c_attn)), "a cross attention")
    if _is_linear(getattr(module, "c_attn", None)):  # GPT-2
        return _stacked("gpt2", name, module, module.c_attn, getattr(module, "c_proj", None), n, getattr(module, "head_dim", None))
    if isinstance(getattr(module, "qkv", None), nn.Linear):  # timm
        return _stacked("qkv", name, module, module.qkv, getattr(module, "proj", None), n)
    own, out = module, None
    inner_self, output = getattr(module, "self", None), getattr(getattr(module, "output", None), "dense", None)
    if isinstance(inner_self, nn.Module) and isinstance(output, nn.Linear) and _qkv_linears(inner_self):
        inner.add(inner_self)  # the parent holds the output projection: the attention is found there
        own, out, n = inner_self, output, _num_heads(inner_self, heads)
    elif not _qkv_linears(module):
        return None
    q, k, v = _qkv_linears(own)
    head_dim = getattr(own, "attention_head_size", None) or (q.out_features // n if n else None)
    fixed = None if out is not None else "no output projection reading its heads was found"
    if n is None or not q.out_features == k.out_features == v.out_features == n * head_dim:
        n, fixed = None, "its query / key / value rows do not split into heads"
    elif out is not None and out.in_features != n * head_dim:
        fixed = "its output projection does not read its heads"
    return Attention("bert", name, module, n, head_dim, [(q, 0), (k, 0), (v, 0)], out, (q, k, v), fixed)


def _qkv_linears(module: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear] | None:
    qkv = tuple(getattr(module, a, None) for a in ("query", "key", "value"))
    return qkv if all(isinstance(p, nn.Linear) for p in qkv) else None


def find_attention(model: nn.Module, heads: bool | int = False) -> list[Attention]:
    """Every attention layer of ``model`` spred recognises, with its query, key and value rows mapped to heads.

    Recognised: ``nn.MultiheadAttention`` (one ``in_proj_weight``), a module with one ``qkv`` Linear (timm's ViT) or
    ``c_attn`` Conv1D (GPT-2), and a module with ``query``, ``key`` and ``value`` Linears (BERT; found through the
    parent that holds ``output.dense`` where there is one). The head count is the module's ``num_heads`` /
    ``num_attention_heads`` / ``n_head`` attribute, or ``heads`` when it is an int and the module stores none.
    ``sparsify(heads=True)`` gates the heads found here and :func:`spred.compress.prune_channels` removes the zero
    ones, both by this one list, so a head group and the plan's entry for it carry the same name.
    """
    found, inner = [], set()
    for name, module in model.named_modules():
        if module in inner:
            continue
        att = _attention_of(name, module, heads, inner)
        if att is not None:
            found.append(att)
    return found
