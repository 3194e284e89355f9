"""Re-identification as a test: does the attack pick the client's own images out of a pool more often than chance?

A reconstruction need not look good to leak: one that is nearer (SSIM) to its own training image than to any
other image of a reference pool has told the attacker which image the client holds. Counting how many of the
client's n images are picked out this way, against what a reconstruction that knows nothing would reach, gives an
exact one-sided test, whatever the SSIM.

The null hypothesis: the reconstructions carry no information on which pool images are the client's. Each
reconstruction's nearest pool image is then one of the client's n images with probability n / N (the client's
images are n of the N), and the scoring's one-to-one matching can credit it to at most that one image, so the
number identified is at most Binomial(n, n / N) in distribution, and its upper tail is a conservative p-value
(``leakage.scoring.identification_chance`` explains the n / N).

One more way to be picked out without information: the attacker's own starting image. An image the prior alone
already picks out (its nearest pool image is that client image) is not counted, and the test runs over the other
images only (``excluded``); a reconstruction that never left the prior then shows nothing.
"""
from __future__ import annotations

import dataclasses
import math

from scipy.stats import binom


def binomial_tail(identified: int, trials: int, chance: float) -> float:
    """P(Binomial(trials, chance) >= identified): the exact one-sided p-value of ``identified`` successes."""
    if identified <= 0:
        return 1.0
    if identified > trials:
        return 0.0
    return float(binom.sf(identified - 1, trials, min(1.0, max(0.0, chance))))


@dataclasses.dataclass(frozen=True)
class Reidentification:
    identified: int  # the client's images picked out first among the pool (excluded ones not counted)
    images: int  # the client's images (n)
    pool: int  # reference pool size (N): the client's images and the others the scorer holds
    excluded: int  # images the prior alone picks out: not evidence, left out of the test
    chance: float  # per image, for a reconstruction that knows nothing: n / N
    p_value: float  # P(Binomial(n - excluded, chance) >= identified)

    @classmethod
    def of(cls, ranks: list[int | None], pool: int, prior_picks: list[bool] | None = None) -> "Reidentification":
        """From each client image's identification rank (1 = its reconstruction's nearest pool image is it; None =
        not ranked) and whether the prior alone picks it out."""
        n = len(ranks)
        picks = prior_picks or [False] * n
        excluded = sum(1 for p in picks if p)
        identified = sum(1 for r, p in zip(ranks, picks) if r == 1 and not p)
        chance = min(1.0, n / pool) if pool > 0 else math.nan
        p = binomial_tail(identified, n - excluded, chance) if pool > 0 else math.nan
        return cls(identified, n, pool, excluded, chance, p)

    def fires(self, alpha: float) -> bool:
        return math.isfinite(self.p_value) and self.p_value < alpha

    def describe(self) -> str:
        """"identified 4 of 4 first among 160 (chance 0.025 per image, 0.1 expected), p = 3.9e-07"."""
        excluded = f", {self.excluded} the prior alone picks out not counted" if self.excluded else ""
        return (f"identified {self.identified} of {self.images} first among {self.pool} (chance {self.chance:.2g} per image, "
                f"{self.chance * (self.images - self.excluded):.2g} expected{excluded}), p = {self.p_value:.2g}")

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)
