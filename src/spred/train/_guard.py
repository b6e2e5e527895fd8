"""The non-finite guard of :func:`spred.train.fit`.

Two checks, both cheap:

* every step, the training loss (a float the loop reads anyway) must be finite;
* at the end of every epoch, before the evaluation, the callbacks, the checkpoint and
  the return, every floating tensor of the model's state (parameters, spred factors,
  buffers) must be finite; before a checkpoint is written, the optimizer's state too.

The second check catches a blow-up in the *last* step of an epoch, whose loss was still
finite (the step itself produced the overflow). So a checkpoint never holds a
non-finite value, and the error's claim that the last checkpoint is intact is true.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spred.train._evaluate import _autocast
from spred.train._state import Progress, Run

ADVICE = "Lower the learning rate (lr={lr:g}) or scale the inputs (standardise features, normalise images), then resume or restart."


def _saved(checkpoint: Path | None, epoch: int) -> str:
    if checkpoint is not None and epoch:
        return f"The last checkpoint ({checkpoint}, end of epoch {epoch}) is intact: its values are all finite."
    return "No checkpoint was written for this run yet."


def loss_error(value: float, epoch: int, step_in_epoch: int, step: int, lr: float, checkpoint: Path | None, saved_epoch: int) -> FloatingPointError:
    """The error for a non-finite training loss at ``epoch``, ``step_in_epoch`` (optimizer step ``step``)."""
    return FloatingPointError(
        f"fit stopped: the training loss is {value} at epoch {epoch}, step {step_in_epoch} (optimizer step {step}). "
        f"{ADVICE.format(lr=lr)} {_saved(checkpoint, saved_epoch)}"
    )


def _non_finite_names(named) -> list[str]:
    """Names of the floating tensors in ``named`` that hold a NaN or an infinity (one device sync in all)."""
    items = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not items:
        return []
    # one reduction per tensor in its own dtype (a float64 value above float32's range is finite), one sync for all
    device = items[0][1].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in items])
    bad = (~finite).nonzero().flatten().tolist()
    return [items[i][0] for i in bad]


@torch.no_grad()
def model_non_finite(model: nn.Module, tensors=()) -> list[str]:
    """Names of the model's parameters and buffers (spred factors included), and of the spred weights ``v = u * w``
    of ``tensors``, that are not finite (finite factors can multiply to an infinite weight)."""
    named = list(model.state_dict(keep_vars=True).items())
    named += [(t.name, t.value()) for t in tensors]
    return _non_finite_names(named)


def optimizer_non_finite(optimizer: torch.optim.Optimizer) -> list[str]:
    """``"state[i].key"`` of the optimizer's state tensors that are not finite (momentum, Adam moments)."""
    named = []
    for i, state in enumerate(optimizer.state.values()):
        named += [(f"state[{i}].{k}", v) for k, v in state.items()]
    return _non_finite_names(named)


def check_finite(model: nn.Module, optimizer: torch.optim.Optimizer | None, *, epoch: int, step: int, lr: float, checkpoint: Path | None, saved_epoch: int, tensors=()) -> None:
    """Raise :class:`FloatingPointError` if the model (its spred ``tensors`` included, and, if given, the optimizer state)
    holds a non-finite value."""
    bad = model_non_finite(model, tensors)
    what = "the weights"
    if not bad and optimizer is not None:
        bad, what = optimizer_non_finite(optimizer), "the optimizer state"
    if not bad:
        return
    names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise FloatingPointError(
        f"fit stopped: {what} hold non-finite values after epoch {epoch} (optimizer step {step}; the last loss was "
        f"still finite, the last step overflowed): {names}. {ADVICE.format(lr=lr)} {_saved(checkpoint, saved_epoch)}"
    )


@torch.no_grad()
def outputs_finite(model: nn.Module, x: torch.Tensor | None, amp: torch.dtype | None) -> bool:
    """Whether ``model(x)`` (eval mode) is finite: finite weights can still be large enough to overflow the activations."""
    if x is None or len(x) == 0:
        return True
    was_training = model.training
    model.eval()
    try:
        with _autocast(amp, x.device):
            out = model(x)
    finally:
        model.train(was_training)
    return not isinstance(out, torch.Tensor) or bool(torch.isfinite(out).all())


def outputs_error(epoch: int, step: int, lr: float, checkpoint: Path | None, saved_epoch: int) -> FloatingPointError:
    return FloatingPointError(
        f"fit stopped: after epoch {epoch} (optimizer step {step}) the weights are finite but so large that the model's "
        f"outputs on the last training batch are not. {ADVICE.format(lr=lr)} {_saved(checkpoint, saved_epoch)}"
    )


def check_run(run: Run, prog: Progress, *, epoch: int, saved_epoch: int, optimizer: bool = False, outputs: bool = False) -> None:
    """The end-of-epoch guard of ``fit``: weights (and spred weights), optionally the optimizer state and the outputs.

    The same weights on every rank give the same verdict; the outputs (of each rank's
    own last batch) are agreed on with one collective, so all ranks stop together.
    """
    lr, checkpoint = run.lr, run.checkpoint
    check_finite(run.model, run.optimizer if optimizer else None, epoch=epoch, step=prog.step, lr=lr, checkpoint=checkpoint, saved_epoch=saved_epoch, tensors=run.tensors)
    if not outputs:
        return
    bad = not outputs_finite(run.model, prog.last_inputs, run.amp)
    if run.dist is not None:
        bad = run.dist.any(bad)
    if bad:
        raise outputs_error(epoch, prog.step, lr, checkpoint, saved_epoch)
