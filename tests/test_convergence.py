"""Convergence without ground truth, the escalation ladder, and the three verdicts (issue 21)."""
import json
import math
from types import SimpleNamespace

import pytest

from common.config_loader import build
from common.errors import UserError
from inversion.attack_config import AttackConfig
from inversion.convergence import ConvergenceConfig, judge
from inversion.escalation import EscalationConfig, Rung, rung_config, rungs
from leakage.verdict import INCONCLUSIVE, LEAKS, NO_LEAK, leaked_images, verdict
from pipelines.escalation_runner import attack_until_converged

# ----------------------------------------------------------------------------- the rule


def test_converged_when_the_held_out_error_per_layer_is_within_the_threshold():
    cfg = ConvergenceConfig(heldout_error=0.05)
    # 5 held-out layers: 0.2 in all is 0.04 per layer (converged), 0.3 is 0.06 (not); 0.25 is exactly the threshold
    assert judge(0.2, 5, 1.0, cfg).converged is True
    assert judge(0.3, 5, 1.0, cfg).converged is False
    at = judge(0.25, 5, 1.0, cfg)
    assert at.converged is True and at.heldout_error == pytest.approx(0.05)
    # the per-layer division: 0.2 over a single held-out layer is 0.2 > 0.05
    one = judge(0.2, 1, 1.0, cfg)
    assert one.converged is False and one.heldout_error == pytest.approx(0.2)
    assert "stalled" in one.reason and "0.2" in one.reason


def test_no_signal_is_never_converged():
    cfg = ConvergenceConfig()
    assert judge(None, 0, 1.0, cfg).converged is None  # no held-out layer
    assert judge(0.0, 5, 1.0, cfg, normalized=False).converged is None  # no common scale
    diverged = judge(math.inf, 5, 1.0, cfg)
    assert diverged.converged is False and diverged.heldout_error == math.inf

    # held-out channel groups choose restarts but never judge, however small their error
    groups = judge(0.0, 3, 1.0, cfg, unit="channel")
    assert groups.converged is None and groups.heldout_error == 0.0 and "channel groups" in groups.reason


# ----------------------------------------------------------------------------- verdicts


def test_three_verdicts():
    # any matched image at or above the leak SSIM leaks, converged or not
    assert verdict([0.1, 0.8], 0.0, False, 0.75) == LEAKS
    assert verdict([0.75], 0.0, None, 0.75) == LEAKS
    assert verdict([0.74], 0.0, True, 0.75) == NO_LEAK
    # nothing close and not converged (or not judged): never "no leak found"
    assert verdict([0.74], 0.0, False, 0.75) == INCONCLUSIVE
    assert verdict([0.74], 0.0, None, 0.75) == INCONCLUSIVE
    # the RDLV threshold is a second way to leak
    assert verdict([0.1], 1.5, False, 0.75, leak_rdlv=1.0) == LEAKS
    assert verdict([0.1], 0.5, True, 0.75, leak_rdlv=1.0) == NO_LEAK
    assert leaked_images([0.9, None, 0.76, 0.2, math.nan], 0.75) == 2


# ----------------------------------------------------------------------------- the ladder

BASE = {"optim": {"iterations": 800, "lr": 0.1, "restarts": 4}}


def _cfg(**escalation) -> AttackConfig:
    return build(AttackConfig, {**BASE, "escalation": escalation})


class FakeAttacks:
    """run/build stand-ins: each rung's held-out mismatch (5 layers) is a function of its config, so the test sees
    which settings every rung really ran with."""

    def __init__(self, heldout):
        self.heldout = heldout  # cfg -> held-out mismatch (or an exception)
        self.ran: list[AttackConfig] = []
        self.stops: list = []  # the Trainer's max_time of each rung (None: no stop)

    def build(self, knowledge, cfg):
        return SimpleNamespace(objective=SimpleNamespace(heldout_layers=5, bn_normalized=True, heldout_unit="layer"), cfg=cfg)

    def run(self, knowledge, cfg, logger=False, callbacks=None, ckpt_path=None, attack=None, **trainer):
        self.ran.append(cfg)
        self.stops.append(trainer.get("max_time"))
        value = self.heldout(cfg)
        if isinstance(value, Exception):
            raise value
        result = SimpleNamespace(restart=0, restart_heldout={0: value}, restart_heldout_start={0: 10.0}, objective=value,
                                 seconds=1.0, iterations=cfg.optim.iterations, restart_settings={0: {}}, images=None)
        return result, attack


def _climb(fake, cfg):
    return attack_until_converged(None, cfg, fake.run, fake.build)


