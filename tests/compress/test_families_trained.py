"""End to end on the architecture families: channel groups -> Adam on random data -> collapse -> prune_channels.

``spred.sparsify(groups="channels")`` gates every producing slice of a channel group
together, so after ``collapse`` a zero group emits exactly 0 and ``prune_channels``
must remove all of it except what the plan keeps with a reason: channels that are
outputs of the model, and the one channel (or head) of a layer whose channels are all
zero, kept (and silenced) so that the layer is not emptied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import spred
from spred.compress import apply_plan, prune_channels
from spred._inputs import flat_tensors, run, split_inputs

pytest.importorskip("torch_pruning")
pytestmark = pytest.mark.skipif(not hasattr(spred.nn, "channel_groups"), reason="needs spred's channel groups")


def _archs():
    if "spred_test_archs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("spred_test_archs", Path(__file__).parents[1] / "archs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["spred_test_archs"] = module
        spec.loader.exec_module(module)
    return sys.modules["spred_test_archs"]


archs = _archs()

#: family -> (lam, steps, heads, batch): a lam that zeroes many groups in a few hundred Adam steps (lr 5e-2, random labels)
SETTINGS = {
    "resnet18": (3e-2, 200, False, 32),
    "resnet20": (3e-2, 200, False, 8),  # 32x32 inputs, 19 convolutions: a smaller batch keeps it affordable
    "mobilenetv2": (3e-2, 200, False, 32),
    "convnext": (3e-4, 200, False, 32),
    "densenet": (3e-2, 200, False, 32),
    "vit_mha": (1e-3, 200, True, 32),
    "vit_timm": (3e-3, 200, True, 32),
    "bert": (3e-3, 200, True, 32),
    "gpt2": (2e-2, 200, True, 32),
}
THRESHOLD = 1e-3
#: the reasons for which a zero channel may stay
ALLOWED = ("outputs of the model", "so that the layer is not emptied", "so that the attention layer is not emptied")


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return flat_tensors(run(model, split_inputs(x, "test")))


def _batch(model, x, g: torch.Generator, n: int):
    """Random training inputs shaped like ``x`` (token ids below the vocabulary size for a language model)."""
    if isinstance(x, dict):
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (n, x["input_ids"].shape[1]), generator=g)
        return {k: ids if k == "input_ids" else torch.ones_like(ids) for k in x}
    return torch.randn(n, *x.shape[1:], generator=g)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def train_and_prune(name: str, seed: int = 0):
    """Sparsify with channel groups, train with Adam on random labels, collapse and prune.

    Returns ``(collapsed, pruned, plan, zero, x)`` with ``zero`` ``{group name: zero channel indices}``."""
    lam, steps, heads, batch = SETTINGS[name]
    model, x = archs.FAMILIES[name](seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    data = split_inputs(_batch(model, x, g, batch), "test")
    with torch.no_grad():
        shape = _logits(run(model, data)).shape
    labels = torch.randint(0, min(5, shape[-1]), shape[:-1], generator=g)
    model = spred.sparsify(model, lam, groups="channels", example_inputs=x, heads=heads).train()
    opt = torch.optim.Adam(spred.param_groups(model), lr=5e-2)
    for _ in range(steps):
        opt.zero_grad()
        logits = _logits(run(model, data))
        F.cross_entropy(logits.reshape(-1, shape[-1]), labels.reshape(-1)).backward()
        opt.step()
    model.eval()
    zero = {grp.name: [i for i, z in enumerate(grp.zero_channels(THRESHOLD).tolist()) if z] for grp in spred.nn.channel_groups(model)}
    collapsed = spred.collapse(model, threshold=THRESHOLD)
    pruned, plan = prune_channels(collapsed, x)
    return collapsed, pruned, plan, {k: v for k, v in zero.items() if v}, x


def account(zero: dict[str, list[int]], plan) -> dict[str, tuple[int, int, list[str]]]:
    """Per zero group: ``(zero channels, removed, reasons for what stays)``; a head group ``"<attention>:heads"``
    counts heads (``plan.heads``), a channel group its root layer's channels (``plan.history``)."""
    removed: dict[str, int] = {}
    for root, idx in plan.history:
        removed[root] = removed.get(root, 0) + len(idx)
    for att, entry in plan.heads.items():
        removed[f"{att}:heads"] = entry["num_heads"] - len(entry["kept"])
    reasons: dict[str, list[str]] = {}
    for k in [*plan.skipped, *plan.kept_nonzero_constant, *plan.kept_last, *plan.kept_rounding]:
        heads = f"{k['layer']}:heads"  # the zero heads that stay are listed under their attention layer
        reasons.setdefault(heads if heads in zero else k["layer"], []).append(k["reason"])
    return {name: (len(ch), removed.get(name, 0), reasons.get(name, [])) for name, ch in zero.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
def test_trained_zero_groups_are_all_removed_except_outputs(name, tmp_path):
    collapsed, pruned, plan, zero, x = train_and_prune(name)
    assert sum(map(len, zero.values())) > 0, "lam too small: no zero group"
    for group, (n_zero, n_removed, why) in account(zero, plan).items():
        if n_removed < n_zero:
            assert why and all(any(a in r for a in ALLOWED) for r in why), (group, n_zero, n_removed, why)
    for a, b in zip(_outputs(pruned, x), _outputs(collapsed, x)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    torch.save(pruned.state_dict(), tmp_path / "p.pt")
    fresh, _ = archs.FAMILIES[name](seed=1)
    apply_plan(fresh, plan.to_json())
    fresh.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    for a, b in zip(_outputs(fresh, x), _outputs(pruned, x)):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
    if name == "gpt2":
        assert pruned.lm_head.weight is pruned.transformer.wte.weight and fresh.lm_head.weight is fresh.transformer.wte.weight
