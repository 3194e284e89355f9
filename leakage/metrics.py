"""SSIM on [0, 1] images (torchmetrics): the similarity that matches reconstructions to training images
and defines RDLV. The other per-image metrics (PSNR, LPIPS, yours) are registered in leakage/image_metrics/.

Every reported number says which SSIM window it used: RDLV depends on it, and papers rarely say.
"""
from __future__ import annotations

import dataclasses

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from common.errors import UserError


@dataclasses.dataclass(frozen=True)
class SSIMSettings:
    kernel_size: int
    sigma: float

    @classmethod
    def for_size(cls, size: int, kernel_size: int = 0, sigma: float = 0.0) -> "SSIMSettings":
        """sigma 1.5 (an 11x11 window, torchmetrics' default) from 64 px up; sigma 1.0 (9x9) below.

        torchmetrics' Gaussian SSIM ignores its ``kernel_size`` argument and sizes the window from
        sigma (:func:`gaussian_window`), so the window is derived here, never assumed: a size that
        sigma cannot give is refused rather than reported and silently not used.
        """
        if sigma < 0 or kernel_size < 0:
            raise UserError(f"scoring.ssim_sigma and scoring.ssim_kernel must be >= 0 (0 = by image size), got {sigma}, {kernel_size}")
        s = sigma or (1.5 if size >= 64 else 1.0)
        k = gaussian_window(s)
        if kernel_size and kernel_size != k:
            raise UserError(f"scoring.ssim_kernel {kernel_size} is not possible with sigma {s}: torchmetrics' Gaussian SSIM window is "
                            f"2*int(3.5*sigma+0.5)+1 = {k}; set scoring.ssim_sigma instead")
        return cls(k, s)

    def describe(self) -> str:
        return (f"torchmetrics SSIM, Gaussian window {self.kernel_size}x{self.kernel_size}, sigma {self.sigma}, "
                "reflect-padded borders, data_range 1.0")


def gaussian_window(sigma: float) -> int:
    """The window torchmetrics' Gaussian SSIM actually uses for ``sigma`` (3.5 sigma each side)."""
    return 2 * int(3.5 * sigma + 0.5) + 1


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, settings: SSIMSettings) -> torch.Tensor:
    """SSIM of a[i] with b[i] for every i (inputs [N, C, H, W] in [0, 1])."""
    return structural_similarity_index_measure(a.float().clamp(0, 1), b.float().clamp(0, 1), data_range=1.0,
                                               kernel_size=settings.kernel_size, sigma=settings.sigma, reduction="none")


def ssim_matrix(recs: torch.Tensor, origs: torch.Tensor, settings: SSIMSettings) -> torch.Tensor:
    """[M, N] SSIM of every reconstruction with every original."""
    m, n = recs.shape[0], origs.shape[0]
    a = recs[:, None].expand(m, n, *recs.shape[1:]).reshape(m * n, *recs.shape[1:])
    b = origs[None].expand(m, n, *origs.shape[1:]).reshape(m * n, *origs.shape[1:])
    return ssim_pairs(a, b, settings).view(m, n)
