"""Per-image leakage metrics beside SSIM: one registered class per file of this folder.

SSIM is not one of them: it decides which reconstruction is matched to which training image and
defines RDLV (leakage/scoring.py). Every metric here is computed on those matched pairs, and a
metric declares everything the outputs need, so adding one is adding a file: its per-image values
land in metrics.json's ``per_image`` and per_image.csv, its aggregate in metrics.json, a study's
results.csv (and so its tables and HTML report), the leakage audit's audit.csv, the attack's
printout and W&B.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from common.registry import Registry, load_plugins

AGGREGATES = ("mean", "max", "min")


class ImageMetric(abc.ABC):
    """A similarity between one reconstruction and the training image it was matched to ([1, C, H, W] in [0, 1])."""

    name: ClassVar[str]
    aggregate: ClassVar[str] = "mean"  # how a client's per-image values become its number: mean, max or min
    higher_is_better: ClassVar[bool] = True
    display: ClassVar[str] = "{name} {value:.3f}"  # the attack's printout

    @classmethod
    def from_config(cls, scoring: Any | None) -> "ImageMetric | None":
        """The metric for this attack's ``scoring`` config (None = not computed; ``scoring`` None = no config at hand)."""
        return cls()

    def unavailable(self) -> str | None:
        """Why the metric cannot be computed here (reported in metrics.json as ``<name>_note``), or None."""
        return None

    @abc.abstractmethod
    def __call__(self, reconstruction: torch.Tensor, original: torch.Tensor) -> float | None:
        """The value for one matched pair."""

    def combine(self, values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        if not values:
            return None
        if self.aggregate == "max":
            return float(max(values))
        if self.aggregate == "min":
            return float(min(values))
        return float(sum(values) / len(values))

    @classmethod
    def format(cls, value: float) -> str:
        return cls.display.format(name=cls.name.upper(), value=value)


REGISTRY: Registry[type[ImageMetric]] = Registry("image metric")


def register(cls: type[ImageMetric]) -> type[ImageMetric]:
    if cls.aggregate not in AGGREGATES:
        raise ValueError(f"image metric {cls.__name__}: aggregate must be one of {', '.join(AGGREGATES)}, got {cls.aggregate}")
    return REGISTRY.register(cls)


def metrics_for(scoring: Any | None = None) -> list[ImageMetric]:
    """Every registered metric that this scoring config asks for, in registration-name order."""
    built = [cls.from_config(scoring) for _, cls in REGISTRY.items()]
    return [m for m in built if m is not None]


def metric_names() -> list[str]:
    """The output columns of the registered metrics (whether or not a given attack computed them)."""
    return REGISTRY.names()


load_plugins(__name__)
