"""End to end on the architecture families: channel groups -> Adam on random data -> collapse -> prune_channels.

``spred.sparsify(groups="channels")`` gates every producing slice of a channel group
together, so after ``collapse`` a zero group emits exactly 0 and ``prune_channels``
must remove all of them except those tied to the model's outputs.
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

#: family -> (lam, steps, heads)
SETTINGS = {"resnet18": (3e-2, 200, False), "mobilenetv2": (3e-2, 200, False), "vit_timm": (3e-2, 200, True)}


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return flat_tensors(run(model, split_inputs(x, "test")))


def train_and_prune(name: str, seed: int = 0):
    """Sparsify with channel groups, train with Adam on random labels, collapse and prune; return what a report needs."""
    lam, steps, heads = SETTINGS[name]
    model, x = archs.FAMILIES[name](seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    data = torch.randn(32, *x.shape[1:], generator=g)
    labels = torch.randint(0, 5, (32,), generator=g)
    model = spred.sparsify(model, lam, groups="channels", example_inputs=x, heads=heads).train()
    opt = torch.optim.Adam(spred.param_groups(model), lr=5e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(data), labels).backward()
        opt.step()
    model.eval()
    groups = spred.nn.channel_groups(model)
    zero = {grp.name: [i for i, z in enumerate(grp.zero_channels(1e-3).tolist()) if z] for grp in groups}
    collapsed = spred.collapse(model, threshold=1e-3)
    pruned, plan = prune_channels(collapsed, x)
    return collapsed, pruned, plan, {k: v for k, v in zero.items() if v}, x


@pytest.mark.slow
@pytest.mark.xfail(reason="open (issue 20): on resnet18 and mobilenetv2 some trained zero groups are not yet removed by "
                   "prune_channels and the plan gives no reason; not investigated yet", strict=False)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_trained_zero_groups_are_all_removed_except_outputs(name, tmp_path):
    collapsed, pruned, plan, zero, x = train_and_prune(name)
    assert sum(map(len, zero.values())) > 0, "lam too small: no zero group"
    removed = {}
    for root, idx in plan.history:
        removed[root] = removed.get(root, 0) + len(idx)
    reasons = {s["layer"]: s["reason"] for s in plan.skipped}
    for root, channels in zero.items():
        if removed.get(root, 0) < len(channels):
            assert "outputs of the model" in reasons.get(root, ""), (root, reasons.get(root))
    for a, b in zip(_outputs(pruned, x), _outputs(collapsed, x)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    torch.save(pruned.state_dict(), tmp_path / "p.pt")
    fresh, _ = archs.FAMILIES[name](seed=1)
    apply_plan(fresh, plan.to_json())
    fresh.load_state_dict(torch.load(tmp_path / "p.pt", weights_only=True))
    for a, b in zip(_outputs(fresh, x), _outputs(pruned, x)):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
