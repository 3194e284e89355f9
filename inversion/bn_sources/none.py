"""No BN prior: the realistic lower bound when running statistics are withheld."""
from __future__ import annotations

import torch

from inversion.bn_sources.base import BNSource, SourceInputs, register
from inversion.functional import BNStat


@register
class NoSource(BNSource):
    """No BN prior: the realistic lower bound when running statistics are withheld."""

    name = "none"
    fits_update_scale = True  # nothing to fit: no prior

    @classmethod
    def build(cls, inputs: SourceInputs) -> "NoSource":
        return cls()

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        return stats[0][0].mean.new_zeros(len(stats[0])) if stats and stats[0] else torch.zeros(0)


