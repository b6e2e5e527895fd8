"""prune_channels on the architecture families people use (tests/archs.py): zero channel groups go, outputs stay.

Every family gets some channel groups zeroed exactly (every producing slice: conv /
Linear / Conv1D rows and biases, norm scale and shift, position embeddings), as a
collapsed channel-group model has them. Then: each zero group is removed or the plan
says why, the outputs are those of the unpruned model, and ``apply_plan`` on a fresh
model plus a weights-only state_dict rebuilds the pruned model exactly.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from spred.compress import PruningPlan, apply_plan, count_parameters, prune_channels
from spred.compress._heads import keep_heads, removable_attention as find_attention
from spred._inputs import flat_tensors, run, split_inputs

pytest.importorskip("torch_pruning")


def _load_archs():
    if "spred_test_archs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("spred_test_archs", Path(__file__).parents[1] / "archs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["spred_test_archs"] = module
        spec.loader.exec_module(module)
    return sys.modules["spred_test_archs"]


archs = _load_archs()

#: Per family: the zeroed groups (by root layer) that stay, each with the words its reason must contain.
EXPECTED_KEPT = {
    "resnet18": {"fc": "outputs of the model"},
    "resnet20": {"fc": "outputs of the model"},
    "mobilenetv2": {"classifier": "outputs of the model"},
    "convnext": {"head": "outputs of the model"},
    "densenet": {"fc": "outputs of the model"},
    "vit_mha": {"head": "outputs of the model", "patch_embed": "an nn.MultiheadAttention, whose input width is its embed_dim"},
    "vit_timm": {
        "head": "outputs of the model",
        "blocks.0.attn.qkv": "dimensions inside the attention heads of 'blocks.0.attn'",
        "blocks.1.attn.qkv": "dimensions inside the attention heads of 'blocks.1.attn'",
    },
    "bert": {
        "classifier": "outputs of the model",
        "bert.encoder.layer.0.attention.self.query": "dimensions inside the attention heads",
        "bert.encoder.layer.1.attention.self.query": "dimensions inside the attention heads",
    },
    "gpt2": {
        "lm_head": "outputs of the model",
        "transformer.h.0.attn.c_attn": "dimensions inside the attention heads",
        "transformer.h.1.attn.c_attn": "dimensions inside the attention heads",
    },
}


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return flat_tensors(run(model, split_inputs(x, "test")))


def _assert_close(a, b, atol=2e-5):
    assert len(a) == len(b)
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, atol=atol, rtol=1e-4)


def _accounting(zeroed: dict[str, list[int]], plan: PruningPlan) -> dict[str, str]:
    """Per zeroed group that is not wholly removed: the reason the plan gives for every channel left."""
    removed: dict[str, int] = {}
    for root, idx in plan.history:
        removed[root] = removed.get(root, 0) + len(idx)
    reasons = {s["layer"]: s["reason"] for s in plan.skipped}
    for k in plan.kept_nonzero_constant + plan.kept_last + plan.kept_rounding:
        reasons.setdefault(k["layer"], k["reason"])
    left = {}
    for root, picks in zeroed.items():
        if removed.get(root, 0) < len(picks):
            assert root in reasons, f"zero channels of {root} were neither removed nor explained by the plan"
            left[root] = reasons[root]
    return left


@pytest.mark.parametrize("name", list(archs.FAMILIES))
def test_family_zero_groups_are_removed_and_the_outputs_stay(name, tmp_path):
    model, x = archs.FAMILIES[name]()
    attention = find_attention(model)
    archs.zero_heads(model, {a: [1] for a in attention})  # whole heads: query, key and value rows
    zeroed = archs.zero_some_groups(model, x)
    before = _outputs(model, x)
    pruned, plan = prune_channels(model, x)
    assert set(plan.heads) == set(attention)
    for a, spec in find_attention(pruned).items():
        assert plan.heads[a]["kept"] == [0, 2, 3] and spec.num_heads == 3

    _assert_close(_outputs(pruned, x), before)
    assert plan.max_abs_diff < 1e-4
    assert count_parameters(pruned) < count_parameters(model)
    left = _accounting(zeroed, plan)
    expected = EXPECTED_KEPT[name]
    assert set(left) == set(expected), left
    for root, words in expected.items():
        assert words in left[root], (root, left[root])

    # a fresh model + the plan (as JSON) + a weights-only checkpoint rebuild the pruned model exactly
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    fresh, _ = archs.FAMILIES[name](seed=1)
    apply_plan(fresh, plan.to_json())
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    _assert_close(_outputs(fresh, x), _outputs(pruned, x), atol=0.0)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    if name == "gpt2":  # the hidden size went (wte's columns with lm_head's inputs), and the tie survives
        assert pruned.transformer.wte.embedding_dim < 32
        assert pruned.lm_head.weight is pruned.transformer.wte.weight and fresh.lm_head.weight is fresh.transformer.wte.weight


def test_gpt2_apply_plan_with_a_weights_only_state_dict_and_the_tie_survives(tmp_path):
    """The reported bug: Conv1D (weight (in, out)) sliced like a Linear gave a fresh model outputs 8.3 away."""
    model, x = archs.gpt2()
    DG, _ = archs.channel_groups(model, x)
    mlp = model.transformer.h[0].mlp
    archs.zero_group(DG, DG.get_pruning_group(mlp.c_fc, DG.get_pruner_of_module(mlp.c_fc).prune_out_channels, list(range(0, 128, 3))))
    pruned, plan = prune_channels(model, x)
    assert pruned.transformer.h[0].mlp.c_fc.nf == 128 - 43 and pruned.transformer.h[0].mlp.c_proj.weight.shape == (85, 32)
    assert plan.layers["transformer.h.0.mlp.c_fc"]["type"] == "Conv1D"
    assert pruned.lm_head.weight is pruned.transformer.wte.weight

    torch.save(pruned.state_dict(), tmp_path / "gpt2.pt")
    fresh, _ = archs.gpt2(seed=3)
    apply_plan(fresh, plan.to_json())
    fresh.load_state_dict(torch.load(tmp_path / "gpt2.pt", weights_only=True))
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    _assert_close(_outputs(fresh, x), _outputs(pruned, x), atol=0.0)
    _assert_close(_outputs(pruned, x), _outputs(model, x))


def test_depthwise_convolution_keeps_its_groups_in_step():
    model, x = archs.FAMILIES["mobilenetv2"]()
    archs.zero_some_groups(model, x, fraction=0.5)
    pruned, plan = prune_channels(model, x)
    for name, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels == m.weight.shape[0], name
            assert plan.layers[name]["kept_in"] in (None, plan.layers[name]["kept_out"])


def test_convnext_layernorms_become_exact_zero_channel_layernorms():
    model, x = archs.FAMILIES["convnext"]()
    archs.zero_some_groups(model, x, fraction=0.25)
    pruned, plan = prune_channels(model, x)
    norm = pruned.blocks[0].norm
    assert type(norm).__name__ == "ZeroChannelLayerNorm" and norm.full_size == 16 and norm.normalized_shape == (12,)
    assert "blocks.0.gamma" in plan.parameters and len(plan.parameters["blocks.0.gamma"]["kept"]) == 12
    _assert_close(_outputs(pruned, x), _outputs(model, x))


def test_wrong_example_inputs_give_spreds_error():
    model, _ = archs.FAMILIES["resnet18"]()
    with pytest.raises(ValueError, match=r"prune_channels: the model does not run on example_inputs \(tensor shapes \[\(2, 5, 32, 32\)\]\)"):
        prune_channels(model, torch.randn(2, 5, 32, 32))


def test_a_model_torch_pruning_cannot_trace_gives_spreds_error(monkeypatch):
    import torch_pruning as tp

    model, x = archs.FAMILIES["resnet18"]()

    def broken(self, *args, **kwargs):
        raise KeyError("grad_fn")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    with pytest.raises(RuntimeError, match=r"prune_channels: Torch-Pruning could not trace the model \(KeyError"):
        prune_channels(model, x)


def test_multihead_attention_heads_go_and_masks_follow_the_kept_heads():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).eval()
    archs.zero_heads(mha, {"": [1]})
    small = copy.deepcopy(mha)
    keep_heads(find_attention(small)[""], [0, 2, 3])
    assert type(small).__name__ == "HeadPrunedMultiheadAttention" and small.in_proj_weight.shape == (36, 16)
    q = torch.randn(5, 2, 16)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": torch.randn(5, 5)}, {"attn_mask": torch.randn(8, 5, 5)},
                   {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1), "is_causal": True}):  # fmt: skip
        with torch.no_grad():
            _assert_close(small(q, q, q, need_weights=False, **kwargs)[:1], mha(q, q, q, need_weights=False, **kwargs)[:1])
    with torch.no_grad():  # unbatched
        _assert_close(small(q[:, 0], q[:, 0], q[:, 0])[:1], mha(q[:, 0], q[:, 0], q[:, 0])[:1])


def test_zero_heads_of_an_attention_with_bias_kv_stay_with_a_reason():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, add_bias_kv=True, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 5, 16)
    archs.zero_heads(model, {"attn": [1]})
    assert "attn" not in find_attention(model)  # its heads cannot be removed
    pruned, plan = prune_channels(model, x)
    assert plan.heads == {} and pruned.attn.in_proj_weight.shape == (48, 16)
    assert any(s["layer"] == "attn" and "heads [1] are zero, but it has bias_k" in s["reason"] for s in plan.skipped)
    _assert_close(_outputs(pruned, x), _outputs(model, x))


def test_an_attention_with_every_head_zero_keeps_one():
    model, x = archs.FAMILIES["vit_timm"]()
    archs.zero_heads(model, {"blocks.0.attn": [0, 1, 2, 3]})
    pruned, plan = prune_channels(model, x)
    assert plan.heads["blocks.0.attn"]["kept"] == [0] and pruned.blocks[0].attn.num_heads == 1
    assert any("all its heads are zero; one is kept" in s["reason"] for s in plan.skipped)
    _assert_close(_outputs(pruned, x), _outputs(model, x))


def test_apply_plan_refuses_heads_of_another_model():
    model, x = archs.FAMILIES["vit_timm"]()
    archs.zero_heads(model, {"blocks.0.attn": [2]})
    _, plan = prune_channels(model, x)
    other = archs.ViT(attention="timm", num_heads=2)
    with pytest.raises(ValueError, match=r"apply_plan: the plan expects 'blocks.0.attn' as qkv attention with 4 heads; the model has qkv with 2"):
        apply_plan(other, plan)


def test_gpt2_mlp_neuron_with_a_bias_folds_into_the_transposed_consumer():
    """A Conv1D neuron with zero weights but a bias emits gelu(b): folded into c_proj's bias through W (in, out)."""
    model, x = archs.gpt2()
    mlp = model.transformer.h[1].mlp
    with torch.no_grad():
        mlp.c_fc.weight[:, [5, 9]] = 0.0  # the input weights of neurons 5 and 9 (columns: Conv1D is (in, out))
        mlp.c_fc.bias[[5, 9]] = torch.tensor([0.8, -1.3])
    pruned, plan = prune_channels(model, x)
    assert plan.layers["transformer.h.1.mlp.c_fc"]["kept_out"] == [i for i in range(128) if i not in (5, 9)]
    assert pruned.transformer.h[1].mlp.c_proj.weight.shape == (126, 32)
    _assert_close(_outputs(pruned, x), _outputs(model, x))


