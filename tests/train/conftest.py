"""Small problems for the training-loop tests (CPU, a fraction of a second each)."""

import pytest
import torch

import spred
from spred.models import MLP


def classification(n=240, p=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] ** 2 > 0).long()
    return X, y


@pytest.fixture
def data():
    return classification()


@pytest.fixture
def make_net():
    """A fresh sparsified MLP with fixed initial weights (dropout on, to exercise the global RNG)."""

    def make(lam=1e-3, dropout=0.1, sparsified=True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            net = MLP(12, hidden=(16,), out_features=2, dropout=dropout)
        return spred.sparsify(net, lam=lam) if sparsified else net

    return make


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)


@pytest.fixture
def same_weights():
    """``same_weights(a, b)``: every entry of the two state_dicts is exactly equal (lam included)."""
    return _same_weights
