"""Your own images: one subfolder per class (PNG or JPEG), e.g. the COVID-19 Radiography layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from datamodules.datasets import register
from datamodules.pool import DataConfig, ImagePool

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@register(name="folder")
def load(cfg: DataConfig) -> ImagePool:
    return load_folder(cfg.path, cfg.image_size, cfg.channels, cfg.classes)


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
