"""Datasets: one registered loader per file of this folder (``data.source: <name>``).

A loader is ``load(cfg: DataConfig) -> ImagePool`` registered with ``@register(name="...")``; it
reads ``cfg.image_size``, ``cfg.path`` and, for options of its own, ``cfg.options``. Channel
conversion, the stratified ``max_images`` subset and the test split are done for every source by
:func:`datamodules.sources.load_pool`, so a loader only reads images.
"""
from __future__ import annotations

from typing import Callable

from common.registry import Registry, load_plugins
from datamodules.pool import DataConfig, ImagePool

Loader = Callable[[DataConfig], ImagePool]
REGISTRY: Registry[Loader] = Registry("dataset", "data.source")
register = REGISTRY.register

load_plugins(__name__)
