"""A MedMNIST ``.npz`` on disk (downloaded only when ``data.download=true``)."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from datamodules.datasets import register
from datamodules.pool import DataConfig, ImagePool, resize


@register(name="medmnist")
def load(cfg: DataConfig) -> ImagePool:
    return load_medmnist(cfg.path, cfg.image_size, cfg.medmnist_flag, cfg.download)


MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{flag}.npz?download=1"


def download_medmnist(flag: str, path: str | Path) -> Path:
    """Fetch a MedMNIST ``.npz`` (only when the user asks for it: data.download=true)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npz.download")
    url = MEDMNIST_URL.format(flag=flag)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not download {url} ({err})") from err
    tmp.replace(path)
    return path


def load_medmnist(path: str | Path, size: int, flag: str = "pneumoniamnist", download: bool = False) -> ImagePool:
    """A MedMNIST ``.npz`` (train/val/test splits pooled; the federated split is ours)."""
    path = Path(path) if str(path) else Path(f"data/{flag}.npz")
    if not path.is_file():
        if not download:
            raise UserError(f"MedMNIST file not found: {path} (set data.path, or data.download=true to fetch {flag})")
        download_medmnist(flag, path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            parts = [(npz[f"{split}_images"], npz[f"{split}_labels"]) for split in ("train", "val", "test") if f"{split}_images" in npz]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"MedMNIST file {path} is not a readable .npz ({err})") from err
    if not parts:
        raise UserError(f"MedMNIST file {path} has no train_images/train_labels arrays")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).reshape(-1).astype(np.int64)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    names = [str(c) for c in range(int(labels.max()) + 1)]
    return ImagePool(resize(x, size), torch.from_numpy(labels), names, f"medmnist:{path.stem}")
