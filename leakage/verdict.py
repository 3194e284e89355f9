"""Three verdicts on an update: it leaks, no leak was found, or the evidence is inconclusive.

The verdict is never more confident than the attack behind it:

- ``leaks``: a reconstruction is close to a training image (matched SSIM >= ``scoring.leak_ssim``, or
  RDLV above ``scoring.leak_rdlv`` when set). A leak shown is a leak, converged attack or not.
- ``no leak found``: the attack converged (``inversion.convergence``) and still nothing is close.
- ``inconclusive``: nothing is close, but the attack did not converge (or its convergence could not
  be judged): it says nothing about leakage, and is never counted as protection.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from leakage.record import LeakageScores

LEAKS, NO_LEAK, INCONCLUSIVE = "leaks", "no leak found", "inconclusive"
VERDICTS = (LEAKS, NO_LEAK, INCONCLUSIVE)


def leaked_images(per_image_ssim: Iterable[float | None], leak_ssim: float) -> int:
    """How many training images have a matched reconstruction at or above ``leak_ssim``."""
    return sum(1 for s in per_image_ssim if s is not None and math.isfinite(s) and s >= leak_ssim)


def verdict(per_image_ssim: Iterable[float | None], rdlv: float | None, converged: bool | None, leak_ssim: float,
            leak_rdlv: float | None = None) -> str:
    """The verdict of one attacked update (``per_image_ssim``: each training image's matched SSIM)."""
    leaked = leaked_images(per_image_ssim, leak_ssim) > 0
    if leak_rdlv is not None and rdlv is not None and math.isfinite(rdlv) and rdlv > leak_rdlv:
        leaked = True
    if leaked:
        return LEAKS
    return NO_LEAK if converged is True else INCONCLUSIVE


def update_verdict(attacks: Iterable[str | None]) -> str:
    """The verdict on one update from several attacks of it (attack seeds): it leaks when any attack showed a leak,
    no leak was found when none did and at least one converged, and is inconclusive otherwise. A leak that any
    attack shows is a leak of the update (a statement about the update, scored afterwards: no attack is chosen
    by it)."""
    found = set(attacks)
    if LEAKS in found:
        return LEAKS
    return NO_LEAK if NO_LEAK in found else INCONCLUSIVE


def verdict_record(scores: LeakageScores, converged: bool | None, leak_ssim: float, leak_rdlv: float | None) -> dict[str, Any]:
    """The verdict fields metrics.json, results.csv and the audit carry, from ``leakage.scoring.score``'s record."""
    per_image = [row.get("ssim") for row in scores.per_image]
    return {"verdict": verdict(per_image, scores.rdlv, converged, leak_ssim, leak_rdlv),
            "leaked_images": leaked_images(per_image, leak_ssim), "leak_ssim": leak_ssim, "leak_rdlv": leak_rdlv}
