"""Scoring a reconstruction against the ground truth (a separate step from the attack).

Batches are matched one-to-one (Hungarian assignment on SSIM) before averaging; each training
image's nearest reconstruction and its RDLV are reported too.
"""
from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from inversion.labels import count_accuracy
from leakage.image_metrics import ImageMetric, metrics_for
from leakage.metrics import SSIMSettings, ssim_matrix, ssim_pairs
from leakage.record import LeakageScores
from leakage.reidentification import Reidentification
from leakage.rdlv import identification_rank, rdlv_client, rdlv_per_image, ssim_gain


def hungarian(similarity: torch.Tensor) -> list[tuple[int, int]]:
    """(reconstruction j, original i) pairs maximising the total similarity, one-to-one."""
    rows, cols = linear_sum_assignment(-similarity.double().numpy())
    return [(int(j), int(i)) for j, i in zip(rows, cols)]


def score(recs: torch.Tensor, rec_labels: torch.Tensor | None, origs: torch.Tensor, labels: torch.Tensor | None, prior: torch.Tensor,
          num_classes: int, settings: SSIMSettings, metrics: list[ImageMetric] | None = None, population: torch.Tensor | None = None,
          class_priors: dict[int, torch.Tensor] | None = None) -> LeakageScores:
    """All leakage numbers of one attack; ``population`` (training pool) enables identification ranks.

    ``metrics``: the registered image metrics to compute on the matched pairs (None = those that
    need no config, leakage/image_metrics/).
    """
    metrics = metrics_for(None) if metrics is None else metrics
    available = [m for m in metrics if not m.unavailable()]  # an unavailable one: a note, no per-image values
    recs, origs = recs.float().clamp(0, 1), origs.float().clamp(0, 1)
    sim = ssim_matrix(recs, origs, settings)  # [M, N]
    prior_ssim = ssim_pairs(prior[None].expand_as(origs), origs, settings)  # [N]
    rdlv = rdlv_per_image(sim, prior_ssim)  # [N]: leakage/rdlv.py, the functions tests/test_maths_pinned.py pins
    pairs = hungarian(sim)
    matched = {i: j for j, i in pairs}
    gain = ssim_gain(sim, prior_ssim)
    class_rdlv = None
    if class_priors and labels is not None:
        cp = torch.stack([class_priors[int(y)] for y in labels])
        class_prior_ssim = ssim_pairs(cp, origs, settings)
        class_rdlv = rdlv_per_image(sim, class_prior_ssim)
    pop_sim = ssim_matrix(recs, population, settings) if population is not None else None
    # the pool image the attacker's own starting image is nearest to: picking that one out is no evidence
    prior_pick = int(ssim_matrix(prior[None].float().clamp(0, 1), population, settings)[0].argmax()) if population is not None else None
    per_image = []
    for i in range(origs.shape[0]):
        j = matched.get(i)
        nearest = int(sim[:, i].argmax())
        row: dict[str, Any] = {
            "image": i,
            "label": int(labels[i]) if labels is not None else None,
            "matched_reconstruction": j,
            "ssim": float(sim[j, i]) if j is not None else None,
            **{m.name: m(recs[j:j + 1], origs[i:i + 1]) if j is not None else None for m in available},
            "nearest_reconstruction": nearest,
            "nearest_ssim": float(sim[nearest, i]),
            "prior_ssim": float(prior_ssim[i]),
            "rdlv": float(rdlv[i]),
            "ssim_gain": float(gain[i]),
        }
        if class_rdlv is not None:
            row["rdlv_class_prior"] = float(class_rdlv[i])
        if j is not None and rec_labels is not None and labels is not None:
            row["label_correct"] = bool(int(rec_labels[j]) == int(labels[i]))
        if pop_sim is not None and j is not None:
            own = _find(population, origs[i])
            row["identification_rank"] = identification_rank(pop_sim[j], own)
            row["prior_identifies"] = own == prior_pick
        per_image.append(row)
    matched_rows = [r for r in per_image if r["ssim"] is not None]
    out = LeakageScores(
        ssim=_mean([r["ssim"] for r in matched_rows]),
        rdlv=rdlv_client(sim, prior_ssim),
        rdlv_mean=_mean([r["rdlv"] for r in per_image]),
        ssim_gain=float(gain.max()),
        prior_ssim=_mean([r["prior_ssim"] for r in per_image]),
        label_accuracy=count_accuracy(rec_labels, labels, num_classes) if rec_labels is not None and labels is not None else None,
        ssim_settings=settings.describe(),
        per_image=per_image,
        image_metrics={m.name: m.combine([r[m.name] for r in matched_rows]) if m in available else None for m in metrics},
        metric_notes={m.name: m.unavailable() for m in metrics if m.unavailable()},
        rdlv_class_prior=float(class_rdlv.max()) if class_rdlv is not None else None,
    )
    if pop_sim is not None:
        ranks = [r["identification_rank"] for r in per_image if "identification_rank" in r]
        out.identification_top1 = sum(1 for r in ranks if r == 1) / max(1, len(ranks))
        out.identification_chance = identification_chance(origs.shape[0], int(population.shape[0]))
        out.identification_rank_median = float(torch.tensor(ranks, dtype=torch.float).median()) if ranks else None
        out.population_size = int(population.shape[0])
        out.reidentification = Reidentification.of([r.get("identification_rank") for r in per_image], out.population_size,
                                                   [bool(r.get("prior_identifies")) for r in per_image])
    return out


def score_as_configured(scoring: Any, recs: torch.Tensor, rec_labels: torch.Tensor | None, origs: torch.Tensor,
                        labels: torch.Tensor | None, prior: torch.Tensor, num_classes: int,
                        population: torch.Tensor | None = None, class_priors: dict[int, torch.Tensor] | None = None,
                        metrics: list[ImageMetric] | None = None) -> tuple[LeakageScores, list[ImageMetric]]:
    """:func:`score` with what an attack config's ``scoring`` section asks for: SSIM settings at the ground
    truth's size and the registered image metrics (``metrics`` overrides them). The one sequence the attack
    job and the FL audit share; returns the scores and the metrics computed."""
    settings = SSIMSettings.for_size(origs.shape[-1], scoring.ssim_kernel, scoring.ssim_sigma)
    metrics = metrics_for(scoring) if metrics is None else metrics
    return score(recs, rec_labels, origs, labels, prior, num_classes, settings, metrics, population, class_priors), metrics


def identification_chance(client_images: int, population: int) -> float:
    """The identification_top1 a reconstruction that knows nothing reaches: n / N.

    Its nearest image among the N of the population is one of the client's n with probability
    n / N, and the matching, which pairs it with one of the client's images, then pairs it with
    that one. So a client of 32 images among 160 "identifies" 32 x 0.2 = 6.4 images by chance.
    The rate must be read against this, never against 1 / N."""
    return min(1.0, client_images / population) if population > 0 else float("nan")


def _find(population: torch.Tensor, image: torch.Tensor) -> int:
    """Index of ``image`` in ``population`` (exact match; the nearest by L2 if absent)."""
    d = (population - image[None]).flatten(1).pow(2).sum(1)
    return int(d.argmin())


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None
