"""The global model's running statistics: what attacks that assume eval-mode BN use."""
from __future__ import annotations

from inversion.bn_sources.base import PerStepTargets, SourceInputs, as_float32, register


@register
class GlobalSource(PerStepTargets):
    """The global model's running statistics: what attacks that assume eval-mode BN use."""

    name = "global"
    reads_global_buffers = True

    @classmethod
    def build(cls, inputs: SourceInputs) -> "GlobalSource":
        return cls([as_float32(inputs.initial)] * inputs.steps, inputs.normalize)
