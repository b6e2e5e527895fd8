"""Baselines of ``spred run compression`` that learn their sparsity: STR and an L1 penalty in the loss.

* :func:`str_sparsify` / :class:`STRController`: soft threshold reparametrisation
  (Kusupati et al., 2020), ``w_sparse = sign(w) * relu(|w| - sigmoid(s))`` with a
  learnable ``s`` per layer;
* :func:`l1_loss`: an L1 penalty added to the loss (plain subgradient descent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from spred.experiments._prune_budget import prunable_weights
from spred.train import cubic_ramp

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- STR


class SoftThreshold(nn.Module):
    """STR's parametrisation: ``w_sparse = sign(w) * relu(|w| - sigmoid(s))``, one learnable ``s`` per layer.

    Kusupati et al. (2020), "Soft Threshold Weight Reparameterization for Learnable
    Sparsity". Weight decay on ``w`` and ``s`` raises the threshold ``sigmoid(s)``
    during training; entries below it are exact zeros.
    """

    def __init__(self, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * F.relu(w.abs() - torch.sigmoid(self.s))


def str_sparsify(model: nn.Module, s_init: float) -> list[nn.Parameter]:
    """Put :class:`SoftThreshold` on every prunable weight (in place); returns the ``s`` parameters."""
    out = []
    for module in prunable_weights(model).values():
        st = SoftThreshold(s_init).to(device=module.weight.device, dtype=module.weight.dtype)
        parametrize.register_parametrization(module, "weight", st)
        out.append(st.s)
    return out


def str_collapse(model: nn.Module) -> nn.Module:
    """Replace STR's parametrisation by its value: plain weights with exact zeros (in place)."""
    for module in prunable_weights(model).values():
        if parametrize.is_parametrized(module, "weight"):
            with torch.enable_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


class STRController:
    """Adapt the weight decay of STR's thresholds so that its sparsity follows a cubic ramp to a target.

    STR has no sparsity target: its sparsity follows from the weight decay on the
    threshold parameters ``s``, which pulls ``s`` towards 0 and so raises the
    thresholds ``sigmoid(s)`` against the loss gradient. To compare methods at equal
    compression, every ``update_every`` optimizer steps this hook reads the fraction
    of exact zeros of the STR weights and moves that weight decay multiplicatively,
    ``log(lam) += clip(gain * (wanted(t) - sparsity) / target, -max_step, max_step)``,
    where ``wanted(t)`` ramps from 0 to ``target`` with ``1 - (1 - p)^3`` over
    ``ramp_steps``. The parameter groups marked ``"str"`` (the thresholds) follow
    this rule throughout. Decay pulls ``s`` towards 0, so a threshold never exceeds
    ``sigmoid(0) = 0.5``: at extreme targets (LeNet-5 at 280x) the thresholds saturate
    near 99% zeros while the surviving weights grow past them. From then on (mean
    threshold >= ``saturation``) the decay of the groups marked ``"str_weights"`` (the
    weights: STR decays weights and thresholds alike) rises too, by
    ``log(lam_w) += clip(gain * log((1 - sparsity) / (1 - wanted(t))), ...)``: on the log
    of the density, since near 99.6% zeros one point more is a factor 3 fewer weights.
    It falls back towards its initial value whenever the sparsity is ahead of the ramp.
    A weight below its threshold is not lost: it comes back if the threshold drops.
    """

    def __init__(self, model: nn.Module, target: float, *, ramp_steps: int, update_every: int = 10, gain: float = 0.5,
                 max_step: float = 0.2, lam_bounds: tuple[float, float] = (1e-8, 10.0), saturation: float = 0.45):  # fmt: skip
        self.model, self.target, self.ramp_steps, self.update_every = model, target, max(ramp_steps, 1), update_every
        self.gain, self.max_step, self.lam_bounds, self.saturation = gain, max_step, lam_bounds, saturation
        self.modules = list(prunable_weights(model).values())
        self.t = 0
        self._weights_floor: dict[int, float] = {}

    @torch.no_grad()
    def mean_threshold(self) -> float:
        """Mean of ``sigmoid(s)`` over the layers carrying a :class:`SoftThreshold` (0 if none)."""
        values = [float(torch.sigmoid(p.s)) for m in self.modules if parametrize.is_parametrized(m, "weight")
                  for p in m.parametrizations.weight if isinstance(p, SoftThreshold)]  # fmt: skip
        return sum(values) / len(values) if values else 0.0

    @torch.no_grad()
    def sparsity(self) -> float:
        zeros = total = 0
        for m in self.modules:
            w = m.weight
            zeros += int((w == 0).sum())
            total += w.numel()
        return zeros / total

    def __call__(self, optimizer, args=None, kwargs=None) -> None:
        self.t += 1
        if self.t % self.update_every:
            return
        wanted = self.target * cubic_ramp(self.t / self.ramp_steps)
        sparsity = self.sparsity()
        step = max(-self.max_step, min(self.max_step, self.gain * (wanted - sparsity) / self.target))
        density_gap = math.log(max(1.0 - sparsity, 1e-12) / max(1.0 - wanted, 1e-12))
        step_w = max(-self.max_step, min(self.max_step, self.gain * density_gap))
        saturated = step_w > 0 and self.mean_threshold() >= self.saturation
        for g in optimizer.param_groups:
            if g.get("str"):
                g["weight_decay"] = min(max(g["weight_decay"] * math.exp(step), self.lam_bounds[0]), self.lam_bounds[1])
            elif g.get("str_weights") and (saturated or step_w < 0):
                floor = self._weights_floor.setdefault(id(g), g["weight_decay"])
                g["weight_decay"] = min(max(g["weight_decay"] * math.exp(step_w), floor), self.lam_bounds[1])


# --------------------------------------------------------------------------- L1 in the loss


def l1_loss(model: nn.Module, lam: float, base: Callable | None = None) -> Callable:
    """``loss(out, y) = base(out, y) + lam * sum_l ||W_l||_1`` over the prunable weights.

    The penalty is minimised by plain (sub)gradient steps: weights oscillate around
    zero at the scale of the learning rate instead of reaching it, so the method ends
    with a magnitude threshold (:func:`budget_masks`).
    """
    base = F.cross_entropy if base is None else base
    weights = list(prunable_weights(model).values())

    def loss(out, y):
        return base(out, y) + lam * sum(m.weight.abs().sum() for m in weights)

    return loss
