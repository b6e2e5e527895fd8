"""``spred run optimizers --datasets cifar10``: the data, the models and the run labels of the CIFAR-10 study.

CIFAR-10 here is the data folder's JPEG copy (:func:`spred.datasets.load_cifar10`),
reported as "CIFAR-10 (JPEG)". Images are scaled to [0, 1] and standardised per
channel with the mean and standard deviation of the training images used. Every
model in ``models`` (names of :func:`spred.models.build`) runs the whole grid; a run
is labelled ``cifar10-<model>`` in the ``dataset`` column (and the figures' names),
so that the tables and figures of the two models stay apart.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from spred.experiments._data import image_tensors

__all__ = ["CIFAR_MODELS", "AugmentedModel", "cifar_factory", "label", "load_cifar"]

CIFAR_MODELS = ("cifarcnn", "resnet20")


def label(dataset: str, model: str) -> str:
    """The ``dataset`` column of a run: the dataset, with the model for CIFAR-10 (``cifar10-resnet20``)."""
    return f"{dataset}-{model}" if dataset == "cifar10" else dataset


class AugmentedModel(nn.Sequential):
    """``RandomCropFlip`` (training mode only; parameter-free) followed by the network."""


def _build(name: str, augment: bool) -> nn.Module:
    from spred.datasets import RandomCropFlip
    from spred.models import build

    net = build(name)
    return AugmentedModel(RandomCropFlip(), net) if augment else net


def cifar_factory(name: str, augment: bool):
    """A picklable factory of fresh CIFAR-10 models (seeded by the caller, as the study does)."""
    return functools.partial(_build, name, augment)


def load_cifar(n_train: int | None, n_test: int | None, data_home=None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((X_train, y_train), (X_test, y_test))``: the first ``n_train`` / ``n_test`` images (class-balanced prefixes), standardised."""
    from spred import datasets

    X, y = datasets.load_cifar10(train=True, data_home=data_home)
    Xt, yt = datasets.load_cifar10(train=False, data_home=data_home)
    X, y = image_tensors(X[:n_train], y[:n_train])
    Xt, yt = image_tensors(Xt[:n_test], yt[:n_test])
    mean, std = X.mean(dim=(0, 2, 3), keepdim=True), X.std(dim=(0, 2, 3), keepdim=True)
    return ((X - mean) / std, y), ((Xt - mean) / std, yt)
