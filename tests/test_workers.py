"""FL clients spread over worker processes end where the single-process federation ends."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import UserError
from common.files import load_tensors
from federation.federation import Federation
from federation.in_process import InProcessEngine
from federation.run_layout import RunLayout
from tests.conftest import tiny_train_config


def _run(out: Path, **extra) -> list:
    out.mkdir()
    cfg = tiny_train_config(out, **extra)
    return InProcessEngine(Federation(cfg)).run(out)


def test_two_cpu_workers_give_the_single_process_federation(tmp_path):
    filters = [{"name": "dp_gaussian", "clip_norm": 1.0, "noise_multiplier": 0.01, "delta": 1e-5, "noise": "local"}]
    one = _run(tmp_path / "one", **{"privacy.filters": filters})
    two = _run(tmp_path / "two", **{"fl.workers": 2, "privacy.filters": filters})
    assert [r.test_accuracy for r in one] == pytest.approx([r.test_accuracy for r in two])
    for rnd in range(len(one) + 1):
        a = load_tensors(RunLayout(tmp_path / "one").global_model(rnd))
        b = load_tensors(RunLayout(tmp_path / "two").global_model(rnd))
        assert a.keys() == b.keys()
        for k in a:  # threads differ (2 here, 1 per worker): float summation order only
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the DP accountants lived in the workers: the same epsilon per client, round after round
    for rec_one, rec_two in zip(one, two):
        for c in rec_one.results:
            eff_one = [e["epsilon"] for e in rec_one.results[c].filter_effects if "epsilon" in e]
            eff_two = [e["epsilon"] for e in rec_two.results[c].filter_effects if "epsilon" in e]
            assert eff_one == pytest.approx(eff_two) and eff_one
    # every update was captured by the worker that trained it
    assert sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "updates").rglob("update.safetensors")) == \
        sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two" / "updates").rglob("update.safetensors"))


def test_negative_workers_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fl.workers"):
        Federation(tiny_train_config(tmp_path, **{"fl.workers": -1}))


def test_fedbn_clients_in_workers_keep_their_statistics_and_the_parent_evaluates_with_them(tmp_path):
    """The kept BN entries come back from the workers (the parent evaluates each client's model with them) and
    go out again with the next round's job (a resumed run's parent read them from disk)."""
    fedbn = {"fl.bn_buffers": "local", "fl.rounds": 2}
    one = _run(tmp_path / "one", **fedbn)
    two = _run(tmp_path / "two", **fedbn, **{"fl.workers": 2})
    assert [r.test_accuracy for r in one] == pytest.approx([r.test_accuracy for r in two])
    for client in range(3):
        a = load_tensors(RunLayout(tmp_path / "one").local_state(1, client))
        b = load_tensors(RunLayout(tmp_path / "two").local_state(1, client))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
