"""Target-sparsity controller: adapt lam during training to reach a requested fraction of zeros.

Users think in "90% sparse", not in lam. Two facts shape the design:

* **Zeros come late.** Under spred a weight that the penalty removes shrinks
  geometrically, at a rate proportional to ``lr * (lam - |dL/dv|)`` (SGD), so it
  reaches ``|v| <= threshold`` many steps after lam was raised. A controller that
  only looks at the current sparsity keeps raising lam while the zeros are on their
  way, and overshoots.
* **Overshoot does not undo itself.** The origin of ``v = u * w`` is a saddle:
  a weight near 0 regrows at a rate proportional to its (small) size, and a unit
  whose inputs died gets no gradient. Lowering lam afterwards barely helps.

So the controller predicts. Every ``update_every`` steps it reads ``|v|`` of every
sparsified weight (the group norm ``||v_g||`` for grouped tensors, whose zeros come by
whole groups: a group counts with all its entries) and keeps, per weight or group, two
moving averages (fast and slow) of the slope of ``log|v|``. A weight counts as a
*predicted* zero when it is zero now or
when the slower of the two trends carries it below the threshold by the end of
training (a weight settling on a nonzero value decelerates, and the fast average
sees that first). lam then moves multiplicatively::

    gap = min(wanted(t) - sparsity, target - predicted)     # predicted: at the end of training
    log(lam) += clip(gain * gap / target, -max_step, +max_step)

``wanted(t)`` ramps from 0 to ``target`` (the cubic schedule of gradual magnitude
pruning, Zhu & Gupta 2017) and gates increases: lam never grows while the model is
ahead of the schedule, and shrinks as soon as the prediction passes the target.
Every tensor's lam is multiplied by the same factor, so a per-tensor lam mapping
keeps its ratios.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from numbers import Real

import torch

from spred._validation import check_choice, check_float, check_int
from spred.nn import get_lam, set_lam
from spred.nn._sparsify import sparsified_units
from spred.nn._rules import group_norms, reduce_dims, unit_dim, zero_mask

logger = logging.getLogger(__name__)

FAST = 0.5  # decay of the fast trend average (per update)


def cubic_ramp(progress: float) -> float:
    """``1 - (1 - p)^3`` for ``p`` clipped to [0, 1]: fast early, flat at the end."""
    p = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - p) ** 3


@dataclass(frozen=True)
class TargetSparsity:
    """Reach ``target`` zeros among the sparsified weights by adapting lam during :func:`~spred.train.fit`.

    A weight counts as zero when ``|v| <= threshold`` (for grouped tensors, when the
    norm of its group is; the fraction is
    :attr:`spred.SparsityReport.sparsified_sparsity`). See the module docstring of
    ``spred.train._controller`` and ``docs/training.md`` for the update rule.

    Parameters
    ----------
    target : float in (0, 1)
        Wanted fraction of zeros among the sparsified weights at the end of training.
    warmup_epochs : float, default=0.0
        Epochs (may be fractional) during which lam stays at its initial value; the
        trends are measured all the same.
    ramp_epochs : float, optional
        Epochs over which the wanted sparsity ramps from 0 to ``target`` after the
        warm-up. Default: two thirds of the epochs left after the warm-up.
    update_every : int, default=10
        Optimizer steps between two updates of lam (each update reads every
        sparsified weight once).
    gain : float, default=0.5
        Change of ``log(lam)`` per update for a gap of one ``target``.
    max_step : float, optional
        Largest change of ``log(lam)`` per update. Default: ``ln(1000)`` divided by
        half the number of updates in the run, so that lam can move by a factor of
        1000 within half of training whatever its length.
    initial_lam : float, optional
        Starting lam (the mean over tensors; a per-tensor mapping keeps its ratios).
        Default: the lam the model was sparsified with; required when that is 0.
        Start low: the controller raises lam quickly, but zeros it produced by
        overshooting do not come back.
    lam_bounds : (float, float), default=(1e-12, 1e3)
        The mean lam stays in this interval.
    threshold : float, optional
        ``|v| <= threshold`` counts as zero; must be > 0. Default: ``fit``'s
        ``threshold`` (which the history's ``sparsity`` always uses: pass the threshold
        to ``fit`` to have one number for both).
    horizon_epochs : float, optional
        How far ahead the prediction looks. Default: to the end of training.
    trend_decay : float, default=0.9
        Decay per update of the slow trend average.
    count : {"weights", "groups"}, default="weights"
        What ``target`` is a fraction of. ``"weights"``: sparsified entries (a zero group
        counts with all its entries; the ``sparsity`` of ``fit``'s history and of
        :func:`spred.sparsity_report`). ``"groups"``: units, each group (a neuron, a filter,
        a channel group of ``groups="channels"``) counting once, whatever its size, and each
        weight of an elementwise tensor once: ``0.5`` then means half of the channels, which
        is what structured pruning removes.

    Examples
    --------
    >>> schedule = TargetSparsity(0.9, warmup_epochs=1)
    >>> schedule.wanted(epoch=1.0, total_epochs=10), schedule.wanted(epoch=7.0, total_epochs=10)
    (0.0, 0.9)
    """

    target: float
    warmup_epochs: float = 0.0
    ramp_epochs: float | None = None
    update_every: int = 10
    gain: float = 0.5
    max_step: float | None = None
    initial_lam: float | None = None
    lam_bounds: tuple[float, float] = (1e-12, 1e3)
    threshold: float | None = None
    horizon_epochs: float | None = None
    trend_decay: float = 0.9
    count: str = "weights"

    def __post_init__(self):
        who = "TargetSparsity"
        check_choice(self.count, "count", who, ("weights", "groups"))
        check_float(self.target, "target", who, 0.0, 1.0, low_open=True, high_open=True)
        check_float(self.warmup_epochs, "warmup_epochs", who, 0.0)
        for name in ("ramp_epochs", "max_step", "initial_lam", "threshold", "horizon_epochs"):
            if getattr(self, name) is not None:
                check_float(getattr(self, name), name, who, 0.0, low_open=True)
        check_int(self.update_every, "update_every", who, 1)
        check_float(self.gain, "gain", who, 0.0, low_open=True)
        check_float(self.trend_decay, "trend_decay", who, 0.0, 1.0, high_open=True)
        bounds = self.lam_bounds
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(isinstance(b, Real) for b in bounds) and 0 < bounds[0] < bounds[1] < math.inf):
            raise ValueError(f"The 'lam_bounds' parameter of TargetSparsity must be (low, high) with 0 < low < high < inf. Got {bounds!r} instead.")

    def ramp_end(self, total_epochs: float) -> float:
        """The epoch at which the wanted sparsity reaches ``target``."""
        ramp = self.ramp_epochs if self.ramp_epochs is not None else 2.0 * max(total_epochs - self.warmup_epochs, 0.0) / 3.0
        return self.warmup_epochs + ramp

    def wanted(self, epoch: float, total_epochs: float) -> float:
        """The wanted sparsity after ``epoch`` (fractional) epochs of ``total_epochs``."""
        if epoch <= self.warmup_epochs:
            return 0.0
        end = self.ramp_end(total_epochs)
        if epoch >= end:
            return self.target
        return self.target * cubic_ramp((epoch - self.warmup_epochs) / (end - self.warmup_epochs))

    def update(self, log_scale: float, sparsity: float, wanted: float, predicted: float, wanted_ahead: float, max_step: float) -> float:
        """The next ``log`` of the lam multiplier (a pure function of the measurements).

        lam grows only while the model is behind both the schedule now (``sparsity <
        wanted``) and at the end of the horizon (``predicted < wanted_ahead``, the
        target unless ``horizon_epochs`` is set); it shrinks as soon as either is ahead.
        """
        gap = min(wanted - sparsity, wanted_ahead - predicted)
        step = self.gain * gap / self.target
        return log_scale + min(max(step, -max_step), max_step)


class SparsityController:
    """Runtime state of a :class:`TargetSparsity` inside one ``fit`` call.

    lam of every sparsified tensor is ``base[name] * exp(log_scale)``, where ``base``
    is the lam the tensors had at the start. The per-weight trend averages live on
    the model's device (three float32 values per sparsified weight). Everything is
    in :meth:`state_dict`, so a resumed run continues exactly.

    ``sync``, when given, maps the freshly updated ``log(multiplier)`` to the value
    every process must use; data-parallel ``fit`` passes a broadcast from rank 0, so
    lam is identical on all ranks even if their measurements were to differ.
    """

    def __init__(self, config: TargetSparsity, *, threshold: float, steps_per_epoch: int, total_epochs: int, sync=None):
        self.config = config
        self.sync = sync
        self.threshold = config.threshold if config.threshold is not None else threshold
        if not self.threshold > 0:
            raise ValueError(
                "target_sparsity needs threshold > 0: with threshold=0 only exact zeros count, which SGD reaches only by "
                "underflow (about ln(|v|/1e-45) / (2*lr*lam) steps) and Adam hardly ever. Pass threshold=1e-3 (a size below "
                "which a weight does not matter) to fit or to TargetSparsity, and collapse with the same threshold at the end."
            )
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = total_epochs
        self.total_steps = total_epochs * steps_per_epoch
        updates = max(1.0, self.total_steps / config.update_every)
        self.max_step = config.max_step if config.max_step is not None else math.log(1000.0) / max(updates / 2, 1.0)
        self.base: dict[str, float] = {}
        self.log_scale = 0.0
        self.sparsity = 0.0  # last measured
        self.predicted = 0.0  # last predicted (end of the horizon)
        self.prev_log: dict[str, torch.Tensor] = {}
        self.trends: dict[str, torch.Tensor] = {}  # (fast, slow) slopes of log|v| per step, stacked

    # ---------------------------------------------------------------- schedule
    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def wanted(self, step: int) -> float:
        """The wanted sparsity after optimizer step ``step``."""
        return self.config.wanted(self.epoch_of(step), self.total_epochs)

    def ramp_done(self, step: int) -> bool:
        """Whether the schedule has reached the target (the hold phase)."""
        return self.epoch_of(step) >= self.config.ramp_end(self.total_epochs)

    def horizon(self, step: int) -> int:
        """Steps the prediction looks ahead: to the end of training, or ``horizon_epochs``."""
        remaining = max(0, self.total_steps - step)
        if self.config.horizon_epochs is None:
            return remaining
        return min(remaining, round(self.config.horizon_epochs * self.steps_per_epoch))

    # ---------------------------------------------------------------- lam
    def lam(self) -> dict[str, float]:
        scale = math.exp(self.log_scale)
        return {n: b * scale for n, b in self.base.items()}

    def start(self, model, optimizer, penalty_in_loss: bool) -> None:
        """Record the starting lam (or set ``initial_lam``) at the beginning of a fresh run."""
        self.base = get_lam(model)
        mean = sum(self.base.values()) / len(self.base)
        initial = self.config.initial_lam
        if initial is not None:
            self.base = {n: (lam * initial / mean if mean > 0 else initial) for n, lam in self.base.items()}
        elif mean <= 0:
            raise ValueError("TargetSparsity needs a positive starting lam, but the model was sparsified with lam=0. Pass TargetSparsity(..., initial_lam=1e-4) or sparsify with lam > 0.")
        self.log_scale = 0.0
        self._clip()
        self.apply(model, optimizer, penalty_in_loss)

    def _clip(self) -> None:
        lo, hi = self.config.lam_bounds
        mean = sum(self.base.values()) / len(self.base)
        self.log_scale = min(max(self.log_scale, math.log(lo / mean)), math.log(hi / mean))

    def apply(self, model, optimizer, penalty_in_loss: bool) -> None:
        """Write the current lam into the model and the optimizer's spred groups."""
        lam = self.lam()
        values = set(lam.values())
        set_lam(model, values.pop() if len(values) == 1 else lam, optimizer)  # keeps penalty_in_loss groups at decay 0

    # ---------------------------------------------------------------- measurement
    @torch.no_grad()
    def measure(self, model, step: int) -> tuple[float, float]:
        """The fraction of sparsified weights that are zero now (``|v| <= threshold``, or a whole group whose
        norm is: :func:`spred.nn._rules.zero_mask`), and predicted ``horizon`` steps ahead; with
        ``count="groups"`` the fraction of groups (a group counts when every entry is zero under that rule)."""
        horizon, slow = self.horizon(step), self.config.trend_decay
        log_thr = math.log(self.threshold)
        zeros = predicted = numel = 0
        for t in sparsified_units(model):  # a channel group's value() is its (channels, entries) matrix
            raw = t.value().detach()
            # grouped tensors: the group norm decides and a group counts with all its entries,
            # as in collapse and sparsity_report (where an exact 0 inside a live group also counts)
            v = group_norms(raw, t.spred.groups, t.spred.out_dim)
            log_v = v.float().clamp_min(self.threshold * 1e-6).log()  # exact zeros stay finite
            prev = self.prev_log.get(t.name)
            if prev is not None:
                slope = (log_v - prev) / self.config.update_every
                trend = self.trends.get(t.name)
                if trend is None:
                    self.trends[t.name] = torch.stack([slope, slope])
                else:
                    trend[0].mul_(FAST).add_(slope, alpha=1 - FAST)
                    trend[1].mul_(slow).add_(slope, alpha=1 - slow)
            self.prev_log[t.name] = log_v
            zero = zero_mask(raw, t.spred.groups, t.spred.out_dim, self.threshold)  # the one rule
            ahead = zero
            trend = self.trends.get(t.name)
            if trend is not None:  # predicted: the trend of log|v| (group norms) reaches the threshold within the horizon
                ahead = zero | (log_v + horizon * trend.max(dim=0).values.clamp_max(0) <= log_thr).expand_as(raw)
            keep = unit_dim(t.spred.groups, t.spred.out_dim) if self.config.count == "groups" else None
            if keep is not None and raw.dim() > 1:  # one count per group: the slices along the kept dim
                zero, ahead = (m.all(dim=reduce_dims(raw.dim(), keep)) for m in (zero, ahead))
            zeros += int(zero.sum())
            predicted += int(ahead.sum())
            numel += zero.numel()
        return zeros / numel, predicted / numel

    def step(self, model, optimizer, step: int, penalty_in_loss: bool) -> None:
        """Called after optimizer step number ``step`` (1-based): measure and update lam when due."""
        if step % self.config.update_every:
            return
        self.sparsity, self.predicted = self.measure(model, step)
        if self.epoch_of(step) <= self.config.warmup_epochs:
            return
        wanted_ahead = self.wanted(step + self.horizon(step))
        self.log_scale = self.config.update(self.log_scale, self.sparsity, self.wanted(step), self.predicted, wanted_ahead, self.max_step)
        if self.sync is not None:
            self.log_scale = self.sync(self.log_scale)
        self._clip()
        self.apply(model, optimizer, penalty_in_loss)
        logger.debug(
            "step %d: sparsity %.4f (wanted %.4f), predicted %.4f (wanted %.4f), lam x%.4g",
            step, self.sparsity, self.wanted(step), self.predicted, wanted_ahead, math.exp(self.log_scale),
        )

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {
            "base": dict(self.base),
            "log_scale": self.log_scale,
            "sparsity": self.sparsity,
            "predicted": self.predicted,
            "prev_log": dict(self.prev_log),
            "trends": dict(self.trends),
        }

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        self.base = {str(k): float(v) for k, v in state["base"].items()}
        self.log_scale = float(state["log_scale"])
        self.sparsity = float(state["sparsity"])
        self.predicted = float(state["predicted"])
        self.prev_log = {k: v.to(device) for k, v in state["prev_log"].items()}
        self.trends = {k: v.to(device) for k, v in state["trends"].items()}