def test_the_ladder_runs_every_rung_in_order_with_its_own_settings_until_one_converges():
    # only update matching converges (0.1 / 5 = 0.02): all four rungs must run, in order
    fake = FakeAttacks(lambda c: 0.1 if c.objective["update_matching"]["weight"] == 1.0 else 3.0)
    out = _climb(fake, _cfg())
    assert [r["name"] for r in out.records] == ["configured", "larger_step", "longer", "update_matching"]
    assert [c.optim.lr for c in fake.ran] == [0.1, 0.3, 0.1, 0.1]  # rungs do not accumulate
    assert [c.optim.iterations for c in fake.ran] == [800, 800, 2000, 800]  # "x2.5" of the configured 800
    assert fake.ran[2].optim.restarts == 6 and fake.ran[2].optim.grid == {"total_variation": [0.01, 0.03, 0.1], "lr": [0.1, 0.3]}
    assert out.rung == 3 and out.convergence.converged is True and out.stopped == "converged"
    assert out.records[-1]["heldout_error"] == pytest.approx(0.02)


def test_the_ladder_stops_at_the_first_converged_rung():
    fake = FakeAttacks(lambda c: 0.1 if c.optim.lr == 0.3 else 3.0)  # the larger step converges
    out = _climb(fake, _cfg())
    assert len(fake.ran) == 2 and out.rung == 1 and out.stopped == "converged"
    fake = FakeAttacks(lambda c: 0.1)  # the configured attack converges: nothing else runs
    out = _climb(fake, _cfg())
    assert len(fake.ran) == 1 and out.rung == 0


def test_without_convergence_the_best_held_out_rung_is_returned_and_the_ladder_is_exhausted():
    held = {0.1: 3.0, 0.3: 1.0}
    fake = FakeAttacks(lambda c: 2.0 if c.optim.iterations == 2000 else (5.0 if c.objective["update_matching"]["weight"] else held[c.optim.lr]))
    out = _climb(fake, _cfg())
    assert len(fake.ran) == 4 and out.stopped == "ladder exhausted"
    assert out.rung == 1 and out.convergence.converged is False  # 1.0 is the lowest held-out mismatch


def test_escalation_off_runs_the_configured_attack_only():
    fake = FakeAttacks(lambda c: 3.0)
    out = _climb(fake, _cfg(enabled=False))
    assert len(fake.ran) == 1 and out.stopped == "escalation off" and out.convergence.converged is False


def test_a_failed_rung_is_recorded_and_the_ladder_goes_on():
    fake = FakeAttacks(lambda c: UserError("every restart diverged") if c.optim.lr == 0.3 else (0.1 if c.optim.iterations == 2000 else 3.0))
    out = _climb(fake, _cfg())
    assert [r.get("error") for r in out.records] == [None, "every restart diverged", None]
    assert out.rung == 2 and out.results[1] is None
    with pytest.raises(UserError, match="every rung"):
        _climb(FakeAttacks(lambda c: UserError("diverged")), _cfg())


def test_the_budget_stops_the_ladder_and_caps_each_rung():
    import time

    def slow(c):
        time.sleep(0.6)
        return 3.0
    fake = FakeAttacks(slow)
    out = _climb(fake, _cfg(max_seconds=1.8))
    assert out.stopped == "budget spent" and 2 <= len(fake.ran) <= 3
    # a rung gets what is left as a stop; its lr schedule still follows its iterations alone (optim.max_seconds 0)
    assert fake.stops[0] is None and all(0 < s.total_seconds() <= 1.8 for s in fake.stops[1:])
    assert all(c.optim.max_seconds == 0 for c in fake.ran)
    # an attack with a time budget of its own (its schedule follows it) gets at most what is left, as its budget
    own = FakeAttacks(slow)
    _climb(own, build(AttackConfig, {**BASE, "optim": {**BASE["optim"], "max_seconds": 100.0}, "escalation": {"max_seconds": 1.8}}))
    assert own.ran[0].optim.max_seconds == 100.0 and all(0 < c.optim.max_seconds <= 1.8 for c in own.ran[1:])
    assert all(s is None for s in own.stops)


def test_a_rung_config_scales_and_refuses():
    cfg = _cfg()
    assert rung_config(cfg, Rung(1, "r", {"optim.iterations": "x0.5", "optim.lr": "x3"}), None).optim.iterations == 400
    assert rung_config(cfg, Rung(1, "r", {"optim.lr": "x3"}), None).optim.lr == pytest.approx(0.3)
    with pytest.raises(UserError, match="neither a value nor xFACTOR"):
        rung_config(cfg, Rung(1, "r", {"optim.iterations": "xx"}), None)
    with pytest.raises(UserError, match="may not change"):
        rung_config(cfg, Rung(1, "r", {"escalation.enabled": False}), None)
    with pytest.raises(UserError, match="must be"):
        rungs(EscalationConfig(ladder=[{"overrides": {}, "typo": 1}]))


