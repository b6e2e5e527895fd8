"""CSR export: same outputs, weights-only checkpoints, layers below min_sparsity stay dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spred
from spred.compress import SparseConv2d, SparseLinear, count_flops, count_parameters, to_dense, to_sparse


def _sparsify_weights(model: nn.Module, sparsity: float, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight[torch.rand(m.weight.shape, generator=gen) < sparsity] = 0.0
    return model.eval()


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, bias=False), nn.ReLU(),
        nn.Conv2d(8, 6, (3, 2), padding="same", padding_mode="reflect"), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4, bias=False),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_sparse_keeps_outputs(gen, dtype):
    model = _sparsify_weights(_net().to(dtype), 0.95, gen)
    sparse = to_sparse(model, min_sparsity=0.5, include=(nn.Linear, nn.Conv2d))
    n_sparse = sum(isinstance(m, (SparseLinear, SparseConv2d)) for m in sparse.modules())
    assert n_sparse == 5
    x = torch.randn(5, 3, 8, 8, generator=gen).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=tol, rtol=tol)
        torch.testing.assert_close(sparse(x[:1]), model(x[:1]), atol=tol, rtol=tol)  # batch 1 path


def test_sparse_linear_on_3d_input_and_conv_on_unbatched_input(gen):
    lin = _sparsify_weights(nn.Linear(7, 5), 0.8, gen)
    x = torch.randn(2, 3, 7, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear.from_dense(lin)(x), lin(x))
    conv = _sparsify_weights(nn.Conv2d(3, 4, 3, padding=1), 0.8, gen)
    img = torch.randn(3, 6, 6, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d.from_dense(conv)(img), conv(img))


def test_layers_below_min_sparsity_stay_dense(gen):
    model = _net()
    _sparsify_weights(model[0], 0.99, gen)
    _sparsify_weights(model[8], 0.99, gen)
    sparse = to_sparse(model, min_sparsity=0.9, include=(nn.Linear, nn.Conv2d))
    assert isinstance(sparse[0], SparseConv2d) and isinstance(sparse[8], SparseLinear)
    assert type(sparse[2]) is nn.Conv2d and type(sparse[6]) is nn.Linear
    assert type(model[0]) is nn.Conv2d  # not in place by default


def test_convolutions_stay_dense_by_default(gen):
    model = _sparsify_weights(_net(), 0.99, gen)
    sparse = to_sparse(model)
    assert [type(m).__name__ for m in sparse if isinstance(m, (nn.Conv2d, SparseConv2d, nn.Linear, SparseLinear))] == [
        "Conv2d", "Conv2d", "Conv2d", "SparseLinear", "SparseLinear"]
    same = to_sparse(model, inplace=True)
    assert same is model and isinstance(model[6], SparseLinear)


def test_weights_only_checkpoint_loads_into_a_fresh_sparse_model(gen, tmp_path):
    model = _sparsify_weights(_net(), 0.9, gen)
    sparse = to_sparse(model, min_sparsity=0.0, include=(nn.Linear, nn.Conv2d))
    torch.save(sparse.state_dict(), tmp_path / "sparse.pt")
    fresh = to_sparse(_net(), min_sparsity=0.0, include=(nn.Linear, nn.Conv2d))  # other weights, other number of nonzeros
    fresh.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), atol=1e-5, rtol=1e-5)


def test_to_dense_inverts_to_sparse(gen):
    model = _sparsify_weights(_net(), 0.9, gen)
    back = to_dense(to_sparse(model, min_sparsity=0.0, include=(nn.Linear, nn.Conv2d)))
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_counts_see_only_stored_values(gen):
    model = _sparsify_weights(_net(), 0.9, gen)
    sparse = to_sparse(model, min_sparsity=0.0, include=(nn.Linear, nn.Conv2d))
    assert count_parameters(sparse) == count_parameters(model, nonzero=True) + sum(
        (m.bias == 0).sum().item() for m in model.modules() if getattr(m, "bias", None) is not None
    )
    x = torch.randn(1, 3, 8, 8, generator=gen)
    assert count_flops(sparse, x) < count_flops(model, x)


def test_copies_and_device_moves_keep_the_weights(gen):
    import copy

    model = _sparsify_weights(_net(), 0.9, gen)
    sparse = to_sparse(model, min_sparsity=0.0, include=(nn.Linear, nn.Conv2d))
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        y = sparse(x)
        torch.testing.assert_close(copy.deepcopy(sparse)(x), y)
        torch.testing.assert_close(sparse.double()(x.double()), y.double(), atol=1e-5, rtol=1e-5)


def test_errors(gen):
    with pytest.raises(TypeError, match=r"'model' parameter of to_sparse must be a torch.nn.Module. Got list"):
        to_sparse([])
    with pytest.raises(TypeError, match=r"'min_sparsity' parameter of to_sparse must be a float in the range \[0, 1\]. Got '0.9' of type str"):
        to_sparse(_net(), min_sparsity="0.9")
    with pytest.raises(ValueError, match=r"'min_sparsity' parameter of to_sparse must be a float in the range \[0, 1\]. Got 1.5"):
        to_sparse(_net(), min_sparsity=1.5)
    with pytest.raises(ValueError, match=r"'include' parameter of to_sparse must be a tuple of layer types among \(nn.Linear, nn.Conv2d\). Got \(<class 'torch.nn.modules.conv.Conv1d'>,\)"):
        to_sparse(_net(), include=(nn.Conv1d,))
    with pytest.raises(TypeError, match=r"'include' parameter of to_sparse must be a tuple of layer types .* Got <class 'torch.nn.modules.linear.Linear'>"):
        to_sparse(_net(), include=nn.Linear)
    with pytest.raises(ValueError, match=r"the model is parametrized .* call spred.collapse\(model\) first"):
        to_sparse(spred.sparsify(_net(), 0.1))
    with pytest.raises(TypeError, match=r"'model' parameter of to_dense must be a torch.nn.Module. Got int"):
        to_dense(1)
    with pytest.raises(TypeError, match=r"'linear' parameter of SparseLinear.from_dense must be a torch.nn.Linear. Got Conv2d"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match=r"'conv' parameter of SparseConv2d must be a torch.nn.Conv2d. Got Linear"):
        SparseConv2d(nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"SparseConv2d supports only groups=1 convolutions; got groups=2"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=2))


# --------------------------------------------------------------------------- tampered CSR checkpoints (issue 19)


def _tamper_crow_entry(sd):
    sd["0.crow_indices"][3] += 5  # one entry changed: rows overlap, the last row reads past the values


def _tamper_truncate_values(sd):
    sd["0.weight_values"] = sd["0.weight_values"][:-4]  # fewer values than the indices describe


def _tamper_col_out_of_range(sd):
    sd["0.col_indices"][0] = 10_000


def _tamper_negative_col(sd):
    sd["0.col_indices"][-1] = -1


def _tamper_crow_not_monotone(sd):
    crow = sd["0.crow_indices"]
    crow[2], crow[3] = crow[3].clone(), crow[2].clone()


def _tamper_crow_length(sd):
    sd["0.crow_indices"] = sd["0.crow_indices"][:-1]


def _tamper_crow_dtype(sd):
    sd["0.crow_indices"] = sd["0.crow_indices"].double()


def _tamper_unsorted_row(sd):
    crow, col = sd["0.crow_indices"], sd["0.col_indices"]
    row = int(((crow[1:] - crow[:-1]) >= 2).nonzero()[0])
    start = int(crow[row])
    col[start], col[start + 1] = col[start + 1].clone(), col[start].clone()


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (_tamper_crow_entry, r"'0\.(crow|col)_indices' must be (non-decreasing|strictly increasing within each row)"),
        (_tamper_truncate_values, r"'0.col_indices' must have as many entries as '0.weight_values' \(\d+\)"),
        (_tamper_col_out_of_range, r"'0.col_indices' must lie in \[0, 40\); got values from 0 to 10000"),
        (_tamper_negative_col, r"'0.col_indices' must lie in \[0, 40\); got values from -1"),
        (_tamper_crow_not_monotone, r"'0.crow_indices' must be non-decreasing"),
        (_tamper_crow_length, r"'0.crow_indices' must have 31 entries \(rows \+ 1\) for a 30 x 40 weight; got 30"),
        (_tamper_crow_dtype, r"'0.crow_indices' and '0.col_indices' must both be int32 or int64; got torch.float64"),
        (_tamper_unsorted_row, r"'0.col_indices' must be strictly increasing within each row"),
    ],
)
def test_a_tampered_csr_checkpoint_is_refused_before_it_is_used(tmp_path, gen, tamper, match):
    """Torch's CSR kernels trust the indices: a tampered weights-only checkpoint gave garbage (~1e31) or a segfault.

    Now loading raises a ValueError naming the tensor, and the module keeps its weights.
    """
    dense = _sparsify_weights(nn.Sequential(nn.Linear(40, 30)), 0.8, gen)
    model = to_sparse(dense, min_sparsity=0.5)
    x = torch.randn(3, 40, generator=gen)
    with torch.no_grad():
        expected = model(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    tamper(sd)
    torch.save(sd, tmp_path / "sparse.pt")
    target = to_sparse(_sparsify_weights(nn.Sequential(nn.Linear(40, 30)), 0.8, gen), min_sparsity=0.5)
    target.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(target(x), expected, rtol=0, atol=0)  # untouched by the refused load


def test_a_valid_csr_checkpoint_with_other_nnz_and_int32_indices_still_loads(tmp_path, gen):
    source = to_sparse(_sparsify_weights(nn.Sequential(nn.Linear(40, 30)), 0.9, gen), min_sparsity=0.5)
    sd = dict(source.state_dict())
    sd["0.crow_indices"], sd["0.col_indices"] = sd["0.crow_indices"].int(), sd["0.col_indices"].int()
    torch.save(sd, tmp_path / "sparse.pt")
    target = to_sparse(_sparsify_weights(nn.Sequential(nn.Linear(40, 30)), 0.6, gen), min_sparsity=0.5)
    target.load_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
    x = torch.randn(3, 40, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