@pytest.mark.parametrize("name", list(archs.FAMILIES))
def test_heavy_random_zeroing_never_crashes_and_keeps_the_outputs(name):
    model, x = archs.FAMILIES[name](seed=2)
    archs.zero_heads(model, {a: [0, 3] for a in find_attention(model)})
    archs.zero_some_groups(model, x, fraction=0.6, seed=4)
    pruned, plan = prune_channels(model, x)
    _assert_close(_outputs(pruned, x), _outputs(model, x))
    fresh, _ = archs.FAMILIES[name](seed=5)
    apply_plan(fresh, plan.to_dict())
    fresh.load_state_dict(pruned.state_dict())
    _assert_close(_outputs(fresh, x), _outputs(pruned, x), atol=0.0)


@pytest.mark.parametrize("name", ["vit_mha", "vit_timm", "bert", "gpt2"])
def test_head_groups_and_the_plan_name_the_same_attention_layers(name):
    """sparsify(heads=True) gates the heads prune_channels removes, found once (spred.nn._graph.find_attention)."""
    import spred

    model, x = archs.FAMILIES[name]()
    n_attention = len(find_attention(model))
    spred.sparsify(model, 0.1, groups="channels", example_inputs=x, heads=True)
    heads = [g for g in spred.channel_groups(model) if g.name.endswith(":heads")]
    assert len(heads) == n_attention == 2
    with torch.no_grad():
        for g in heads:
            g.spred.gates[:, 1] = 0.0
    collapsed = spred.collapse(model)
    pruned, plan = prune_channels(collapsed, x)
    assert {f"{a}:heads" for a in plan.heads} == {g.name for g in heads}
    assert all(entry["kept"] == [0, 2, 3] for entry in plan.heads.values())
    _assert_close(_outputs(pruned, x), _outputs(collapsed, x))
