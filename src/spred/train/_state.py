"""The records of one :func:`spred.train.fit` call: what it returns, what callbacks see, what it carries along."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spred.nn._sparsify import SparsifiedTensor
from spred.train._controller import SparsityController
from spred.train._distributed import Distributed


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One record per epoch (1-based ``epoch``): ``train_loss`` (mean data loss over
        the epoch, without the penalty), ``val_loss`` and ``val_acc`` (None without
        validation data; ``val_acc`` None for non-classification losses), ``lam``
        (mean over sparsified tensors; None for a plain model), ``sparsity`` (fraction
        of sparsified weights with ``|v| <= threshold``; for a plain model, of all
        parameters), ``target`` (the controller's wanted sparsity, or None), ``lr``,
        ``step`` (optimizer steps so far) and ``time_s`` (seconds for the epoch).
        With ``Runtime(history=False)`` only the last epoch's record, whose
        ``sparsity`` is None (not computed).
    model : nn.Module
        The trained model (the object passed in; with early stopping it holds the best weights).
    best_epoch : int
        The epoch with the lowest validation loss (during the controller's hold phase
        when a target sparsity is set); the last epoch when there is no validation data.
    wall_time_s : float
        Seconds spent in this call.
    """

    history: list[dict]
    model: nn.Module
    best_epoch: int | None
    wall_time_s: float


@dataclass
class TrainState:
    """What a callback sees at the end of each epoch (``history[-1]`` is the new record)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    step: int
    history: list[dict]


@dataclass
class Progress:
    """Everything of a run that changes while it trains and is saved in the checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict | None = None
    last_inputs: torch.Tensor | None = None  # this rank's last training batch, for the output check (not saved)


@dataclass(frozen=True)
class Run:
    """The fixed parts of one ``fit`` call, handed to the per-epoch functions."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: Callable
    add_penalty: bool
    keep: dict | None
    controller: SparsityController | None
    epochs: int
    progress: bool
    checkpoint: Path | None
    tensors: tuple[SparsifiedTensor, ...]  # the spred tensors (empty for a plain model); fixed during fit
    net: nn.Module  # what the forward pass calls: the model, or its DistributedDataParallel wrapper
    dist: Distributed | None = None  # the process group, or None for one process
    amp: torch.dtype | None = None  # autocast dtype of the forward pass (bfloat16), or None
    threshold: float = 0.0  # |v| <= threshold counts as zero in the history
    patience: int | None = None  # early stopping
    callbacks: tuple = ()
    history: bool = True  # keep a record per epoch (False: the last only, without the sparsity count)

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows the bar and writes the checkpoint (rank 0, or the only process)."""
        return self.dist is None or self.dist.is_main

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
