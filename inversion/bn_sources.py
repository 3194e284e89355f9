"""Where the BN-statistics prior takes its targets from: one small class per source.

Every source compares the dummy batch statistics with targets in the same convention: the mean,
and the *unbiased* variance (what running_var accumulates), so biased never meets unbiased.
PyTorch's update is r_new = (1 - m) r_old + m s, applied once per local step.
"""
from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch

from common.errors import UserError
from inversion.functional import BNStat

Targets = list[tuple[torch.Tensor, torch.Tensor]]  # per BN layer: (mean, unbiased var)


def layer_distance(stat: BNStat, mean: torch.Tensor, var: torch.Tensor, scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """DeepInversion's per-layer term: ||mu(x) - mu*||_2 + ||var(x) - var*||_2, each times its scale."""
    return scale[0] * torch.linalg.vector_norm(stat.mean - mean) + scale[1] * torch.linalg.vector_norm(stat.var_unbiased - var)


NORMALIZATIONS = ("layer", "none")
UPDATE_SCALES = ("known", "fit")


def layer_scales(variances: list[torch.Tensor], normalize: str) -> list[tuple[float, float]]:
    """Per BN layer, the factors that make its two distances scale-free: 1 / (s sqrt(C)) for the mean
    and 1 / (s^2 sqrt(C)) for the variance, s^2 the layer's mean target variance (C channels).

    Why: BN output does not change when its input is rescaled, so neither does the network, but raw
    distances do. At random initialisation the stem BN's input is ~100x smaller than the deep
    layers', and the layer closest to the pixels then weighs nothing in the sum. The scaled
    distances are RMS relative errors, comparable between layers and between early and trained
    models. ``variances``: each layer's target variance per channel (any source; averaging over the
    channels keeps noisy targets usable; the floor only avoids a division by zero).
    """
    if normalize not in NORMALIZATIONS:
        raise UserError(f"objective.bn_statistics.normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize}")
    if normalize == "none":
        return [(1.0, 1.0)] * len(variances)
    out = []
    for var in variances:
        s2 = max(float(var.double().mean()), 1e-12)
        root = math.sqrt(var.numel())
        out.append((1.0 / (math.sqrt(s2) * root), 1.0 / (s2 * root)))
    return out


def one_step_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float) -> torch.Tensor:
    """The paper's formula, exact for one local step: s = (r_new - (1 - m) r_old) / m."""
    return (r_new.double() - (1 - m) * r_old.double()) / m


def weighted_mean_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float, steps: int) -> torch.Tensor:
    """For T steps, the momentum-weighted mean of the T batch statistics: (r_T - (1-m)^T r_0) / (1 - (1-m)^T)."""
    decay = (1 - m) ** steps
    return (r_new.double() - decay * r_old.double()) / (1 - decay)


class BNSource(abc.ABC):
    name: ClassVar[str]
    layers: int = 0  # BN layers with targets

    @abc.abstractmethod
    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """[L]: the prior's value per BN layer for the dummy statistics of every step."""

    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """Scalar prior: the sum over BN layers."""
        return self.layer_losses(stats).sum()


class PerStepTargets(BNSource):
    """Match every step's statistics to per-step targets; averaged over steps, summed over layers."""

    def __init__(self, targets: list[Targets], normalize: str = "none"):
        self.targets = targets  # per step
        self.layers = len(targets[0])
        self.scales = layer_scales([torch.stack([step[i][1] for step in targets]).mean(0) for i in range(len(targets[0]))], normalize)

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        per_step = [torch.stack([layer_distance(stat, mean, var, scale) for stat, (mean, var), scale in zip(step_stats, step_targets, self.scales)])
                    for step_stats, step_targets in zip(stats, self.targets)]
        return torch.stack(per_step).mean(0)


class ExactSource(PerStepTargets):
    """Oracle: the true batch statistics of every step (an upper bound, for ablations)."""

    name = "exact"


class GlobalSource(PerStepTargets):
    """The global model's running statistics: what attacks that assume eval-mode BN use."""

    name = "global"


class OneStepSource(PerStepTargets):
    """The official code's choice: the one-step formula applied whatever the number of steps."""

    name = "one_step"


class WeightedMeanSource(PerStepTargets):
    """The momentum-weighted mean target for T steps, shared by all steps."""

    name = "weighted_mean"


