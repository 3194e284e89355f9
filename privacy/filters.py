"""The built-in privacy filters."""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Literal

import torch

from common.config_loader import option
from common.errors import UserError
from privacy.base import FilterContext, PrivacyFilter, Update, flat_abs, float_keys, global_norm, register


@dataclasses.dataclass
class GaussianParams:
    sigma0: float = option(0.0, "noise std as a multiple of the percentile of the non-zero absolute update")
    percentile: float = option(95.0, "which percentile of the non-zero absolute values sets the scale")
    calibration: Literal["pooled", "per_tensor"] = option("pooled", "pooled: one percentile over every float entry (the paper's filter); per_tensor: each "
                                        "tensor's own percentile, so that small tensors (BN running statistics) get noise on their scale")


@register
class GaussianNoise(PrivacyFilter):
    """The paper's filter: N(0, (sigma0 * P95)^2) on every float entry. Not formal DP (no clipping).

    Pooled over all entries, P95 is set by the millions of conv weights; the few thousand BN running
    statistics the paper's attack reads (of another scale) may get relatively little noise. The
    per-tensor calibration gives each tensor noise on its own scale.
    """

    name = "gaussian"
    columns = ("noise_std",)
    Params = GaussianParams

    def validate(self) -> None:
        if self.params.sigma0 < 0:
            raise UserError(f"gaussian filter: sigma0 must be >= 0, got {self.params.sigma0}")
        if not 0 < self.params.percentile <= 100:
            raise UserError(f"gaussian filter: percentile must be in (0, 100], got {self.params.percentile}")
        if self.params.calibration == "per_tensor" and self.params.sigma0 > 0:
            print(f"warning: gaussian calibration per_tensor is retired (docs/privacy-filters.md): its noise feeds back through the BN "
                  f"running statistics round after round; the default federation at sigma0 = 5 sits at chance in every round", file=sys.stderr)

    def scale(self, values: torch.Tensor) -> float:
        """The percentile of the non-zero absolute values (0 if there are none)."""
        nonzero = values[values > 0]
        if nonzero.numel() == 0:
            return 0.0
        return float(torch.quantile(nonzero, self.params.percentile / 100.0) if nonzero.numel() < 16_000_000 else _big_quantile(nonzero, self.params.percentile))

    def noise_stds(self, update: Update) -> dict[str, float]:
        """The noise std of every float entry's tensor."""
        keys = float_keys(update)
        if self.params.calibration == "per_tensor":
            return {k: self.params.sigma0 * self.scale(flat_abs(update, [k])) for k in keys}
        std = self.params.sigma0 * self.scale(flat_abs(update, keys))
        return {k: std for k in keys}

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        stds = self.noise_stds(update)
        for k, std in stds.items():
            if std > 0:
                noise = torch.randn(update[k].shape, generator=ctx.generator, dtype=torch.float32)
                update[k] = update[k] + (std * noise).to(update[k].dtype)
        effect = {"noise_std": max(stds.values(), default=0.0)}
        if self.params.calibration == "per_tensor" and stds:
            values = torch.tensor(list(stds.values()), dtype=torch.float64)
            effect["noise_std_median"] = float(values.median())
            effect["noise_std_min"] = float(values.min())
        return update, effect


def _big_quantile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """torch.quantile refuses very large inputs; kthvalue gives the same order statistic."""
    k = max(1, int(round(percentile / 100.0 * (values.numel() - 1))) + 1)
    return values.kthvalue(k).values


@dataclasses.dataclass
class ExcludeParams:
    names: list[str] = option(help="exact state-dict keys to withhold", factory=list)
    regex: list[str] = option(help="regular expressions; matching keys are withheld (e.g. 'running_(mean|var)$')", factory=list)


@register
class ExcludeVariables(PrivacyFilter):
    """Withhold entries by name or pattern; withholding BN running statistics removes the paper's side channel."""

    name = "exclude"
    Params = ExcludeParams

    def validate(self) -> None:
        if not self.params.names and not self.params.regex:
            raise UserError("exclude filter needs names or regex")
        try:
            self.patterns = [re.compile(p) for p in self.params.regex]
        except re.error as err:
            raise UserError(f"exclude filter: invalid regex ({err})") from err

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        drop = {k for k in update if k in self.params.names or any(p.search(k) for p in self.patterns)}
        return {k: v for k, v in update.items() if k not in drop}, {"withheld": float(len(drop))}


@dataclasses.dataclass
class PercentileParams:
    fraction: float = option(0.1, "share only this fraction of the update's entries, those of largest magnitude")
    gamma: float = option(0.01, "clip shared values to [-gamma, gamma] (0 = no clipping)")


@register
class PercentilePrivacy(PrivacyFilter):
    """Share the largest fraction of values (Shokri & Shmatikov 2015), clipped; the rest are sent as 0."""

    name = "percentile"
    columns = ("shared_fraction",)
    Params = PercentileParams

    def validate(self) -> None:
        if not 0 < self.params.fraction <= 1:
            raise UserError(f"percentile filter: fraction must be in (0, 1], got {self.params.fraction}")
        if self.params.gamma < 0:
            raise UserError(f"percentile filter: gamma must be >= 0, got {self.params.gamma}")

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        keys = float_keys(update)
        values = flat_abs(update, keys)
        if values.numel() == 0:
            return update, {"shared_fraction": 0.0}
        k = max(1, int(round(self.params.fraction * values.numel())))
        cutoff = float(torch.topk(values, k, sorted=False).values.min())
        shared = 0
        for key in keys:
            v = update[key]
            keep = v.abs() >= cutoff
            shared += int(keep.sum())
            out = torch.where(keep, v, torch.zeros_like(v))
            if self.params.gamma > 0:
                out = out.clamp(-self.params.gamma, self.params.gamma)
            update[key] = out
        return update, {"shared_fraction": shared / values.numel(), "cutoff": cutoff, "norm_after": global_norm(update, keys)}
