"""LPIPS (AlexNet) through torchmetrics, only when the backbone weights are already on disk.

Nothing is downloaded: a missing file disables the metric with a message (``lpips_note``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from leakage.image_metrics import ImageMetric, register


@register
class LPIPS(ImageMetric):
    name = "lpips"
    higher_is_better = False
    display = "LPIPS {value:.3f}"
    WEIGHTS = "alexnet-owt-7be5be79.pth"

    @classmethod
    def from_config(cls, scoring: Any | None) -> "LPIPS | None":
        return cls() if scoring is not None and getattr(scoring, "lpips", False) else None

    def __init__(self) -> None:
        self.metric = None
        self.reason = ""
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / self.WEIGHTS
        if not hub.is_file():
            self.reason = f"LPIPS skipped: backbone weights {hub} are not present (nothing is downloaded)"
            return
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        except Exception as err:  # missing optional dependency or unreadable weights
            self.reason = f"LPIPS skipped: {type(err).__name__}: {err}"

    def unavailable(self) -> str | None:
        return self.reason if self.metric is None else None

    def __call__(self, reconstruction: torch.Tensor, original: torch.Tensor) -> float | None:
        if self.metric is None:
            return None
        a, b = reconstruction, original
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        return float(self.metric(a.clamp(0, 1), b.clamp(0, 1)))
