"""Where the BN-statistics prior takes its targets from: one small class per source.

Every source compares the dummy batch statistics with targets in the same convention: the mean,
and the *unbiased* variance (what running_var accumulates), so biased never meets unbiased.
PyTorch's update is r_new = (1 - m) r_old + m s, applied once per local step.
"""
from __future__ import annotations

import abc
from typing import ClassVar

import torch

from common.errors import UserError
from inversion.functional import BNStat

Targets = list[tuple[torch.Tensor, torch.Tensor]]  # per BN layer: (mean, unbiased var)


def layer_distance(stat: BNStat, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """DeepInversion's per-layer term: ||mu(x) - mu*||_2 + ||var(x) - var*||_2."""
    return torch.linalg.vector_norm(stat.mean - mean) + torch.linalg.vector_norm(stat.var_unbiased - var)


def one_step_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float) -> torch.Tensor:
    """The paper's formula, exact for one local step: s = (r_new - (1 - m) r_old) / m."""
    return (r_new.double() - (1 - m) * r_old.double()) / m


def weighted_mean_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float, steps: int) -> torch.Tensor:
    """For T steps, the momentum-weighted mean of the T batch statistics: (r_T - (1-m)^T r_0) / (1 - (1-m)^T)."""
    decay = (1 - m) ** steps
    return (r_new.double() - decay * r_old.double()) / (1 - decay)


class BNSource(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """Scalar prior for the dummy statistics of every step (and every BN layer)."""


class PerStepTargets(BNSource):
    """Match every step's statistics to per-step targets; averaged over steps, summed over layers."""

    def __init__(self, targets: list[Targets]):
        self.targets = targets  # per step

    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        total = stats[0][0].mean.new_zeros(())
        for step_stats, step_targets in zip(stats, self.targets):
            for stat, (mean, var) in zip(step_stats, step_targets):
                total = total + layer_distance(stat, mean, var)
        return total / len(stats)


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
    """

    name = "multi_step"

    def __init__(self, initial: Targets, observed: Targets, momentum: float):
        self.m = momentum
        self.initial = [(mean.double(), var.double()) for mean, var in initial]
        self.observed = [(mean.double(), var.double()) for mean, var in observed]
        self._plans: dict[tuple, tuple] = {}  # values per channel of every (step, layer) -> _plan's result

    def _plan(self, counts: tuple[tuple[int, ...], ...]):
        """Per layer: the scaled targets, the step coefficients relative to the last step's, and the norms' weights."""
        if counts not in self._plans:
            steps, m = len(counts), self.m
            decay = (1 - m) ** steps
            scale = 1.0 / (1 - decay)
            w = [m * (1 - m) ** (steps - 1 - k) for k in range(steps)]
            targets, coefs, weights = [], [], []
            for layer, ((mean0, var0), (mean_obs, var_obs)) in enumerate(zip(self.initial, self.observed)):
                unbiased = [counts[k][layer] / max(1, counts[k][layer] - 1) for k in range(steps)]
                wm, wv = w, [w[k] * unbiased[k] for k in range(steps)]
                targets.append((((mean_obs - decay * mean0) / wm[-1]).float(), ((var_obs - decay * var0) / wv[-1]).float()))
                coefs.append(([c / wm[-1] for c in wm[:-1]], [c / wv[-1] for c in wv[:-1]]))
                weights += [scale * wm[-1], scale * wv[-1]]
            self._plans[counts] = (targets, coefs, torch.tensor(weights))
        return self._plans[counts]

    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        targets, coefs, weights = self._plan(tuple(tuple(s.count for s in step) for step in stats))
        norms = []
        for layer, ((target_mean, target_var), (coef_mean, coef_var)) in enumerate(zip(targets, coefs)):
            last = stats[-1][layer]
            diff_mean, diff_var = last.mean - target_mean, last.var - target_var
            for k, (cm, cv) in enumerate(zip(coef_mean, coef_var)):
                diff_mean = diff_mean + cm * stats[k][layer].mean
                diff_var = diff_var + cv * stats[k][layer].var
            norms += [torch.linalg.vector_norm(diff_mean), torch.linalg.vector_norm(diff_var)]
        norms = torch.stack(norms)
        return (norms * weights.to(norms)).sum()


class NoSource(BNSource):
    """No BN prior: the realistic lower bound when running statistics are withheld."""

    name = "none"

    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        return stats[0][0].mean.new_zeros(()) if stats and stats[0] else torch.zeros(())


SOURCES = ("auto", "exact", "global", "one_step", "weighted_mean", "multi_step", "none")


def make_bn_source(name: str, bn_names: list[str], global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
                   momentum: float, steps: int, oracle_stats: list[Targets] | None = None) -> BNSource:
    """Build the named source from what the attacker holds; ``auto`` = multi_step if buffers were sent."""
    if name not in SOURCES:
        raise UserError(f"unknown bn.source '{name}' ({', '.join(SOURCES)})")
    keys = [(f"{n}.running_mean", f"{n}.running_var") for n in bn_names]
    have_buffers = all(km in update and kv in update for km, kv in keys)
    if name == "auto":
        name = "multi_step" if have_buffers else "none"
    if name == "none":
        return NoSource()
    initial = [(global_state[km].double(), global_state[kv].double()) for km, kv in keys]
    if name == "global":
        return GlobalSource([_f32(initial)] * steps)
    if name == "exact":
        if oracle_stats is None:
            raise UserError("bn.source=exact needs the oracle BN statistics (threat.oracle_bn_statistics=true)")
        return ExactSource([_f32(t) for t in oracle_stats])
    if not have_buffers:
        raise UserError(f"bn.source={name} infers statistics from the running-statistics update, which this update withholds")
    observed = [(initial[i][0] + update[km].double(), initial[i][1] + update[kv].double()) for i, (km, kv) in enumerate(keys)]
    if name == "multi_step":
        return MultiStepSource(initial, observed, momentum)
    if name == "one_step":
        target = [(one_step_inference(r0m, rm, momentum), one_step_inference(r0v, rv, momentum)) for (r0m, r0v), (rm, rv) in zip(initial, observed)]
        return OneStepSource([_f32(target)] * steps)
    target = [(weighted_mean_inference(r0m, rm, momentum, steps), weighted_mean_inference(r0v, rv, momentum, steps))
              for (r0m, r0v), (rm, rv) in zip(initial, observed)]
    return WeightedMeanSource([_f32(target)] * steps)


def _f32(targets: Targets) -> Targets:
    """Inference runs in float64 (it divides by m); matching runs in the images' float32."""
    return [(m.float(), v.float()) for m, v in targets]
