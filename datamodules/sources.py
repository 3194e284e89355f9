"""Image sources: each returns an :class:`ImagePool` of [0, 1] images at one size, with labels.

Normalisation is deliberately not applied here: it belongs to the client's model input path, so
that reconstructions, training images and the prior image are all compared in [0, 1].
"""
from __future__ import annotations

import dataclasses
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.config import option
from common.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


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
    source: str = option("lfw", "image source: lfw (embedded faces vs non-faces), digits (embedded 8x8 digits), folder, medmnist")
    image_size: int = option(32, "images are resized to image_size x image_size pixels")
    channels: int = option(0, "1 = grayscale, 3 = RGB, 0 = as the source is (folder: grayscale if every image is)")
    path: str = option("", "folder: root with one subfolder per class; medmnist: the .npz file")
    classes: list[str] = option(help="folder: class subfolders to use (empty = all, sorted)", factory=list)
    medmnist_flag: str = option("pneumoniamnist", "medmnist: dataset flag, used by the explicit download command")
    download: bool = option(False, "medmnist: download the .npz to `path` when it is missing (network needed)")
    test_fraction: float = option(0.2, "fraction of the pool held out as the global test set")
    max_images: int = option(0, "keep at most this many images (stratified, seeded; 0 = all)")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.clamp(0, 1)
    antialias = images.shape[-1] > size
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return out.clamp(0, 1)


def load_lfw(size: int) -> ImagePool:
    """skimage's embedded LFW subset: 100 faces then 100 non-faces, 25x25 grayscale."""
    from skimage.data import lfw_subset

    raw = torch.tensor(lfw_subset(), dtype=torch.float32)[:, None]
    labels = torch.tensor([1] * 100 + [0] * 100, dtype=torch.int64)
    return ImagePool(resize(raw, size), labels, ["non_face", "face"], "lfw_subset")


def load_digits(size: int) -> ImagePool:
    """scikit-learn's embedded 8x8 handwritten digits (1797 images, 10 classes)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    raw = torch.tensor(bunch.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return ImagePool(resize(raw, size), labels, [str(c) for c in range(10)], "digits")


def _class_files(class_dir: Path) -> list[Path]:
    """PNG/JPEG files of a class folder; the COVID-19 Radiography layout keeps them in images/."""
    base = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
    return sorted(p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(root: str | Path, size: int, channels: int = 0, classes: list[str] | None = None) -> ImagePool:
    """One subfolder per class (``<class>/*.png`` or ``<class>/images/*.png``), PNG or JPEG."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not str(root) or not root.is_dir():
        raise UserError(f"data folder not found: {root} (set data.path to a folder with one subfolder per class)")
    names = list(classes) if classes else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise UserError(f"data folder {root} needs at least 2 class subfolders, found {len(names)}")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        class_dir = root / name
        if not class_dir.is_dir():
            raise UserError(f"class folder not found: {class_dir}")
        found = _class_files(class_dir)
        if not found:
            raise UserError(f"class folder {class_dir} holds no PNG or JPEG images")
        files.extend((f, label) for f in found)
    opened = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                img.load()
                opened.append(img.copy())
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise UserError(f"unreadable image {path} ({type(err).__name__})") from err
    if channels == 0:
        channels = 1 if all(img.mode in ("L", "I", "I;16", "1", "LA") for img in opened) else 3
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 0, 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    tensors = []
    for img in opened:
        img = img.convert(mode).resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        tensors.append(torch.from_numpy(arr.reshape(size, size, channels)).permute(2, 0, 1))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImagePool(torch.stack(tensors).clamp(0, 1), labels, names, f"folder:{root.name}")


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


def load_pool(cfg: DataConfig) -> ImagePool:
    """Build the image pool named by ``cfg`` (the one place that maps source names to loaders)."""
    if cfg.image_size < 8:
        raise UserError(f"data.image_size must be at least 8, got {cfg.image_size}")
    if cfg.source == "lfw":
        pool = load_lfw(cfg.image_size)
    elif cfg.source == "digits":
        pool = load_digits(cfg.image_size)
    elif cfg.source == "folder":
        pool = load_folder(cfg.path, cfg.image_size, cfg.channels, cfg.classes)
    elif cfg.source == "medmnist":
        pool = load_medmnist(cfg.path, cfg.image_size, cfg.medmnist_flag, cfg.download)
    else:
        raise UserError(f"unknown data.source '{cfg.source}' (lfw, digits, folder, medmnist)")
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
