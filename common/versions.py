"""The software a result was made with, read from package metadata (nothing is imported, so it is
cheap in a report made on a busy machine and the same everywhere it is written)."""
from __future__ import annotations

import importlib.metadata
import platform
import sys

PACKAGES = ["torch", "torchvision", "pytorch_lightning", "timm", "torchmetrics", "numpy"]


def package_versions(with_platform: bool = False) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if with_platform:
        out["platform"] = platform.platform()
    return out
