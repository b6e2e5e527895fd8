"""The one training loop of spred.

:func:`fit` trains any model (sparsified or plain) with SGD, Adam, AdamW or Adagrad:
progress bar, evaluation, a checkpoint after every epoch and exact ``resume``, a
guard against non-finite losses and weights, masked fine-tuning (``freeze_zeros``) and
a target-sparsity controller (:class:`TargetSparsity`) that adapts lam to reach a
requested fraction of zeros. Its options come in four groups: :class:`Optim`,
:class:`Sparsity`, :class:`Checkpoints` and :class:`Runtime`. :func:`evaluate`
computes the mean loss and accuracy.
"""

from spred.train._checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from spred.train._controller import SparsityController, TargetSparsity, cubic_ramp
from spred.train._loop import evaluate, fit
from spred.train._optim import OPTIMIZERS, build_optimizer
from spred.train._options import Checkpoints, Optim, Runtime, Sparsity
from spred.train._state import TrainResult, TrainState

__all__ = [
    "OPTIMIZERS",
    "Checkpoints",
    "Optim",
    "Runtime",
    "Sparsity",
    "SparsityController",
    "TargetSparsity",
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "checkpoint_path",
    "cubic_ramp",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]
