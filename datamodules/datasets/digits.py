"""scikit-learn's embedded handwritten digits (no download)."""
from __future__ import annotations

import torch

from datamodules.datasets import register
from datamodules.pool import DataConfig, ImagePool, resize


@register(name="digits")
def load(cfg: DataConfig) -> ImagePool:
    return load_digits(cfg.image_size)


def load_digits(size: int) -> ImagePool:
    """scikit-learn's embedded 8x8 handwritten digits (1797 images, 10 classes)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    raw = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return ImagePool(resize(raw, size), labels, [str(c) for c in range(10)], "digits")
