"""BN-statistics sources: where the BN prior's targets come from, one registered class per file.

Add a source by adding a file here with a ``@register``ed :class:`BNSource` subclass that has a
``name`` and a ``build(inputs)``; ``objective.bn_statistics.source: <name>`` then selects it.
"""
from common.registry import load_plugins
from inversion.bn_sources.base import (REGISTRY, BNSource, SourceInputs, Targets, layer_distance, layer_scales, make_bn_source,
                                       one_step_inference, register, source_names, weighted_mean_inference)

load_plugins(__name__)

__all__ = ["REGISTRY", "BNSource", "SourceInputs", "Targets", "layer_distance", "layer_scales", "make_bn_source", "one_step_inference",
           "register", "source_names", "weighted_mean_inference"]
