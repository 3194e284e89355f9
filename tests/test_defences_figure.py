"""bench/defences_figure.py: a defence's accuracy cost paired by seed and its leak rate per distinct face, from the CSVs."""
from __future__ import annotations

import pytest

from bench.defences_figure import figure, points, table


def test_the_paper_filter_point_by_hand(tmp_path):
    pts = {p.label: p for p in points()}
    p = pts["paper's filter, sigma0 = 30"]
    # per-seed accuracies (results/sigma0_seeds): differences 0, 0, -0.025, -0.025, +0.025, +0.025, 0, 0, 0, 0 -> mean 0,
    # sd = sqrt(4 x 0.025^2 / 9) = 0.016667, half-width t(0.975, 9) x sd / sqrt(10) = 2.262157 x 0.0052705 = 0.011923
    assert p.cost == pytest.approx(0.0, abs=1e-12) and p.seeds == 10
    assert p.high == pytest.approx(0.011923, abs=1e-5) and p.low == pytest.approx(-0.011923, abs=1e-5)
    assert (p.leaks, p.images, p.inconclusive) == (5, 9, 4)  # seeds 6 and 9 hold the same face
    base = pts["undefended (default federation)"]
    assert (base.cost, base.leaks, base.images) == (0.0, 8, 9)
    assert "| paper's filter, sigma0 = 30 | +0.000 (-0.012 to +0.012) | 10 | 5 of 9 (0.21-0.86) | 4 |" in table(list(pts.values()))
    assert figure(list(pts.values()), tmp_path / "d.png").stat().st_size > 10_000
