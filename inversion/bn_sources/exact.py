"""Oracle: the true batch statistics of every step (an upper bound, for ablations)."""
from __future__ import annotations

from common.errors import UserError
from inversion.bn_sources.base import PerStepTargets, SourceInputs, as_float32, register


@register
class ExactSource(PerStepTargets):
    """Oracle: the true batch statistics of every step (an upper bound, for ablations)."""

    name = "exact"

    @classmethod
    def build(cls, inputs: SourceInputs) -> "ExactSource":
        if inputs.oracle_stats is None:
            raise UserError("bn.source=exact needs the oracle BN statistics (threat.oracle_bn_statistics=true)")
        return cls([as_float32(t) for t in inputs.oracle_stats], inputs.normalize)
