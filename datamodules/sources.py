"""The image pool of a run: a registered dataset's loader (``datamodules/datasets/``), then the
channel conversion and the stratified subset that every source shares."""
from __future__ import annotations

import torch

from common.errors import UserError
from datamodules.datasets import REGISTRY as DATASETS
from datamodules.pool import DataConfig, ImagePool, resize

__all__ = ["DataConfig", "ImagePool", "load_pool", "resize"]


def load_pool(cfg: DataConfig) -> ImagePool:
    """The image pool named by ``cfg``: the registered loader, then what every source shares."""
    if cfg.image_size < 8:
        raise UserError(f"data.image_size must be at least 8, got {cfg.image_size}")
    pool = DATASETS.get(cfg.source)(cfg)
    if not isinstance(pool, ImagePool):
        raise UserError(f"data.source '{cfg.source}': its loader returned {type(pool).__name__}, not an ImagePool")
    if cfg.channels and cfg.channels != pool.channels:
        if cfg.channels == 3 and pool.channels == 1:
            pool.images = pool.images.repeat(1, 3, 1, 1)
        elif cfg.channels == 1 and pool.channels == 3:
            pool.images = pool.images.mean(1, keepdim=True)
        else:
            raise UserError(f"data.channels must be 0, 1 or 3, got {cfg.channels}")
    if cfg.max_images and len(pool) > cfg.max_images:
        keep = _stratified_subset(pool.labels, cfg.max_images, seed=0)
        pool = ImagePool(pool.images[keep], pool.labels[keep], pool.class_names, pool.name)
    return pool


def _stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    # round-robin over classes in a seeded order keeps the class balance
    by_class = [order[labels[order] == c] for c in labels.unique()]
    picked: list[int] = []
    i = 0
    while len(picked) < n:
        for group in by_class:
            if i < len(group) and len(picked) < n:
                picked.append(int(group[i]))
        i += 1
    return torch.tensor(sorted(picked))
