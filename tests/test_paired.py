"""The paired comparison of two sets of federations by seed (studies/paired.py), against numbers worked by hand."""
from __future__ import annotations

import json

import pytest
import yaml

from common.errors import UserError
from studies.paired import main, paired_difference
from tests.conftest import run_entry


def test_the_paired_interval_and_p_value_by_hand():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1/sqrt(3) = 0.057735; t(0.975, 2) = 4.302653
    r = paired_difference({0: 0.5, 1: 0.5, 2: 0.5, 9: 0.1}, {0: 0.6, 1: 0.7, 2: 0.8})
    assert r.seeds == [0, 1, 2] and r.n == 3
    assert r.mean == pytest.approx(0.2)
    assert r.low == pytest.approx(0.2 - 4.302653 * 0.057735, abs=1e-5)
    assert r.high == pytest.approx(0.2 + 4.302653 * 0.057735, abs=1e-5)
    # t = 0.2 / 0.057735 = 3.4641 on 2 df: two-sided p = 1 - 3.4641 / sqrt(3.4641^2 + 2) = 0.074180
    assert r.p == pytest.approx(0.074180, abs=1e-5)
    same = paired_difference({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert (same.mean, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(UserError, match="at least 2 seeds"):
        paired_difference({0: 0.5}, {0: 0.6, 1: 0.7})


def _run(path, seed, accuracy, **fl):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "out": str(path), "fl": {"rounds": 2, **fl}}))
    (path / "metrics.csv").write_text("round,test_accuracy,test_loss\n0,0.1,2.0\n1,%s,1.0\n" % accuracy)
    (path / "run.json").write_text(json.dumps({"state": "complete"}))


def test_the_command_pairs_by_seed_and_says_what_differs(tmp_path, capsys):
    for seed, (a, b) in enumerate([(0.9, 0.85), (0.8, 0.8), (0.95, 0.9)]):
        _run(tmp_path / "study" / f"shared{seed}", seed, a, bn_buffers="shared")
        _run(tmp_path / "study" / f"local{seed}", seed, 0.5, bn_buffers="local")
        _run(tmp_path / "clip" / f"seed{seed}", seed, b, bn_buffers="shared", clip=True)
    main([str(tmp_path / "study" / "*"), str(tmp_path / "clip" / "*"), "--where", "fl.bn_buffers=shared"])
    out = capsys.readouterr().out
    assert "n = 3" in out and "fl.clip: None -> True" in out
    assert "difference -0.033" in out  # (-0.05 + 0 - 0.05) / 3
    code, err = run_entry(main, [str(tmp_path / "study" / "*"), str(tmp_path / "clip" / "*")], capsys)
    assert code == 2 and "seed 0 twice" in err and err.count("\n") == 0
