"""Privacy filters on the outgoing update (the chain runs on the client, before the update leaves).

Importing the package registers the built-in filters; a new filter is one more module with a
``@register`` class, imported here (or anywhere before the chain is built).
"""
from privacy import dp, filters  # noqa: F401  (register the built-in and the differential-privacy filters)
from privacy.base import REGISTRY, FilterChain, FilterContext, PrivacyFilter, register

__all__ = ["REGISTRY", "FilterChain", "FilterContext", "PrivacyFilter", "register"]
