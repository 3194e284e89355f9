"""Did the attack converge? Judged from the update alone, never from the client's images.

A reconstruction that stalled says nothing about leakage, so every attack says whether it
converged, and why. The signal is the held-out BN layers (``objective.bn_statistics.holdout``):
their statistics were never optimised, so matching them is evidence that the dummy images are a
solution of the whole update and not just of the layers they were fitted to (cross-validation on
the attacker's own data). With ``normalize: layer`` each layer's mismatch is a relative error (the
mean's and the variance's RMS error over the layer's own scale, added), which makes one tolerance
meaningful on every model and training state: the attack counts as converged when the held-out
layers are matched to within ``convergence.heldout_error`` (5%) per layer on average.

Held-out channel groups (``objective.bn_statistics.holdout_unit: channel``, for models with few BN
layers) are not a verdict: on a 3-BN ConvNet they were matched to 2% by reconstructions at SSIM
0.19 (``bench.few_bn_holdout``), where the held-out layer said 11%. With them ``converged`` is None.

Without held-out layers there is nothing to judge by: ``converged`` is then ``None``, which every
verdict treats as not converged.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from common.config_loader import option
from common.errors import UserError


@dataclasses.dataclass
class ConvergenceConfig:
    heldout_error: float = option(0.05, "converged when the held-out BN layers' mismatch per layer (relative error of their mean and variance, "
                                        "added) is at most this; needs objective.bn_statistics.holdout and normalize: layer")


@dataclasses.dataclass
class Convergence:
    converged: bool | None  # None: not judged (no held-out layers)
    criterion: str
    heldout_mismatch: float | None  # summed over the held-out layers, of the returned restart's best iterate
    heldout_layers: int  # held-out BN layers, or channel groups (one per layer) when heldout_unit is channel
    heldout_error: float | None  # per held-out layer: what the threshold is compared with
    threshold: float
    objective: float
    start_heldout_mismatch: float | None  # the same sum at the starting image of that restart
    reason: str
    heldout_unit: str = "layer"  # layer, or channel (objective.bn_statistics.holdout_unit)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_convergence_config(cfg: ConvergenceConfig) -> None:
    if not (math.isfinite(cfg.heldout_error) and cfg.heldout_error > 0):
        raise UserError(f"convergence.heldout_error must be a positive number, got {cfg.heldout_error}")


def judge(heldout_mismatch: float | None, heldout_layers: int, objective: float, cfg: ConvergenceConfig,
          normalized: bool = True, start: float | None = None, unit: str = "layer") -> Convergence:
    """The convergence record of one attack result (its returned restart); ``unit``: what was held out."""
    base = dict(criterion="heldout_bn_error", heldout_mismatch=heldout_mismatch, heldout_layers=heldout_layers,
                threshold=cfg.heldout_error, objective=objective, start_heldout_mismatch=start, heldout_unit=unit)
    if heldout_layers < 1 or heldout_mismatch is None:
        return Convergence(converged=None, heldout_error=None, reason="no BN layer held out (objective.bn_statistics.holdout): "
                           "convergence cannot be judged", **base)
    if unit == "channel":  # the error per group is kept for the record; it chose the restart and the rung
        return Convergence(converged=None, heldout_error=heldout_mismatch / heldout_layers, reason="channel groups were held out "
                           "(objective.bn_statistics.holdout_unit: channel): they choose among restarts, but a group is matched "
                           "with its layer's fitted channels even by wrong images, so convergence is not judged", **base)
    if not normalized:
        return Convergence(converged=None, heldout_error=None, reason="the BN prior is not normalised per layer "
                           "(objective.bn_statistics.normalize: none): its mismatch has no common scale to judge", **base)
    if not math.isfinite(heldout_mismatch):
        return Convergence(converged=False, heldout_error=math.inf, reason="the held-out mismatch is not finite", **base)
    error = heldout_mismatch / heldout_layers
    if error <= cfg.heldout_error:
        reason = f"held-out BN layers matched to {error:.2g} per layer <= {cfg.heldout_error:g}"
        return Convergence(converged=True, heldout_error=error, reason=reason, **base)
    reason = f"held-out BN layers missed by {error:.2g} per layer > {cfg.heldout_error:g}: the attack stalled"
    return Convergence(converged=False, heldout_error=error, reason=reason, **base)
