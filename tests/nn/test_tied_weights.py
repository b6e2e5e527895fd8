"""Tied weights (one Parameter held by two modules) stay tied through sparsify, training, collapse and checkpoints."""

import io

import pytest
import torch
from torch import nn

import spred


class Tied(nn.Module):
    """Two Linear layers sharing one weight (``b.weight = a.weight``)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class LM(nn.Module):
    """An embedding tied to its output head (the language-model tie)."""

    def __init__(self, vocab=6, dim=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


def _tied():
    torch.manual_seed(0)
    return Tied()


def _numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("groups", [None, "out"])
def test_sparsify_and_collapse_keep_the_tie(groups):
    dense = _tied()
    x = torch.randn(5, 4)
    model = spred.sparsify(_tied(), 0.1, groups=groups)
    torch.testing.assert_close(model(x), dense(x))
    assert model.b.parametrizations.weight is model.a.parametrizations.weight  # one set of factors
    assert [t.names for t in spred.sparsified_tensors(model)] == [("a.weight", "b.weight")]
    assert _numel(model) == sum(f.numel() for f in spred.factors(model.a)) + 8  # factors once, plus both biases

    collapsed = spred.collapse(model)
    assert collapsed.b.weight is collapsed.a.weight
    assert type(collapsed.a) is nn.Linear and type(collapsed.b) is nn.Linear
    assert _numel(collapsed) == _numel(dense) == 24
    assert list(collapsed.state_dict()) == list(dense.state_dict())
    torch.testing.assert_close(collapsed(x), dense(x))


def test_training_keeps_the_tie_and_counts_it_once():
    model = spred.sparsify(_tied(), 0.05)
    groups = spred.param_groups(model)
    assert [len(g["params"]) for g in groups] == [2, 2] and groups[0]["names"] == ["a.weight"]
    opt = torch.optim.SGD(groups, lr=0.1)  # torch refuses a parameter listed twice
    x, y = torch.randn(16, 4), torch.randn(16, 4)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    torch.testing.assert_close(model.b.weight, model.a.weight, rtol=0, atol=0)
    u, w = spred.factors(model.b)
    torch.testing.assert_close(spred.penalty(model), 0.5 * 0.05 * (u.pow(2).sum() + w.pow(2).sum()))
    report = spred.sparsity_report(model)
    assert report.total == 24 and [r.name for r in report.rows] == ["a.weight", "a.bias", "b.bias"]
    assert spred.get_lam(model) == {"a.weight": 0.05}
    spred.set_lam(model, {"b.weight": 0.2}, opt)  # either name of a tied weight sets it
    assert spred.get_lam(model) == {"a.weight": 0.2} and opt.param_groups[0]["weight_decay"] == 0.2
    assert spred.is_sparsified(model, "b.weight")


def test_kkt_residual_sums_the_gradient_over_the_tied_places():
    from spred.nn._rules import kkt_residuals

    model = spred.sparsify(_tied(), 0.05)
    x, y = torch.randn(16, 4), torch.randn(16, 4)
    report = spred.kkt_residual(model, nn.functional.mse_loss, (x, y))
    dense = spred.collapse(model)  # the same weight, one Parameter: autograd sums both uses
    nn.functional.mse_loss(dense(x), y).backward()
    v, g = dense.a.weight.detach(), dense.a.weight.grad
    _, nz, _ = kkt_residuals(v, g, 0.05)
    assert list(report.per_tensor) == ["a.weight"]
    assert report.per_tensor["a.weight"]["max_nonzero"] == pytest.approx(float(nz.max()), rel=1e-5)


def test_state_dict_round_trip_keeps_the_tie():
    model = spred.sparsify(_tied(), 0.1)
    with torch.no_grad():
        spred.factors(model.a)[1].mul_(0.5)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    fresh = spred.sparsify(Tied(), 0.1)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(3, 4)
    torch.testing.assert_close(fresh(x), model(x))
    assert fresh.b.parametrizations.weight is fresh.a.parametrizations.weight


def _lm():
    torch.manual_seed(0)
    return LM()


def test_embedding_head_tie():
    tokens = torch.randint(0, 6, (4, 5))
    dense = _lm()
    with pytest.raises(ValueError, match=r"'head.weight' is tied to \['emb.weight'\] \(the same Parameter\), which sparsify would leave dense"):
        spred.sparsify(dense, 0.1)
    assert not spred.is_sparsified(dense)  # nothing registered by a refused call
    model = spred.sparsify(_lm(), 0.1, include=(nn.Linear, nn.Embedding), groups="out")
    torch.testing.assert_close(model(tokens), dense(tokens))
    collapsed = spred.collapse(model)
    assert collapsed.head.weight is collapsed.emb.weight and _numel(collapsed) == 18


def test_a_tie_that_would_break_is_refused():
    with pytest.raises(ValueError, match=r"'a.weight' is tied to \['b.weight'\]"):
        spred.sparsify(_tied(), 0.1, exclude=("b",))
    with pytest.raises(ValueError, match=r"tied weights \['a.weight', 'b.weight'\] .* different settings"):
        spred.sparsify(_tied(), {"a.weight": 0.1, "b.weight": 0.2})
    with pytest.raises(ValueError, match=r"gives the tied weights \['a.weight', 'b.weight'\] different values"):
        spred.set_lam(spred.sparsify(_tied(), 0.1), {"a.weight": 0.1, "b.weight": 0.2})
