"""The verdict rule (issue 37): re-identification as a leak test, the ground-truth-free verdict, and the three
'no leak found' verdicts the project's own studies gave to updates whose images were picked out of the pool."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from leakage.metrics import SSIMSettings
from leakage.reidentification import Reidentification, binomial_tail
from leakage.scoring import score
from leakage.verdict import INCONCLUSIVE, LEAKS, NO_LEAK, RECONSTRUCTED, server_record, server_verdict, verdict, verdict_record
from studies.tables import read_rows
from studies.verdict_validation import auroc, recognisable, rescore, validation

ROOT = Path(__file__).resolve().parent.parent


def _tail(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k) summed term by term: an independent formula for the test's tail."""
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


# ----------------------------------------------------------------------------- the test's maths

@pytest.mark.parametrize("k,n,p", [(1, 1, 1 / 160), (4, 4, 0.025), (2, 4, 0.025), (3, 8, 0.05), (0, 4, 0.025), (5, 8, 0.3)])
def test_binomial_tail_is_the_upper_tail(k, n, p):
    assert binomial_tail(k, n, p) == pytest.approx(_tail(k, n, p), rel=1e-12, abs=1e-300)


def test_binomial_tail_by_hand():
    assert binomial_tail(1, 1, 1 / 160) == pytest.approx(0.00625)  # one image, picked out of 160
    assert binomial_tail(4, 4, 0.025) == pytest.approx(0.025 ** 4)  # 3.9e-7
    assert binomial_tail(2, 4, 0.025) == pytest.approx(1 - 0.975 ** 4 - 4 * 0.025 * 0.975 ** 3)
    assert binomial_tail(0, 4, 0.5) == 1.0


def test_reidentification_chance_is_n_over_the_pool():
    reid = Reidentification.of([1, 1, 1, 1], 160)
    assert reid.chance == pytest.approx(4 / 160) and reid.identified == 4 and reid.pool == 160
    assert reid.p_value == pytest.approx(0.025 ** 4)
    assert reid.fires(0.01) and "identified 4 of 4 first among 160" in reid.describe()
    one = Reidentification.of([1], 160)
    assert one.p_value == pytest.approx(1 / 160) and one.fires(0.01) and not one.fires(0.005)
    assert not Reidentification.of([2, 1, 7, 3], 160).fires(0.01)  # 1 of 4 at 0.025 each: p = 0.096
    assert Reidentification.of([2, 1, 7, 3], 160).p_value == pytest.approx(1 - 0.975 ** 4)


def test_an_image_the_prior_alone_picks_out_is_not_counted():
    reid = Reidentification.of([1, 1, 5, 9], 160, prior_picks=[True, False, False, False])
    assert reid.identified == 1 and reid.excluded == 1
    assert reid.p_value == pytest.approx(_tail(1, 3, 4 / 160))
    assert not Reidentification.of([1], 160, prior_picks=[True]).fires(0.5)


# ----------------------------------------------------------------------------- the verdicts

def test_a_reidentified_client_is_never_called_no_leak_found():
    reid = Reidentification.of([1, 1, 1, 1], 160)
    for converged in (True, False, None):
        assert verdict([0.2, 0.3, 0.1, 0.25], 0.0, converged, 0.75, reid=reid) == LEAKS
    # under the old rule (no re-identification test) the same client was 'no leak found'
    assert verdict([0.2, 0.3, 0.1, 0.25], 0.0, True, 0.75) == NO_LEAK
    chance_only = Reidentification.of([1, 3, 9, 2], 160)
    assert verdict([0.2, 0.3, 0.1, 0.25], 0.0, True, 0.75, reid=chance_only) == NO_LEAK
    assert verdict([0.2, 0.3, 0.1, 0.25], 0.0, False, 0.75, reid=chance_only) == INCONCLUSIVE


def test_the_verdict_record_says_which_test_fired_with_its_numbers():
    s = score(*_pool_case(identify=True))
    rec = verdict_record(s, True, 0.999, None, 0.05)
    assert rec["verdict"] == LEAKS and rec["leak_tests"] == ["reidentification"]
    assert "identified 1 of 1 first among 40 (chance 0.025 per image" in rec["verdict_reason"] and "p = 0.025 < 0.05" in rec["verdict_reason"]
    both = verdict_record(s, False, 0.2, None, 0.05)
    assert both["leak_tests"] == ["ssim", "reidentification"] and both["verdict_reason"].startswith("1 of 1 image(s) at SSIM >= 0.2")
    none = verdict_record(s, False, 0.999, None, 0.01)
    assert none["verdict"] == INCONCLUSIVE and none["leak_tests"] == [] and none["verdict_reason"].startswith("not converged")


