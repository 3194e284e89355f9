"""One attack's leakage numbers as one typed record: the names every table, log and file uses are declared here.

``score()`` (leakage/scoring.py) fills it; metrics.json is ``to_json()``; results.csv takes ``COLUMNS``;
the FL audit and the verdict read its fields. A new summary number is a field here, nowhere else.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from leakage.reidentification import Reidentification


@dataclasses.dataclass
class LeakageScores:
    ssim: float | None  # mean matched SSIM over the client's images (Hungarian pairing)
    rdlv: float  # the client's RDLV (leakage/rdlv.py: the best image's)
    rdlv_mean: float | None  # mean RDLV over the images
    ssim_gain: float  # the largest SSIM gain over the prior
    prior_ssim: float | None  # mean SSIM of the prior to the images: what RDLV is relative to
    label_accuracy: float | None
    ssim_settings: dict[str, Any]
    per_image: list[dict[str, Any]]  # per training image: its matched and nearest reconstruction, SSIM, RDLV, ...
    image_metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)  # registered metrics (leakage/image_metrics/)
    metric_notes: dict[str, str] = dataclasses.field(default_factory=dict)  # why a registered metric is not available
    rdlv_class_prior: float | None = None  # RDLV against each image's class prior (with the run's class priors)
    identification_top1: float | None = None  # share of images whose reconstruction is nearest to them in the pool
    identification_chance: float | None = None  # the same share for a reconstruction that knows nothing: n / N
    identification_rank_median: float | None = None
    population_size: int | None = None
    reidentification: Reidentification | None = None  # the re-identification test over the population (leakage/reidentification.py)

    #: the headline numbers, first in metrics.json (the registered image metrics follow ssim) and in every log
    HEADLINE: ClassVar[tuple[str, ...]] = ("ssim", "rdlv", "label_accuracy")
    #: the summary numbers a study's results.csv carries per attack
    COLUMNS: ClassVar[tuple[str, ...]] = ("ssim", "rdlv", "rdlv_mean", "ssim_gain", "rdlv_class_prior", "identification_top1",
                                          "identification_chance", "identified", "identification_p", "label_accuracy")
    _IDENTIFICATION: ClassVar[tuple[str, ...]] = ("identification_top1", "identification_chance", "identification_rank_median",
                                                  "population_size")

    @property
    def identified(self) -> int | None:
        """The client's images re-identified first in the population (the ones the prior alone picks out not counted)."""
        return self.reidentification.identified if self.reidentification is not None else None

    @property
    def identification_p(self) -> float | None:
        """The re-identification test's exact one-sided p-value."""
        return self.reidentification.p_value if self.reidentification is not None else None

    def headline(self) -> dict[str, Any]:
        first, *rest = self.HEADLINE
        return {first: getattr(self, first), **self.image_metrics, **{key: getattr(self, key) for key in rest}}

    @classmethod
    def unscored_headline(cls, metric_names: list[str]) -> dict[str, Any]:
        """The headline of an attack without ground truth: every number None."""
        first, *rest = cls.HEADLINE
        return {first: None, **{name: None for name in metric_names}, **{key: None for key in rest}}

    def to_json(self, after_headline: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record as metrics.json holds it: the headline, then ``after_headline`` (the attack's own facts), then
        the rest; a number that was not computed (no class priors, no population) is left out, not written as null."""
        rest: dict[str, Any] = {"rdlv_mean": self.rdlv_mean, "ssim_gain": self.ssim_gain, "prior_ssim": self.prior_ssim,
                                "ssim_settings": self.ssim_settings, "per_image": self.per_image}
        if self.rdlv_class_prior is not None:
            rest["rdlv_class_prior"] = self.rdlv_class_prior
        rest.update({f"{name}_note": note for name, note in self.metric_notes.items()})
        if self.population_size is not None:
            rest.update({key: getattr(self, key) for key in self._IDENTIFICATION})
        if self.reidentification is not None:
            rest.update({"identified": self.identified, "identification_p": self.identification_p,
                         "reidentification": self.reidentification.to_dict()})
        return {**self.headline(), **(after_headline or {}), **rest}
