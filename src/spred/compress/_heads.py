"""Removing whole attention heads whose values are exactly zero.

A head whose value rows (weights and bias) are all 0 outputs 0 whatever its attention
weights are, so the head can go: its query, key and value rows and the matching input
columns of the output projection. Torch-Pruning's graph cannot follow the split into
heads (``reshape`` + ``unbind`` / ``view(..., -1, head_dim)``), so the attention
layers are recognised here by their attributes:

* ``"qkv"``: timm's ``Attention`` (one ``qkv`` Linear laid out as (3, heads,
  head_dim), a ``proj`` Linear, ``num_heads``);
* ``"bert"``: Hugging Face BERT-style ``...Attention`` (``self.query`` / ``key`` /
  ``value``, ``num_attention_heads``, ``attention_head_size``; ``output.dense``);
* ``"gpt2"``: Hugging Face GPT-2's ``GPT2Attention`` (``c_attn`` Conv1D laid out as
  (3, heads, head_dim), ``c_proj``, ``num_heads``, ``head_dim``, ``split_size``).

``nn.MultiheadAttention`` needs ``num_heads * head_dim == embed_dim``, the width of
its input, so its zero heads are kept (and reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spred.compress._layers import HeadPrunedMultiheadAttention, is_conv1d, out_rows


@dataclass
class Attention:
    """Where the heads of one attention layer live."""

    kind: str
    module: nn.Module
    sections: list[tuple[nn.Module, int]]  # (producer, first row) of the query, key and value rows
    out: nn.Module  # the output projection; its input columns follow the heads
    num_heads: int
    head_dim: int

    def zero_heads(self) -> list[int]:
        """The heads whose value rows and bias are exactly 0."""
        if self.kind == "mha":
            return mha_zero_heads(self.module)
        producer, start = self.sections[2]
        w = out_rows(producer).detach()
        b = getattr(producer, "bias", None)
        zero = []
        for h in range(self.num_heads):
            rows = slice(start + h * self.head_dim, start + (h + 1) * self.head_dim)
            if not bool(w[rows].any()) and (b is None or not bool(b.detach()[rows].any())):
                zero.append(h)
        return zero

    def keep(self, heads: list[int]) -> None:
        """Keep only ``heads`` (sorted), in place."""
        from spred.compress._plan import slicer_for

        if self.kind == "mha":
            _keep_mha_heads(self.module, heads)
            self.num_heads = len(heads)
            return

        rows: dict[nn.Module, list[int]] = {}
        for producer, start in self.sections:
            rows.setdefault(producer, []).extend(start + h * self.head_dim + i for h in heads for i in range(self.head_dim))
        with torch.no_grad():
            for producer, keep in rows.items():
                slicer_for(producer).keep_out(producer, sorted(keep))
            slicer_for(self.out).keep_in(self.out, [h * self.head_dim + i for h in heads for i in range(self.head_dim)])
        n = len(heads)
        if self.kind == "qkv":
            self.module.num_heads = n
        elif self.kind == "bert":
            self.module.self.num_attention_heads = n
            self.module.self.all_head_size = n * self.head_dim
        else:
            self.module.num_heads = n
            self.module.split_size = n * self.head_dim
        self.num_heads = n


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


def _as_attention(module: nn.Module) -> Attention | None:
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn:
            return Attention("mha", module, [], module.out_proj, module.num_heads, module.head_dim)
        return None
    heads = getattr(module, "num_heads", None)
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if isinstance(heads, int) and isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and qkv.out_features % (3 * heads) == 0:
        e = qkv.out_features // 3
        if proj.in_features == e:
            return Attention("qkv", module, [(qkv, 0), (qkv, e), (qkv, 2 * e)], proj, heads, e // heads)
    inner, output = getattr(module, "self", None), getattr(module, "output", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(output, "dense", None), nn.Linear):
        q, k, v = (getattr(inner, n, None) for n in ("query", "key", "value"))
        heads, size = getattr(inner, "num_attention_heads", None), getattr(inner, "attention_head_size", None)
        if all(isinstance(m, nn.Linear) for m in (q, k, v)) and isinstance(heads, int) and isinstance(size, int):
            if q.out_features == k.out_features == v.out_features == heads * size == output.dense.in_features:
                return Attention("bert", module, [(q, 0), (k, 0), (v, 0)], output.dense, heads, size)
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    head_dim = getattr(module, "head_dim", None)
    if is_conv1d(c_attn) and is_conv1d(c_proj) and isinstance(heads, int) and isinstance(head_dim, int):
        e = heads * head_dim
        if not getattr(module, "is_cross_attention", False) and c_attn.nf == 3 * e and getattr(module, "split_size", None) == e:
            return Attention("gpt2", module, [(c_attn, 0), (c_attn, e), (c_attn, 2 * e)], c_proj, heads, head_dim)
    return None


def find_attention(model: nn.Module) -> dict[str, Attention]:
    """Every attention layer of ``model`` whose heads can be removed, by module name."""
    found = {}
    for name, module in model.named_modules():
        spec = _as_attention(module)
        if spec is not None:
            found[name] = spec
    return found


def mha_zero_heads(mha: nn.MultiheadAttention) -> list[int]:
    """The heads of an ``nn.MultiheadAttention`` whose value rows (and bias) are exactly 0."""
    if not mha._qkv_same_embed_dim:
        w = mha.v_proj_weight.detach()
    else:
        w = mha.in_proj_weight.detach()[2 * mha.embed_dim :]
    b = None if mha.in_proj_bias is None else mha.in_proj_bias.detach()[2 * mha.embed_dim :]
    d = mha.head_dim
    return [h for h in range(mha.num_heads) if not w[h * d : (h + 1) * d].any() and (b is None or not b[h * d : (h + 1) * d].any())]


def prune_heads(model: nn.Module) -> tuple[dict[str, dict], list[dict]]:
    """Remove the zero heads of every recognised attention layer (one head always stays).

    Returns the plan entries ``{name: {"kind", "num_heads", "kept"}}`` and the
    ``skipped`` entries for zero heads that stay.
    """
    entries, skipped = {}, []
    found = find_attention(model)
    for name, spec in found.items():
        zero = spec.zero_heads()
        if not zero:
            continue
        if len(zero) == spec.num_heads:
            skipped.append({"layer": name, "zero_channels": spec.head_dim,
                            "reason": "all its heads are zero; one is kept so that the attention layer is not emptied"})  # fmt: skip
        kept = [h for h in range(spec.num_heads) if h not in zero] or [zero[0]]
        if len(kept) == spec.num_heads:
            continue
        entries[name] = {"kind": spec.kind, "num_heads": spec.num_heads, "kept": kept}
        spec.keep(kept)
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and name not in found:
            zero = mha_zero_heads(module) if module._qkv_same_embed_dim else []
            if zero:
                skipped.append({"layer": name, "zero_channels": len(zero) * module.head_dim,
                                "reason": f"heads {zero} are zero, but this nn.MultiheadAttention has bias_k / bias_v or "
                                          "add_zero_attn, which prune_channels does not slice"})  # fmt: skip
    return entries, skipped


def apply_heads(model: nn.Module, heads: dict[str, dict]) -> None:
    """Replay ``prune_heads``'s entries on a fresh model (checked first, then applied)."""
    found = find_attention(model)
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
        found[name].keep(list(entry["kept"]))
