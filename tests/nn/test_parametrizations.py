"""The identities the method rests on (DESIGN.md section 1)."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spred.nn import SpredProduct, balanced_split, preserving_split

finite = st.floats(-10, 10, allow_nan=False, width=64)
arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, max_side=5), elements=finite)


@settings(max_examples=60, deadline=None)
@given(v=arrays, groups=st.sampled_from([None, "out", "in"]), depth=st.integers(2, 4), init=st.sampled_from(["preserve", "balanced"]))
def test_forward_of_right_inverse_is_identity(v, groups, depth, init):
    v = torch.as_tensor(v)
    p = SpredProduct(0.1, groups, depth, init)
    torch.testing.assert_close(p(*p.right_inverse(v)), v, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(v=arrays, depth=st.integers(2, 4), lam=st.floats(0.01, 5))
def test_balanced_elementwise_penalty_is_l_2_over_d(v, depth, lam):
    v = torch.as_tensor(v)
    p = SpredProduct(lam, None, depth)
    expected = (depth * lam / 2) * v.abs().pow(2 / depth).sum()  # depth 2: lam * ||v||_1
    torch.testing.assert_close(p.penalty(balanced_split(v, None, depth)), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.penalty_at_balance(v), expected, rtol=1e-10, atol=1e-10)
    if depth == 2:
        torch.testing.assert_close(p.penalty(balanced_split(v)), lam * v.abs().sum(), rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(v=arrays, groups=st.sampled_from(["out", "in"]), depth=st.integers(2, 3), lam=st.floats(0.01, 5))
def test_balanced_group_penalty_is_group_lasso(v, groups, depth, lam):
    v = torch.as_tensor(v)
    keep = 0 if groups == "out" else 1
    norms = v.transpose(0, keep).flatten(1).norm(dim=1)
    expected = (depth * lam / 2) * norms.pow(2 / depth).sum()  # depth 2: lam * sum_g ||v_g||_2
    p = SpredProduct(lam, groups, depth)
    factors = balanced_split(v, groups, depth)
    assert factors[0].numel() == v.shape[keep]
    torch.testing.assert_close(p.penalty(factors), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p(*factors), v, rtol=1e-12, atol=1e-12)


def test_balance_minimises_penalty_over_factorisations():
    # AM-GM: any other split of the same v has a larger penalty.
    torch.manual_seed(0)
    v = torch.randn(6, 7, dtype=torch.float64)
    p = SpredProduct(0.3)
    best = p.penalty(balanced_split(v))
    for _ in range(20):
        c = torch.rand_like(v) * 3 + 0.1
        assert p.penalty((c, v / c)) >= best - 1e-12


def test_default_split_is_not_balanced_and_keeps_signs_free():
    v = torch.tensor([[1.0, -2.0, 0.0, 0.5]], dtype=torch.float64)
    u, w = preserving_split(v)
    assert torch.all(u > 0) and torch.equal(u, torch.full_like(u, u[0, 0]))
    torch.testing.assert_close(u * w, v)
    assert not torch.allclose(u.abs(), w.abs())  # off the invariant lines u = +-w


def test_balanced_split_of_zero_is_the_stationary_origin():
    v = torch.zeros(3, 4)
    for groups in (None, "out"):
        factors = balanced_split(v, groups)
        assert all(torch.count_nonzero(f) == 0 for f in factors)