class MultiStepSource(BNSource):
    """Predict the running buffers after the T dummy steps and match the observed ones exactly.

    r_T = (1-m)^T r_0 + sum_k m (1-m)^(T-1-k) s_k. Residuals are divided by 1 - (1-m)^T, the total
    weight of the batch statistics in r_T, so the loss is on the scale of a per-step statistic.

    The constant part of the prediction is moved to the target once, in float64:
    ``r_T - r_obs = c_T (s_T + sum_k c_k / c_T s_k - t / c_T)`` with ``t = r_obs - (1-m)^T r_0``.
    That is the same value with fewer operations per step (the BN prior is most of the attack's
    tensor operations at batch 1), and it avoids subtracting two nearly equal float32 buffers.

    With ``update_scale="fit"`` the observed buffer changes are taken as ``c (r_T - r_0)`` for an
    unknown factor c (a clipped update: the whole update was multiplied by C / ||update||). The
    residual is then ``P - A - k B`` with P the dummies' combination of statistics, A the constant
    part from r_0, B the observed change and k = 1/c; for every evaluation k is set to its
    weighted least-squares value ``sum w^2 <P - A, B> / sum w^2 ||B||^2`` (at least 1: clipping only
    shrinks), i.e. the factor is optimised jointly with the images, in closed form.
    """

    name = "multi_step"

    def __init__(self, initial: Targets, observed: Targets, momentum: float, steps: int, normalize: str = "none",
                 update_scale: str = "known"):
        if update_scale not in UPDATE_SCALES:
            raise UserError(f"objective.bn_statistics.update_scale must be one of {', '.join(UPDATE_SCALES)}, got {update_scale}")
        self.update_scale = update_scale
        self.m = momentum
        self.initial = [(mean.double(), var.double()) for mean, var in initial]
        self.observed = [(mean.double(), var.double()) for mean, var in observed]
        self.layers = len(initial)
        # the scale of a per-step variance, read off the running buffers (the weighted-mean inference)
        self.scales = layer_scales([weighted_mean_inference(v0, v, momentum, steps) for (_, v0), (_, v) in zip(self.initial, self.observed)],
                                   normalize)
        self._plans: dict[tuple, tuple] = {}  # values per channel of every (step, layer) -> _plan's result

    def _plan(self, counts: tuple[tuple[int, ...], ...]):
        """Per layer: the scaled targets, the step coefficients relative to the last step's, and the norms' weights."""
        if counts not in self._plans:
            steps, m = len(counts), self.m
            decay = (1 - m) ** steps
            scale = 1.0 / (1 - decay)
            w = [m * (1 - m) ** (steps - 1 - k) for k in range(steps)]
            targets, coefs, weights, changes = [], [], [], []
            for layer, ((mean0, var0), (mean_obs, var_obs)) in enumerate(zip(self.initial, self.observed)):
                unbiased = [counts[k][layer] / max(1, counts[k][layer] - 1) for k in range(steps)]
                wm, wv = w, [w[k] * unbiased[k] for k in range(steps)]
                if self.update_scale == "fit":  # target A + k B: the constant part and the observed change
                    targets.append((((1 - decay) * mean0 / wm[-1]).float(), ((1 - decay) * var0 / wv[-1]).float()))
                    changes.append((((mean_obs - mean0) / wm[-1]).float(), ((var_obs - var0) / wv[-1]).float()))
                else:
                    targets.append((((mean_obs - decay * mean0) / wm[-1]).float(), ((var_obs - decay * var0) / wv[-1]).float()))
                coefs.append(([c / wm[-1] for c in wm[:-1]], [c / wv[-1] for c in wv[:-1]]))
                weights += [scale * wm[-1] * self.scales[layer][0], scale * wv[-1] * self.scales[layer][1]]
            self._plans[counts] = (targets, coefs, torch.tensor(weights), [c for pair in changes for c in pair])
        return self._plans[counts]

    def _raw(self, stats: list[list[BNStat]]) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """(per layer the mean's and the variance's residual against A (fit) or the whole target (known),
        the norms' weights [2L], the observed changes B (fit only))."""
        targets, coefs, weights, changes = self._plan(tuple(tuple(s.count for s in step) for step in stats))
        diffs = []
        for layer, ((target_mean, target_var), (coef_mean, coef_var)) in enumerate(zip(targets, coefs)):
            last = stats[-1][layer]
            diff_mean, diff_var = last.mean - target_mean, last.var - target_var
            for k, (cm, cv) in enumerate(zip(coef_mean, coef_var)):
                diff_mean = diff_mean + cm * stats[k][layer].mean
                diff_var = diff_var + cv * stats[k][layer].var
            diffs += [diff_mean, diff_var]
        return diffs, weights.to(diffs[0]), changes

    def scale(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """k = 1/c, the factor the observed changes are multiplied by (1 unless update_scale is fit)."""
        diffs, weights, changes = self._raw(stats)
        return self.fitted_scale(diffs, changes, weights) if changes else weights.new_ones(())

    def residuals(self, stats: list[list[BNStat]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per layer the mean's and the variance's residual, the norms' weights [2L])."""
        diffs, weights, changes = self._raw(stats)
        if changes:
            k = self.fitted_scale(diffs, changes, weights)
            diffs = [d - k * c for d, c in zip(diffs, changes)]
        return diffs, weights

    @staticmethod
    def fitted_scale(diffs: list[torch.Tensor], changes: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """k = 1/c minimising sum_j w_j^2 ||d_j - k b_j||^2, at least 1."""
        num = sum(w * w * (d * b).sum() for d, b, w in zip(diffs, changes, weights))
        den = sum(w * w * (b * b).sum() for b, w in zip(changes, weights))
        return (num / (den + 1e-30)).clamp(min=1.0)

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        diffs, weights = self.residuals(stats)
        norms = torch.stack([torch.linalg.vector_norm(d) for d in diffs])
        return (norms * weights).view(-1, 2).sum(1)


class NoSource(BNSource):
    """No BN prior: the realistic lower bound when running statistics are withheld."""

    name = "none"

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        return stats[0][0].mean.new_zeros(len(stats[0])) if stats and stats[0] else torch.zeros(0)


SOURCES = ("auto", "exact", "global", "one_step", "weighted_mean", "multi_step", "none")


def make_bn_source(name: str, bn_names: list[str], global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
                   momentum: float, steps: int, oracle_stats: list[Targets] | None = None, normalize: str = "none",
                   update_scale: str = "known") -> BNSource:
    """Build the named source from what the attacker holds; ``auto`` = multi_step if buffers were sent."""
    if name not in SOURCES:
        raise UserError(f"unknown bn.source '{name}' ({', '.join(SOURCES)})")
    keys = [(f"{n}.running_mean", f"{n}.running_var") for n in bn_names]
    have_buffers = all(km in update and kv in update for km, kv in keys)
    if name == "auto":
        name = "multi_step" if have_buffers else "none"
    if update_scale not in UPDATE_SCALES:
        raise UserError(f"objective.bn_statistics.update_scale must be one of {', '.join(UPDATE_SCALES)}, got {update_scale}")
    if update_scale != "known" and name not in ("multi_step", "none"):
        raise UserError(f"objective.bn_statistics.update_scale={update_scale} needs source multi_step (or auto), not {name}")
    if name == "none":
        return NoSource()
    initial = [(global_state[km].double(), global_state[kv].double()) for km, kv in keys]
    if name == "global":
        return GlobalSource([_f32(initial)] * steps, normalize)
    if name == "exact":
        if oracle_stats is None:
            raise UserError("bn.source=exact needs the oracle BN statistics (threat.oracle_bn_statistics=true)")
        return ExactSource([_f32(t) for t in oracle_stats], normalize)
    if not have_buffers:
        raise UserError(f"bn.source={name} infers statistics from the running-statistics update, which this update withholds")
    observed = [(initial[i][0] + update[km].double(), initial[i][1] + update[kv].double()) for i, (km, kv) in enumerate(keys)]
    if name == "multi_step":
        return MultiStepSource(initial, observed, momentum, steps, normalize, update_scale)
    if name == "one_step":
        target = [(one_step_inference(r0m, rm, momentum), one_step_inference(r0v, rv, momentum)) for (r0m, r0v), (rm, rv) in zip(initial, observed)]
        return OneStepSource([_f32(target)] * steps, normalize)
    target = [(weighted_mean_inference(r0m, rm, momentum, steps), weighted_mean_inference(r0v, rv, momentum, steps))
              for (r0m, r0v), (rm, rv) in zip(initial, observed)]
    return WeightedMeanSource([_f32(target)] * steps, normalize)


def _f32(targets: Targets) -> Targets:
    """Inference runs in float64 (it divides by m); matching runs in the images' float32."""
    return [(m.float(), v.float()) for m, v in targets]
