"""PSNR (torchmetrics, data range 1.0): pixel fidelity, the number most attack papers report."""
from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from leakage.image_metrics import ImageMetric, register


@register
class PSNR(ImageMetric):
    name = "psnr"
    display = "PSNR {value:.1f} dB"

    def __call__(self, reconstruction: torch.Tensor, original: torch.Tensor) -> float:
        return float(peak_signal_noise_ratio(reconstruction[0].clamp(0, 1), original[0].clamp(0, 1), data_range=1.0))