# ----------------------------------------------------------------------------- end to end


def test_a_stalled_attack_is_inconclusive_in_metrics_json_and_on_the_console(tiny_run, tmp_path, capsys):
    import attack

    out = tmp_path / "attack"
    attack.main(["--run", str(tiny_run), "--out", str(out), "--no-escalation", "optim.iterations=1", "optim.warmup=0",
                 "logging.wandb=false", "logging.progress=false", "scoring.lpips=false"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["converged"] is False and m["verdict"] == INCONCLUSIVE and m["leaked_images"] == 0
    conv = m["convergence"]
    assert conv["heldout_error"] > conv["threshold"] == 0.05 and conv["heldout_layers"] >= 1
    assert conv["heldout_error"] == pytest.approx(conv["heldout_mismatch"] / conv["heldout_layers"])
    assert m["escalation"]["stopped"] == "escalation off" and len(m["escalation"]["rungs"]) == 1
    assert "ssim" in m["escalation"]["rungs"][0]  # scored afterwards, for the record
    assert m["server_verdict"] == "inconclusive" and m["risk_heldout_error"] == conv["heldout_error"]
    assert m["leak_tests"] == [] and m["verdict_reason"].startswith("not converged") and "identified" in m["verdict_reason"]
    assert m["reidentification"]["pool"] == m["population_size"] and m["identification_p"] == m["reidentification"]["p_value"]
    printed = capsys.readouterr().out
    assert "verdict: inconclusive" in printed and "did not converge" in printed
    assert "server verdict (update alone): inconclusive" in printed


def test_an_escalated_attack_records_every_rung(tiny_run, tmp_path):
    import attack

    out = tmp_path / "attack"
    ladder = '[{name: a, overrides: {optim.lr: 0.2}}, {name: b, overrides: {optim.iterations: x2}}]'
    attack.main(["--run", str(tiny_run), "--out", str(out), "optim.iterations=2", "optim.warmup=0", f"escalation.ladder={ladder}",
                 "convergence.heldout_error=1.0e-9", "logging.wandb=false", "logging.progress=false", "scoring.lpips=false"])
    m = json.loads((out / "metrics.json").read_text())
    rungs_run = m["escalation"]["rungs"]
    assert [r["name"] for r in rungs_run] == ["configured", "a", "b"] and [r["iterations"] for r in rungs_run] == [2, 2, 4]
    assert m["escalation"]["stopped"] == "ladder exhausted"
    best = min(range(3), key=lambda i: rungs_run[i]["heldout_error"])
    assert m["escalation"]["returned_rung"] == best and m["iterations"] == rungs_run[best]["iterations"]
    assert m["seconds"] == pytest.approx(sum(r["seconds"] for r in rungs_run), abs=0.01)
    assert all(-1 <= r["ssim"] <= 1 for r in rungs_run) and rungs_run[best]["ssim"] == m["ssim"]  # every rung scored, for the record


def test_held_out_channel_groups_choose_restarts_but_leave_the_attack_inconclusive(tiny_run, tmp_path):
    """holdout_unit: channel on the 3-BN tiny ConvNet: one group of every layer is held out, and however
    well it is matched (a threshold of 1e9 would accept anything) the attack is not called converged."""
    import attack

    out = tmp_path / "attack"
    attack.main(["--run", str(tiny_run), "--out", str(out), "--no-escalation", "optim.iterations=2", "optim.warmup=0",
                 "objective.bn_statistics.holdout_unit=channel", "convergence.heldout_error=1000000000.0",
                 "logging.wandb=false", "logging.progress=false", "scoring.lpips=false"])
    m = json.loads((out / "metrics.json").read_text())
    conv = m["convergence"]
    assert conv["heldout_unit"] == "channel" and conv["heldout_layers"] == 3  # one group (of 4) per BN layer
    assert m["converged"] is None and m["verdict"] == INCONCLUSIVE and conv["heldout_error"] < 1e9
    layer = tmp_path / "layer"
    attack.main(["--run", str(tiny_run), "--out", str(layer), "--no-escalation", "optim.iterations=2", "optim.warmup=0",
                 "convergence.heldout_error=1000000000.0", "logging.wandb=false", "logging.progress=false", "scoring.lpips=false"])
    m = json.loads((layer / "metrics.json").read_text())
    assert m["convergence"]["heldout_unit"] == "layer" and m["convergence"]["heldout_layers"] == 1 and m["converged"] is True
