"""How often the verdicts are right: re-scoring study rows with the verdict rule, the confusion table of the
ground-truth-free verdict against leakage, and the AUROC of its risk score.

Used by ``bench/verdict_validation.py`` on the studies' results.csv files (the calibration set and the
pre-registered test set, docs/verdict-validation.md). A study row holds what the rule needs: the matched SSIM test
(``leaked_images``), the re-identification numbers (``identification_top1``, ``identification_chance``: the share
identified and n / N), RDLV, convergence and the held-out error. The prior guard of the re-identification test
needs per-image data a results.csv does not hold; rows written before it existed are re-scored without it (rows
that carry ``identified`` use it).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from leakage.reidentification import Reidentification, binomial_tail
from leakage.verdict import INCONCLUSIVE, LEAKS, NO_LEAK, RECONSTRUCTED, server_verdict
from studies.tables import clopper_pearson


def row_reidentification(row: dict[str, Any]) -> Reidentification | None:
    """The re-identification test of one results.csv row (None when the row has no identification numbers)."""
    n, share, chance = row.get("num_images"), row.get("identification_top1"), row.get("identification_chance")
    if n is None or share is None or chance is None or not float(chance) > 0:
        return None
    n = int(n)
    pool = int(round(n / float(chance)))
    identified = row.get("identified")
    k = int(identified) if identified is not None else int(round(float(share) * n))
    return Reidentification(k, n, pool, 0, float(chance), binomial_tail(k, n, float(chance)))


def rescore(row: dict[str, Any], reid_alpha: float = 0.01, leak_rdlv: float | None = None) -> tuple[str, list[str]]:
    """(verdict, the tests that fired) of one results.csv row under the verdict rule (leakage.verdict)."""
    fired = []
    if (row.get("leaked_images") or 0) > 0:
        fired.append("ssim")
    reid = row_reidentification(row)
    if reid is not None and reid.fires(reid_alpha):
        fired.append("reidentification")
    rdlv = row.get("rdlv")
    if leak_rdlv is not None and rdlv is not None and math.isfinite(float(rdlv)) and float(rdlv) > leak_rdlv:
        fired.append("rdlv")
    if fired:
        return LEAKS, fired
    return (NO_LEAK if row.get("converged") is True or row.get("converged") == "True" else INCONCLUSIVE), fired


def converged(row: dict[str, Any]) -> bool:
    return row.get("converged") is True or row.get("converged") == "True"


#: the looser standard a 'no leak found' is checked against (pre-registered in docs/verdict-validation.md)
RECOGNISABLE_SSIM = 0.5


def recognisable(row: dict[str, Any]) -> bool:
    """An independent, looser judge of "a person could recognise an image": any image picked out first among the
    pool (at any p), or a mean matched SSIM of at least ``RECOGNISABLE_SSIM``. A ``no leak found`` it flags is
    counted as false."""
    reid = row_reidentification(row)
    ssim = row.get("ssim")
    return (reid is not None and reid.identified > 0) or (ssim is not None and math.isfinite(float(ssim)) and float(ssim) >= RECOGNISABLE_SSIM)


def risk(row: dict[str, Any]) -> float:
    """The ground-truth-free risk score: minus the held-out error (higher = riskier); a missing or non-finite error
    (an attack that diverged or could not be judged) ranks last."""
    h = row.get("heldout_error")
    try:
        h = float(h)
    except (TypeError, ValueError):
        return -math.inf
    return -h if math.isfinite(h) else -math.inf


def auroc(scores: list[float], positive: list[bool]) -> float | None:
    """The probability that a random positive scores above a random negative (ties count one half): the
    Mann-Whitney form of the area under the ROC curve. None when one class is empty."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    wins = sum((1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = clopper_pearson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def validation(rows: Iterable[dict[str, Any]], reid_alpha: float = 0.01) -> dict[str, Any]:
    """The confusion table of the ground-truth-free verdict against "leaks" (any test of the verdict rule), the
    false ``reconstructed`` and false ``no leak found`` rates with their Clopper-Pearson intervals, and the AUROC of
    the risk score; over all rows and per client size."""
    rows = list(rows)
    out: dict[str, Any] = {"all": _table(rows, reid_alpha)}
    for size in sorted({int(r["num_images"]) for r in rows}):
        out[f"{size} image(s)"] = _table([r for r in rows if int(r["num_images"]) == size], reid_alpha)
    return out


def _table(rows: list[dict[str, Any]], reid_alpha: float) -> dict[str, Any]:
    verdicts = [rescore(r, reid_alpha)[0] for r in rows]
    leaks = [v == LEAKS for v in verdicts]
    server = [server_verdict(True if converged(r) else None) for r in rows]
    rec = [i for i, s in enumerate(server) if s == RECONSTRUCTED]
    unrec = [i for i, s in enumerate(server) if s != RECONSTRUCTED]
    nlf = [i for i, v in enumerate(verdicts) if v == NO_LEAK]
    return {
        "updates": len(rows),
        "confusion": {"reconstructed & leaks": sum(leaks[i] for i in rec), "reconstructed & no leak": sum(not leaks[i] for i in rec),
                      "inconclusive & leaks": sum(leaks[i] for i in unrec), "inconclusive & no leak": sum(not leaks[i] for i in unrec)},
        "leak_given_reconstructed": rate(sum(leaks[i] for i in rec), len(rec)),
        "false_reconstructed": rate(sum(not leaks[i] for i in rec), len(rec)),
        # a 'no leak found' is false when a person could still recognise an image: judged by the looser standard of
        # :func:`recognisable`, which the rule itself does not use
        "false_no_leak_found": rate(sum(recognisable(rows[i]) for i in nlf), len(nlf)),
        "verdicts": {v: verdicts.count(v) for v in (LEAKS, NO_LEAK, INCONCLUSIVE)},
        "auroc_risk": auroc([risk(r) for r in rows], leaks),
        "positives": sum(leaks),
    }
