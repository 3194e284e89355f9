"""Privacy filters on the outgoing update (the chain runs on the client, before the update leaves)."""
from privacy.base import REGISTRY, FilterChain, FilterContext, PrivacyFilter, register

__all__ = ["REGISTRY", "FilterChain", "FilterContext", "PrivacyFilter", "register"]
