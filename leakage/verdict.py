"""Verdicts on an update: one for whoever holds the client's images, one for whoever holds only the update.

The verdict is never more confident than the attack behind it.

With the client's images (the client's audit, a study, ``attack.py --ground-truth``), three values:

- ``leaks``: any of three tests fires. A reconstruction is close to a training image (matched SSIM >=
  ``scoring.leak_ssim``); or the attack re-identifies the client's images in a reference pool more often than
  chance (``leakage.reidentification``: exact one-sided binomial p < ``scoring.reid_alpha``), whatever its SSIM;
  or RDLV exceeds ``scoring.leak_rdlv`` (when set). A leak shown is a leak, converged attack or not.
- ``no leak found``: the attack converged (``inversion.convergence``) and no test fired.
- ``inconclusive``: no test fired, but the attack did not converge (or its convergence could not be judged): it
  says nothing about leakage, and is never counted as protection.

With the update alone (the server, a third-party auditor), two values (``server_verdict``):

- ``reconstructed``: the attack converged: its images reproduce held-out statistics of the update they were
  never fitted to. This says the update was inverted, not that the images are recognisable; docs/attack.md gives
  how often a ``reconstructed`` update leaked where the images were known.
- ``inconclusive``: it did not converge (or could not be judged).

Beside it, a continuous risk score from the update alone: the held-out error per layer (lower = a closer
solution of the update), whose ranking of updates by leakage is measured as an AUROC in docs/attack.md.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from leakage.record import LeakageScores
from leakage.reidentification import Reidentification

LEAKS, NO_LEAK, INCONCLUSIVE = "leaks", "no leak found", "inconclusive"
VERDICTS = (LEAKS, NO_LEAK, INCONCLUSIVE)
RECONSTRUCTED = "reconstructed"
SERVER_VERDICTS = (RECONSTRUCTED, INCONCLUSIVE)
#: the tests behind ``leaks``, in the order they are reported
TESTS = ("ssim", "reidentification", "rdlv")


def leaked_images(per_image_ssim: Iterable[float | None], leak_ssim: float) -> int:
    """How many training images have a matched reconstruction at or above ``leak_ssim``."""
    return sum(1 for s in per_image_ssim if s is not None and math.isfinite(s) and s >= leak_ssim)


def fired_tests(per_image_ssim: Iterable[float | None], rdlv: float | None, leak_ssim: float, leak_rdlv: float | None = None,
                reid: Reidentification | None = None, reid_alpha: float = 0.01) -> dict[str, str]:
    """The leak tests that fire, each with its numbers in words (an empty dict: none fired)."""
    ssims = [s for s in per_image_ssim]
    fired: dict[str, str] = {}
    close = leaked_images(ssims, leak_ssim)
    if close:
        best = max(s for s in ssims if s is not None and math.isfinite(s))
        fired["ssim"] = f"{close} of {len(ssims)} image(s) at SSIM >= {leak_ssim:g} (best {best:.3f})"
    if reid is not None and reid.fires(reid_alpha):
        fired["reidentification"] = f"{reid.describe()} < {reid_alpha:g}"
    if leak_rdlv is not None and rdlv is not None and math.isfinite(rdlv) and rdlv > leak_rdlv:
        fired["rdlv"] = f"RDLV {rdlv:.2f} > {leak_rdlv:g}"
    return fired


def verdict(per_image_ssim: Iterable[float | None], rdlv: float | None, converged: bool | None, leak_ssim: float,
            leak_rdlv: float | None = None, reid: Reidentification | None = None, reid_alpha: float = 0.01) -> str:
    """The verdict of one attacked update (``per_image_ssim``: each training image's matched SSIM; ``reid``: the
    re-identification test, None where no reference pool was available)."""
    if fired_tests(per_image_ssim, rdlv, leak_ssim, leak_rdlv, reid, reid_alpha):
        return LEAKS
    return NO_LEAK if converged is True else INCONCLUSIVE


def server_verdict(converged: bool | None) -> str:
    """The verdict of whoever holds only the update: ``reconstructed`` exactly when the attack converged."""
    return RECONSTRUCTED if converged is True else INCONCLUSIVE


def server_record(converged: bool | None, heldout_error: float | None) -> dict[str, Any]:
    """The ground-truth-free fields every attack writes, images or not: the verdict and the risk score."""
    risk = heldout_error if heldout_error is None or math.isfinite(heldout_error) else None
    return {"server_verdict": server_verdict(converged), "risk_heldout_error": risk}


def update_verdict(attacks: Iterable[str | None]) -> str:
    """The verdict on one update from several attacks of it (attack seeds): it leaks when any attack showed a leak,
    no leak was found when none did and at least one converged, and is inconclusive otherwise. A leak that any
    attack shows is a leak of the update (a statement about the update, scored afterwards: no attack is chosen
    by it)."""
    found = set(attacks)
    if LEAKS in found:
        return LEAKS
    return NO_LEAK if NO_LEAK in found else INCONCLUSIVE


def verdict_record(scores: LeakageScores, converged: bool | None, leak_ssim: float, leak_rdlv: float | None,
                   reid_alpha: float = 0.01) -> dict[str, Any]:
    """The verdict fields metrics.json, results.csv and the audit carry, from ``leakage.scoring.score``'s record:
    the verdict, which tests fired (``leak_tests``, names) and why (``verdict_reason``, their numbers in words)."""
    per_image = [row.get("ssim") for row in scores.per_image]
    reid = scores.reidentification
    fired = fired_tests(per_image, scores.rdlv, leak_ssim, leak_rdlv, reid, reid_alpha)
    found = verdict(per_image, scores.rdlv, converged, leak_ssim, leak_rdlv, reid, reid_alpha)
    if fired:
        reason = "; ".join(fired.values())
    else:
        reason = (f"{'converged' if found == NO_LEAK else 'not converged'}, no image at SSIM >= {leak_ssim:g}"
                  + (f", {reid.describe()} >= {reid_alpha:g}" if reid else ""))
    return {"verdict": found, "leak_tests": [t for t in TESTS if t in fired], "verdict_reason": reason,
            "leaked_images": leaked_images(per_image, leak_ssim), "leak_ssim": leak_ssim, "leak_rdlv": leak_rdlv,
            "reid_alpha": reid_alpha}
