"""Removing whole attention heads whose values are exactly zero.

A head whose value rows (weights and bias) are all 0 outputs 0 whatever its attention
weights are, so the head can go: its query, key and value rows and the matching input
columns of the output projection. Torch-Pruning's graph cannot follow the split into
heads (``reshape`` + ``unbind`` / ``view(..., -1, head_dim)``), so the attention
layers are those :func:`spred.nn._graph.find_attention` recognises by their
attributes (the same list ``sparsify(heads=True)`` gates): timm's ``qkv`` attention,
Hugging Face BERT and GPT-2, and ``nn.MultiheadAttention`` (which becomes a
:class:`~spred.compress._layers.HeadPrunedMultiheadAttention`). An attention whose
heads cannot be removed (``bias_k`` / ``add_zero_attn``, no output projection, a
cross attention) keeps its zero heads, and the plan says why.
"""

from __future__ import annotations

import torch
from torch import nn

from spred.compress._layers import HeadPrunedMultiheadAttention
from spred.nn._graph import Attention, find_attention


def removable_attention(model: nn.Module) -> dict[str, Attention]:
    """The attention layers of ``model`` (:func:`spred.nn._graph.find_attention`) whose heads can be removed, by name."""
    return {a.name: a for a in find_attention(model) if a.num_heads is not None and a.fixed is None}


def zero_heads(att: Attention) -> list[int]:
    """The heads of ``att`` whose value rows (weights and bias) are exactly 0."""
    producer, start = att.sections[2]
    d = att.head_dim
    zero = []
    for h in range(att.num_heads):
        rows = slice(start + h * d, start + (h + 1) * d)
        if not any(bool(getattr(producer, name).detach().movedim(dim, 0)[rows].any()) for name, dim in att.slices(producer)):
            zero.append(h)
    return zero


def keep_heads(att: Attention, heads: list[int]) -> None:
    """Keep only ``heads`` (sorted) of ``att``, in place."""
    from spred.compress._plan import slicer_for

    if att.kind == "mha":
        _keep_mha_heads(att.module, heads)
        att.num_heads = len(heads)
        return
    rows: dict[nn.Module, list[int]] = {}
    for producer, start in att.sections:
        rows.setdefault(producer, []).extend(start + h * att.head_dim + i for h in heads for i in range(att.head_dim))
    with torch.no_grad():
        for producer, keep in rows.items():
            slicer_for(producer).keep_out(producer, sorted(keep))
        slicer_for(att.out).keep_in(att.out, [h * att.head_dim + i for h in heads for i in range(att.head_dim)])
    n = len(heads)
    if att.kind == "bert":
        inner = att.module.self if isinstance(getattr(att.module, "self", None), nn.Module) else att.module
        inner.num_attention_heads, inner.all_head_size = n, n * att.head_dim
    else:
        att.module.num_heads = n
        if att.kind == "gpt2":
            att.module.split_size = n * att.head_dim
    att.num_heads = n


def _keep_mha_heads(mha: nn.MultiheadAttention, heads: list[int]) -> None:
    d, e = mha.head_dim, mha.num_heads * mha.head_dim
    cols = [h * d + i for h in heads for i in range(d)]
    rows = torch.as_tensor([s * e + c for s in range(3) for c in cols], dtype=torch.long)
    with torch.no_grad():
        mha.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach()[rows].clone(), requires_grad=mha.in_proj_weight.requires_grad)
        if mha.in_proj_bias is not None:
            mha.in_proj_bias = nn.Parameter(mha.in_proj_bias.detach()[rows].clone(), requires_grad=mha.in_proj_bias.requires_grad)
        out = mha.out_proj
        out.weight = nn.Parameter(out.weight.detach()[:, cols].clone(), requires_grad=out.weight.requires_grad)
        out.in_features = len(cols)
    kept = [getattr(mha, "kept_heads", list(range(mha.num_heads)))[h] for h in heads]
    full = getattr(mha, "full_heads", mha.num_heads)
    mha.__class__ = HeadPrunedMultiheadAttention
    mha.kept_heads, mha.full_heads, mha.num_heads = kept, full, len(heads)


def prune_heads(model: nn.Module) -> tuple[dict[str, dict], list[dict]]:
    """Remove the zero heads of every recognised attention layer (one head always stays).

    Returns the plan entries ``{name: {"kind", "num_heads", "kept"}}`` and the
    ``skipped`` entries for zero heads that stay.
    """
    entries, skipped = {}, []
    for att in find_attention(model):
        if att.num_heads is None:
            continue
        zero = zero_heads(att)
        if not zero:
            continue
        if att.fixed is not None:
            skipped.append({"layer": att.name, "zero_channels": len(zero) * att.head_dim,
                            "reason": f"heads {zero} are zero, but {att.fixed}"})  # fmt: skip
            continue
        if len(zero) == att.num_heads:
            skipped.append({"layer": att.name, "zero_channels": att.head_dim,
                            "reason": "all its heads are zero; one is kept so that the attention layer is not emptied"})  # fmt: skip
        kept = [h for h in range(att.num_heads) if h not in zero] or [zero[0]]
        if len(kept) == att.num_heads:
            continue
        entries[att.name] = {"kind": att.kind, "num_heads": att.num_heads, "kept": kept}
        keep_heads(att, kept)
    return entries, skipped


def apply_heads(model: nn.Module, heads: dict[str, dict]) -> None:
    """Replay ``prune_heads``'s entries on a fresh model (checked first, then applied)."""
    found = removable_attention(model)
    for name, entry in heads.items():
        spec = found.get(name)
        if spec is None:
            raise ValueError(f"apply_plan: the plan removes heads of '{name}', which is not an attention layer spred recognises in this model.")
        if not isinstance(entry, dict) or entry.get("kind") != spec.kind or entry.get("num_heads") != spec.num_heads:
            kind, n = (entry.get("kind"), entry.get("num_heads")) if isinstance(entry, dict) else (repr(entry), "?")
            raise ValueError(f"apply_plan: the plan expects '{name}' as {kind} attention with {n} heads; the model has "
                             f"{spec.kind} with {spec.num_heads}. Pass a freshly constructed, unpruned model.")  # fmt: skip
        kept = entry.get("kept")
        if not isinstance(kept, list) or not kept or any(not isinstance(h, int) for h in kept) or kept != sorted(set(kept)) or kept[-1] >= spec.num_heads or kept[0] < 0:
            raise ValueError(f"apply_plan: 'kept' heads of '{name}' must be sorted distinct ints in [0, {spec.num_heads}). Got {kept!r}.")
    for name, entry in heads.items():
        keep_heads(found[name], list(entry["kept"]))
