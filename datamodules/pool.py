"""What every image source produces (an :class:`ImagePool` of [0, 1] images at one size) and how it is configured.

Normalisation is deliberately not applied here: it belongs to the client's model input path, so
that reconstructions, training images and the prior image are all compared in [0, 1].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from common.config_loader import option


@dataclasses.dataclass
class ImagePool:
    images: torch.Tensor  # [N, C, H, W] float32 in [0, 1]
    labels: torch.Tensor  # [N] int64
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass
class DataConfig:
    source: str = option("lfw", "image source, a registered dataset (datamodules/datasets/): lfw (embedded faces vs non-faces), digits (embedded 8x8 digits), folder, medmnist, or your own")
    image_size: int = option(32, "images are resized to image_size x image_size pixels")
    channels: int = option(0, "1 = grayscale, 3 = RGB, 0 = as the source is (folder: grayscale if every image is)")
    path: str = option("", "folder: root with one subfolder per class; medmnist: the .npz file")
    classes: list[str] = option(help="folder: class subfolders to use (empty = all, sorted)", factory=list)
    medmnist_flag: str = option("pneumoniamnist", "medmnist: dataset flag, used by the explicit download command")
    download: bool = option(False, "medmnist: download the .npz to `path` when it is missing (network needed)")
    test_fraction: float = option(0.2, "fraction of the pool held out as the global test set")
    max_images: int = option(0, "keep at most this many images (stratified, seeded; 0 = all)")
    options: dict[str, Any] = option(help="options of a dataset added in datamodules/datasets/ (its loader reads them; the built-in ones use none)", factory=dict)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.clamp(0, 1)
    antialias = images.shape[-1] > size
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return out.clamp(0, 1)
