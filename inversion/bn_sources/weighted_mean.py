"""The momentum-weighted mean target for T steps, shared by all steps."""
from __future__ import annotations

from inversion.bn_sources.base import PerStepTargets, SourceInputs, as_float32, needs_buffers, register, weighted_mean_inference


@register
class WeightedMeanSource(PerStepTargets):
    """The momentum-weighted mean target for T steps, shared by all steps."""

    name = "weighted_mean"

    @classmethod
    def build(cls, inputs: SourceInputs) -> "WeightedMeanSource":
        observed, m, steps = needs_buffers(cls.name, inputs), inputs.momentum, inputs.steps
        target = [(weighted_mean_inference(r0m, rm, m, steps), weighted_mean_inference(r0v, rv, m, steps))
                  for (r0m, r0v), (rm, rv) in zip(inputs.initial, observed)]
        return cls([as_float32(target)] * steps, inputs.normalize)
