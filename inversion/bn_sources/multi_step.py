"""Ours: the running buffers after T replayed dummy steps, matched to the observed ones."""
from __future__ import annotations

import torch

from inversion.bn_sources.base import BNSource, SourceInputs, Targets, layer_scales, needs_buffers, register, weighted_mean_inference
from inversion.functional import BNStat


@register
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
    fits_update_scale = True

    @classmethod
    def build(cls, inputs: SourceInputs) -> "MultiStepSource":
        return cls(inputs.initial, needs_buffers(cls.name, inputs), inputs.momentum, inputs.steps, inputs.normalize, inputs.update_scale)

    def __init__(self, initial: Targets, observed: Targets, momentum: float, steps: int, normalize: str = "none",
                 update_scale: str = "known"):
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


