"""Privacy filters on the outgoing update (the chain runs on the client, before the update leaves).

Importing the package registers every filter: each module of this folder is imported, so a new
filter is one new file with a ``@register``ed :class:`PrivacyFilter` subclass (docs/privacy-filters.md).
"""
from common.registry import load_plugins
from privacy.base import REGISTRY, FilterChain, FilterContext, PrivacyFilter, register

load_plugins(__name__)

__all__ = ["REGISTRY", "FilterChain", "FilterContext", "PrivacyFilter", "register"]
