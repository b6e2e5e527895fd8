"""Reference networks for spred's experiments (torch only).

=================  ==========================================  ============
name               network                                     parameters
=================  ==========================================  ============
``mlp``            :class:`MLP` (configurable)                 -
``lenet300100``    :class:`LeNet300100`, MNIST 784-300-100-10  266,610
``lenet5caffe``    :class:`LeNet5Caffe`, MNIST                 431,080
``smallvgg``       :class:`SmallVGG`, 28x28 or 32x32           ~0.29M
``resnet20``       :class:`ResNet20`, CIFAR 32x32              269,722
``resnet56``       :class:`ResNet56`, CIFAR 32x32              853,018
``resnet18``       :class:`ResNet18`, CIFAR variant 32x32      11,173,962
``studycnn``       :class:`StudyCNN`, MNIST 28x28              20,522
``cifarcnn``       :class:`CifarCNN`, CIFAR 32x32, 4 conv, 2 fc 1,031,850
=================  ==========================================  ============

Build one by name with :func:`build`; sparsify it with :func:`spred.sparsify` and
train it with :func:`spred.train.fit`.
"""

from __future__ import annotations

import torch
from torch import nn

from spred._validation import param_error
from spred.models._lenet import LeNet5Caffe
from spred.models._cifar_cnn import CifarCNN
from spred.models._mlp import MLP, LeNet300100
from spred.models._resnet import BasicBlock, ResNet18, ResNet20, ResNet56
from spred.models._study import StudyCNN
from spred.models._vgg import SmallVGG

_REGISTRY: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet300100": LeNet300100,
    "lenet5caffe": LeNet5Caffe,
    "smallvgg": SmallVGG,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "resnet18": ResNet18,
    "studycnn": StudyCNN,
    "cifarcnn": CifarCNN,
}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def list_models() -> list[str]:
    """Names accepted by :func:`build`, in a fixed order."""
    return list(_REGISTRY)


def build(name: str, *, seed: int | None = None, **kwargs) -> nn.Module:
    """Build a reference network by name.

    Parameters
    ----------
    name : str
        One of :func:`list_models`; case, ``-`` and ``_`` are ignored, so
        ``"LeNet-300-100"`` and ``"lenet_5_caffe"`` work.
    seed : int, optional
        Initialise the weights from this seed without touching the global random
        state (the global generator is forked). Without a seed the global generator
        is used, as in ``torch.nn``.
    **kwargs
        Passed to the network's constructor (e.g. ``num_classes=100``).

    Returns
    -------
    nn.Module

    Examples
    --------
    >>> net = build("lenet-300-100", seed=0)
    >>> sum(p.numel() for p in net.parameters())
    266610
    """
    if not isinstance(name, str):
        raise param_error(TypeError, "name", "build", "a str", name)
    cls = _REGISTRY.get(_key(name))
    if cls is None:
        raise param_error(ValueError, "name", "build", f"one of {list_models()}", name)
    if seed is None:
        return cls(**kwargs)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise param_error(TypeError, "seed", "build", "an int or None", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


__all__ = [
    "MLP",
    "BasicBlock",
    "CifarCNN",
    "LeNet300100",
    "LeNet5Caffe",
    "ResNet18",
    "ResNet20",
    "ResNet56",
    "SmallVGG",
    "StudyCNN",
    "build",
    "list_models",
]