def test_the_ground_truth_free_verdict_needs_convergence():
    assert server_verdict(True) == RECONSTRUCTED
    assert server_verdict(False) == INCONCLUSIVE and server_verdict(None) == INCONCLUSIVE
    assert server_record(False, 0.4) == {"server_verdict": INCONCLUSIVE, "risk_heldout_error": 0.4}
    assert server_record(True, 0.001) == {"server_verdict": RECONSTRUCTED, "risk_heldout_error": 0.001}
    assert server_record(None, math.inf)["risk_heldout_error"] is None


# ----------------------------------------------------------------------------- scoring with a pool

def _pool_case(identify: bool, prior_is_the_image: bool = False):
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(40, 1, 16, 16, generator=g)
    orig = pool[7:8].clone()
    rec = (0.7 * orig + 0.3 * torch.rand(1, 1, 16, 16, generator=g)) if identify else torch.rand(1, 1, 16, 16, generator=g)
    prior = orig[0].clone() if prior_is_the_image else torch.full((1, 16, 16), 0.5)
    return rec, None, orig, None, prior, 2, SSIMSettings.for_size(16), [], pool


def test_scoring_runs_the_reidentification_test_over_the_pool():
    s = score(*_pool_case(identify=True))
    assert s.per_image[0]["identification_rank"] == 1 and s.per_image[0]["prior_identifies"] is False
    assert s.identified == 1 and s.reidentification.pool == 40 and s.identification_p == pytest.approx(1 / 40)
    assert verdict_record(s, True, 0.999, None, 0.05)["leak_tests"] == ["reidentification"]
    assert verdict_record(s, True, 0.999, None, 0.01)["verdict"] == NO_LEAK  # 1 of 40 is p = 0.025: not below 0.01


def test_scoring_does_not_count_what_the_prior_alone_picks_out():
    s = score(*_pool_case(identify=True, prior_is_the_image=True))
    assert s.per_image[0]["prior_identifies"] is True and s.identified == 0 and s.reidentification.excluded == 1
    assert verdict_record(s, True, 0.999, None, 0.5)["verdict"] == NO_LEAK


# ----------------------------------------------------------------------------- the project's own false 'no leak found'

def _rows(study: str) -> list[dict]:
    return read_rows(ROOT / "docs" / "results" / study / "results.csv")


@pytest.mark.parametrize("study,seed,bn_source,num_images,batch_size", [
    ("bn_ablation", 2, "exact", 1, 1), ("bn_ablation", 2, "multi_step", 1, 1), ("batch_layout", 1, None, 4, 1)])
def test_the_three_false_no_leak_found_are_leaks_under_the_rule(study, seed, bn_source, num_images, batch_size):
    """The studies' three 'no leak found' (SSIM 0.72 / 0.70 / 0.57, every image picked out first among 160):
    re-scored with the re-identification test they leak."""
    rows = [r for r in _rows(study) if r["seed"] == seed and r["verdict"] == NO_LEAK and r["num_images"] == num_images
            and r["batch_size"] == batch_size and (bn_source is None or r["bn_source"] == bn_source)]
    assert len(rows) == 1
    row = rows[0]
    assert row["identification_top1"] == 1.0 and row["leaked_images"] == 0
    assert rescore(row) == (LEAKS, ["reidentification"])
    assert recognisable(row)  # the independent judge agrees a person could pick the image out


def test_rescoring_the_calibration_set_leaves_no_no_leak_found():
    rows = [r for study in ("bn_ablation", "batch_layout", "per_round", "sigma0") for r in _rows(study)]
    verdicts = [rescore(r)[0] for r in rows]
    assert NO_LEAK not in verdicts
    t = validation(rows)["all"]
    assert t["confusion"]["reconstructed & no leak"] == 0 and t["leak_given_reconstructed"]["k"] == t["leak_given_reconstructed"]["n"]


def test_auroc_is_the_mann_whitney_probability():
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.8, 0.9], [True, True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.9, 0.1], [True, False, True, False]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert auroc([0.5], [True]) is None


def test_a_study_summary_counts_the_tests_that_fired_and_the_server_verdicts():
    from studies.analyze import _verdict_lead

    rows = [{"verdict": LEAKS, "leak_tests": "ssim reidentification", "server_verdict": RECONSTRUCTED},
            {"verdict": LEAKS, "leak_tests": "reidentification", "server_verdict": INCONCLUSIVE},
            {"verdict": INCONCLUSIVE, "leak_tests": None, "server_verdict": INCONCLUSIVE}]
    lead = _verdict_lead(rows)
    assert "2 leak, 0 no leak found (converged), 1 inconclusive" in lead
    assert "Leaks found by ssim 1, reidentification 2" in lead and "1 reconstructed, 2 inconclusive" in lead
