"""The official code's choice: the one-step formula applied whatever the number of steps."""
from __future__ import annotations

from inversion.bn_sources.base import PerStepTargets, SourceInputs, as_float32, needs_buffers, one_step_inference, register


@register
class OneStepSource(PerStepTargets):
    """The official code's choice: the one-step formula applied whatever the number of steps."""

    name = "one_step"

    @classmethod
    def build(cls, inputs: SourceInputs) -> "OneStepSource":
        observed, m = needs_buffers(cls.name, inputs), inputs.momentum
        target = [(one_step_inference(r0m, rm, m), one_step_inference(r0v, rv, m)) for (r0m, r0v), (rm, rv) in zip(inputs.initial, observed)]
        return cls([as_float32(target)] * inputs.steps, inputs.normalize)
