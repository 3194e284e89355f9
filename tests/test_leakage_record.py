"""The leakage record: one declaration of the numbers, the order metrics.json has always had, and nothing
written that was not computed."""
from __future__ import annotations

import torch

from leakage.metrics import SSIMSettings
from leakage.record import LeakageScores
from leakage.scoring import score


def _scores(**extra) -> LeakageScores:
    return LeakageScores(ssim=0.5, rdlv=1.0, rdlv_mean=0.8, ssim_gain=0.2, prior_ssim=0.3, label_accuracy=1.0,
                         ssim_settings={"kernel": 11}, per_image=[{"image": 0}], image_metrics={"psnr": 20.0}, **extra)


def test_metrics_json_keeps_its_order_headline_then_the_attacks_facts_then_the_rest():
    out = _scores().to_json(after_headline={"iterations": 800, "seconds": 1.5})
    assert list(out) == ["ssim", "psnr", "rdlv", "label_accuracy", "iterations", "seconds", "rdlv_mean", "ssim_gain",
                         "prior_ssim", "ssim_settings", "per_image"]
    full = _scores(metric_notes={"lpips": "off"}, rdlv_class_prior=0.7, identification_top1=1.0, identification_chance=0.00625,
                   identification_rank_median=1.0, population_size=160).to_json()
    assert list(full)[-7:] == ["per_image", "rdlv_class_prior", "lpips_note", "identification_top1", "identification_chance",
                               "identification_rank_median", "population_size"]
    assert full["identification_chance"] == 0.00625 and full["lpips_note"] == "off"


def test_score_fills_the_record_and_a_study_row_reads_its_declared_columns():
    from studies.runner import ROW_FIELDS, SCORE_KEYS

    gen = torch.Generator().manual_seed(0)
    origs = torch.rand(2, 1, 16, 16, generator=gen)
    population = torch.cat([origs, torch.rand(6, 1, 16, 16, generator=gen)])
    out = score(origs.clone(), None, origs, None, population.mean(0), 2, SSIMSettings.for_size(16), [], population)
    assert out.ssim == 1.0 or abs(out.ssim - 1.0) < 1e-5
    assert out.identification_chance == 2 / 8 and out.population_size == 8 and out.identification_top1 == 1.0
    assert SCORE_KEYS == list(LeakageScores.COLUMNS)
    assert all(column in ROW_FIELDS for column in LeakageScores.COLUMNS)
    assert all(hasattr(out, column) for column in LeakageScores.COLUMNS)  # every declared column is a field
    assert LeakageScores.unscored_headline(["psnr"]) == {"ssim": None, "psnr": None, "rdlv": None, "label_accuracy": None}
