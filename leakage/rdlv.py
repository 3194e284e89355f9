"""RDLV, exactly as the paper defines it, and companions that do not explode when the prior is unlike the image.

RDLV_ij = (SSIM(r_j, x_i) - SSIM(p, x_i)) / SSIM(p, x_i);  RDLV_i = max_j RDLV_ij;  client = max_i RDLV_i.
Dividing by SSIM(p, x_i) makes the value explode for images the prior does not resemble (a dark,
flat non-face against a face-mean prior has SSIM ~0.05): see docs/leakage-metrics.md.
"""
from __future__ import annotations

import torch


def rdlv_matrix(ssim_rec: torch.Tensor, ssim_prior: torch.Tensor) -> torch.Tensor:
    """[M, N] RDLV of reconstruction j for training image i, from SSIM [M, N] and SSIM(prior, x) [N]."""
    return (ssim_rec - ssim_prior[None]) / ssim_prior[None]


def rdlv_per_image(ssim_rec: torch.Tensor, ssim_prior: torch.Tensor) -> torch.Tensor:
    return rdlv_matrix(ssim_rec, ssim_prior).max(0).values


def rdlv_client(ssim_rec: torch.Tensor, ssim_prior: torch.Tensor) -> float:
    return float(rdlv_per_image(ssim_rec, ssim_prior).max())


def ssim_gain(ssim_rec: torch.Tensor, ssim_prior: torch.Tensor) -> torch.Tensor:
    """Robust companion: the absolute SSIM gained over the prior, max over reconstructions [N]."""
    return ssim_rec.max(0).values - ssim_prior


def identification_rank(population_similarity: torch.Tensor, true_index: int) -> int:
    """1 + how many population images are more similar to a reconstruction than its true image."""
    true_value = population_similarity[true_index]
    return 1 + int((population_similarity > true_value).sum())
