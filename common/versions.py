"""The software a result was made with, read from package metadata (nothing is imported, so it is
cheap in a report made on a busy machine and the same everywhere it is written)."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

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


def code_commit(root: Path = ROOT) -> str:
    """The code's git commit (with a note when the tracked files have uncommitted changes)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            reason = (head.stderr.strip().splitlines() or ["not a git checkout"])[0]
            return f"unknown ({reason[:120]})"
        commit = head.stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        if status.returncode == 0 and status.stdout.strip():
            commit += " (with uncommitted changes to tracked files)"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def provenance() -> dict[str, Any]:
    """What produced a result, beyond its config: the code commit, the torch version and the torch thread
    count (the thread count alone changes a training path: docs/federation.md)."""
    import torch

    return {"commit": code_commit(), "torch": torch.__version__, "threads": torch.get_num_threads()}
