"""Pictures people would rather look at than read: originals, prior and reconstructions side by side."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _show(ax, image: torch.Tensor, title: str) -> None:
    img = image.detach().float().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def reconstruction_figure(path: Path, recs: torch.Tensor, prior: torch.Tensor, origs: torch.Tensor | None = None,
                          scores: dict[str, Any] | None = None, title: str = "", max_images: int = 16) -> None:
    """Row 1: training images (if known) with the prior; row 2: their matched reconstructions."""
    n = min(max_images, origs.shape[0] if origs is not None else recs.shape[0])
    cols = n + 1
    rows = 2 if origs is not None else 1
    width = max(4.0, 1.3 * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.5 * rows + 0.6), squeeze=False)
    per_image = (scores or {}).get("per_image", [])
    for k in range(n):
        if origs is not None:
            row = per_image[k] if k < len(per_image) else {}
            _show(axes[0][k], origs[k], f"train #{k} y={row.get('label', '?')}")
            j = row.get("matched_reconstruction")
            if j is None:
                axes[1][k].axis("off")
                continue
            ssim = row.get("ssim")
            _show(axes[1][k], recs[j], f"rec SSIM {ssim:.2f}\nRDLV {row.get('rdlv', float('nan')):.2f}")
        else:
            _show(axes[0][k], recs[k], f"rec #{k}")
    _show(axes[0][n], prior, "prior")
    if rows == 2:
        axes[1][n].axis("off")
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, width=int(width * 13))), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
