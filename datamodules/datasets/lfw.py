"""skimage's embedded LFW subset: the default data (no download)."""
from __future__ import annotations

import torch

from datamodules.datasets import register
from datamodules.pool import DataConfig, ImagePool, resize


@register(name="lfw")
def load(cfg: DataConfig) -> ImagePool:
    return load_lfw(cfg.image_size)


def load_lfw(size: int) -> ImagePool:
    """skimage's embedded LFW subset: 100 faces then 100 non-faces, 25x25 grayscale."""
    from skimage.data import lfw_subset

    raw = torch.tensor(lfw_subset(), dtype=torch.float32)[:, None]
    labels = torch.tensor([1] * 100 + [0] * 100, dtype=torch.int64)
    return ImagePool(resize(raw, size), labels, ["non_face", "face"], "lfw_subset")
