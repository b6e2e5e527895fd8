"""The architecture families that spred's structured compression is tested on, written here.

No torchvision / timm import: each family is a few small blocks in the style of the
original (BatchNorm + residual adds, inverted residuals with depthwise convolutions,
ConvNeXt blocks with LayerNorm over channels, DenseNet concatenation, ViTs with
``nn.MultiheadAttention`` and with timm's one-``qkv`` attention), plus tiny random
Hugging Face ``transformers`` BERT and GPT-2 (skipped where ``transformers`` is absent).

``FAMILIES`` maps a name to a builder returning ``(model, example_inputs)``;
:func:`zero_groups` writes exact zeros into every producing slice of some channel
groups, as a collapsed channel-group model has them.
"""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------
# Convolutional families
# ---------------------------------------------------------------------------


def _bn(c):
    return nn.BatchNorm2d(c)


class _Basic(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _bn(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet18Style(nn.Module):
    """torchvision's resnet18 layout (7x7 stem, max-pool, BasicBlocks with 1x1 downsampling), narrow and short."""

    def __init__(self, w=8, n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = _bn(w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_Basic(w, w), _Basic(w, w))
        self.layer2 = nn.Sequential(_Basic(w, 2 * w, 2), _Basic(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w, n_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), _bn(c_out),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Style(nn.Module):
    """Inverted residual blocks: 1x1 expansion, 3x3 depthwise, 1x1 projection, residual where shapes match."""

    def __init__(self, n_classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8), nn.ReLU6())
        self.blocks = nn.Sequential(_InvertedResidual(8, 8, 1, 2), _InvertedResidual(8, 12, 2, 3), _InvertedResidual(12, 12, 1, 3))
        self.head = nn.Sequential(nn.Conv2d(12, 24, 1, bias=False), _bn(24), nn.ReLU6())
        self.classifier = nn.Linear(24, n_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStyle(nn.Module):
    """Patchify stem + LayerNorm, ConvNeXt blocks (depthwise 7x7, LayerNorm over channels, MLP, layer scale)."""

    def __init__(self, dim=16, n_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.stem_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.Sequential(_ConvNeXtBlock(dim), _ConvNeXtBlock(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.blocks(x)
        return self.head(self.norm(x.mean((2, 3))))


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.norm1, self.conv1 = _bn(c_in), nn.Conv2d(c_in, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = _bn(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))
        return torch.cat([x, y], 1)


class DenseNetStyle(nn.Module):
    """Dense blocks (BN-ReLU-conv1x1-BN-ReLU-conv3x3, concatenated onto the input) and a transition."""

    def __init__(self, growth=4, n_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(_DenseLayer(8, growth), _DenseLayer(8 + growth, growth))
        c = 8 + 2 * growth
        self.transition = nn.Sequential(_bn(c), nn.ReLU(), nn.Conv2d(c, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(_DenseLayer(8, growth), _DenseLayer(8 + growth, growth))
        self.norm = _bn(c)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x):
        x = self.block2(self.transition(self.block1(self.stem(x))))
        return self.fc(F.relu(self.norm(x)).mean((2, 3)))


# ---------------------------------------------------------------------------
# Vision transformers
# ---------------------------------------------------------------------------


class _TimmAttention(nn.Module):
    """timm's Attention: one qkv Linear, reshape to (3, B, heads, N, head_dim), unbind, softmax, proj."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class _MHA(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class _ViTBlock(nn.Module):
    def __init__(self, dim, num_heads, attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm blocks, final LayerNorm, linear head."""

    def __init__(self, attention="timm", dim=32, depth=2, num_heads=4, patch=4, image=16, n_classes=5):
        super().__init__()
        attn = _TimmAttention if attention == "timm" else _MHA
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_ViTBlock(dim, num_heads, attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---------------------------------------------------------------------------
# Hugging Face transformers (tiny random configurations)
# ---------------------------------------------------------------------------


def bert(seed=0):
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16, num_labels=3, attn_implementation="eager",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 50, (3, 8), generator=g)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def gpt2(seed=0):
    transformers = _transformers()
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, use_cache=False, attn_implementation="eager",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    return model, {"input_ids": torch.randint(0, 50, (3, 8), generator=g)}


def _transformers():
    import pytest

    return pytest.importorskip("transformers", reason="the BERT / GPT-2 families need transformers")


# ---------------------------------------------------------------------------
# The families
# ---------------------------------------------------------------------------


def _randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial eval statistics and affine parameters, so that a mistake in the norms shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _vision(cls, size=16, **kwargs):
    def build(seed=0):
        torch.manual_seed(seed)
        model = _randomize_norms(cls(**kwargs), seed)
        return model, torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))

    return build


def _resnet20(seed=0):
    from spred.models import build

    model = _randomize_norms(build("resnet20", seed=seed, shortcut="B"), seed)  # option A's zero padding is not traced
    return model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))


FAMILIES = {
    "resnet18": _vision(ResNet18Style, 32),
    "resnet20": _resnet20,
    "mobilenetv2": _vision(MobileNetV2Style),
    "convnext": _vision(ConvNeXtStyle),
    "densenet": _vision(DenseNetStyle),
    "vit_mha": _vision(ViT, attention="mha"),
    "vit_timm": _vision(ViT, attention="timm"),
    "bert": bert,
    "gpt2": gpt2,
}


# ---------------------------------------------------------------------------
# Zeroing channel groups exactly
# ---------------------------------------------------------------------------


def _zero_slice(t: torch.Tensor | None, dim: int, idxs) -> None:
    if t is not None and t.dim() > dim:
        t.index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long), 0.0)


def zero_group(DG, group) -> None:
    """Write zeros into every producing slice of a Torch-Pruning group (out rows, biases, norm scale and shift)."""
    with torch.no_grad():
        for item in group:
            dep, idxs = item.dep, list(item.idxs)
            module = dep.target.module
            if not DG.is_out_channel_pruning_fn(dep.handler) and not isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.parameter.Parameter)):
                continue
            if isinstance(module, nn.Parameter):
                dim = next(d for p, d in DG.unwrapped_parameters if p is module)
                _zero_slice(module.data, dim, idxs)
            elif type(module).__name__ == "Conv1D":  # transformers' transposed Linear
                _zero_slice(module.weight, 1, idxs)
                _zero_slice(module.bias, 0, idxs)
            elif isinstance(module, nn.Embedding):
                _zero_slice(module.weight, 1, idxs)
            elif isinstance(module, nn.MultiheadAttention):  # its outputs are out_proj's rows
                _zero_slice(module.out_proj.weight, 0, idxs)
                _zero_slice(module.out_proj.bias, 0, idxs)
            elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                _zero_slice(module.weight, 0, idxs)
                _zero_slice(getattr(module, "bias", None), 0, idxs)


def channel_groups(model, example_inputs):
    """Torch-Pruning's dependency graph of ``model`` and its prunable groups ``(root name, channels, group)`` (root: Linear /
    conv / Conv1D), named as ``sparsify(groups="channels")`` and ``prune_channels`` name them."""
    import torch_pruning as tp

    from spred._inputs import run, split_inputs
    from spred.compress._layers import producer_types
    from spred.nn._graph import customized_pruners, dependency_groups

    inputs = split_inputs(example_inputs, "tests")
    DG = tp.DependencyGraph().build_dependency(
        model, example_inputs=inputs, forward_fn=lambda m, _: run(m, inputs), verbose=False, customized_pruners=customized_pruners(tp, model)
    )
    types = producer_types()
    return DG, [(name, channels, group) for name, _, channels, group in dependency_groups(model, DG, lambda m: isinstance(m, types))]


def zero_some_groups(model, example_inputs, fraction=0.3, seed=0):
    """Zero ``fraction`` of the channels of every prunable group; return ``{root layer name: zeroed indices}``."""
    rng = random.Random(seed)
    DG, groups = channel_groups(model, example_inputs)
    zeroed = {}
    for name, channels, group in groups:
        root = group[0].dep.target.module
        n = len(channels)
        k = max(1, int(fraction * n)) if n > 1 else 0
        if k == 0:
            continue
        picks = sorted(rng.sample(channels, k))
        sub = DG.get_pruning_group(root, group[0].dep.handler, picks)
        zero_group(DG, sub)
        zeroed[name] = picks
    return zeroed


def zero_heads(model, heads: dict[str, list[int]]) -> None:
    """Zero the query, key and value rows (and biases) of ``heads`` ``{attention module name: [head, ...]}``."""
    from spred.nn._graph import find_attention

    found = {a.name: a for a in find_attention(model)}
    with torch.no_grad():
        for name, hs in heads.items():
            for module, pname, dim, rows in found[name].head_rows():
                _zero_slice(getattr(module, pname), dim, [r for r, h in rows if h in hs])
