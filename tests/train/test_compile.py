"""torch.compile and fit: a compiled sparsified model trains like the eager one; fit unwraps it for the rest."""

from __future__ import annotations

import pytest
import torch

import spred
from spred.train import checkpoint_path, fit, load_checkpoint
from spred.train._distributed import unwrap


@pytest.mark.slow  # inductor compiles the forward and the backward: 5 to 20 s on a CPU
def test_fit_trains_a_compiled_model_like_the_eager_one(tmp_path, data, make_net):
    X, y = data
    eager, net = make_net(dropout=0.0), make_net(dropout=0.0)
    compiled = torch.compile(net)  # lazy: nothing is compiled before the first call
    assert unwrap(compiled) is net and unwrap(net) is net
    kw = {"epochs": 3, "batch_size": 32, "progress": False, "target_sparsity": 0.3, "threshold": 1e-3}
    result = fit(compiled, (X, y), checkpoint_dir=tmp_path, **kw)
    reference = fit(eager, (X, y), **kw)
    assert result.model is compiled
    for a, b in zip(net.parameters(), eager.parameters()):  # fused kernels round differently: close, not equal
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [r["lam"] for r in result.history] == pytest.approx([r["lam"] for r in reference.history], rel=1e-3)
    assert set(load_checkpoint(checkpoint_path(tmp_path))["model"]) == set(eager.state_dict())  # no "_orig_mod." prefix
    assert spred.sparsity_report(spred.collapse(net, threshold=1e-3)).total == spred.sparsity_report(spred.collapse(eager, threshold=1e-3)).total
