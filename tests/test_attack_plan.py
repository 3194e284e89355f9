"""The one attack builder (pipelines/attack_plan.py): one set of defaults, and the same config for the same update
whether attack.py, the FL audit or a study cell attacks it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.config_loader import build, load, to_dict
from federation.audit import AuditConfig
from federation.train_config import TrainConfig
from inversion.attack_config import AttackConfig
from pipelines.attack_plan import BATCH_FILE, DEFAULT_FILE, attack_config, plan_attack

SAME = {"optim.seed": 0, "optim.iterations": 7, "logging.wandb": False, "logging.progress": False, "scoring.lpips": False}


def _attack_config_of_attack_py(argv: list[str], monkeypatch) -> AttackConfig:
    """The config attack.py hands to the attack job (the job itself is not run)."""
    import attack
    import pipelines.attack_job as job

    seen: list[AttackConfig] = []

    def capture(cfg, resume=False, overwrite=False):
        seen.append(cfg)
        return {"out": Path(cfg.out or "."), "metrics": {}, "result": None}  # as a DDP worker returns: attack.py prints nothing

    monkeypatch.setattr(job, "run_attack_job", capture)
    attack.main(argv)
    (cfg,) = seen
    return cfg


def _comparable(cfg: AttackConfig) -> dict:
    """Everything but where it reads and writes (the audit attacks an update in memory)."""
    return to_dict(dataclasses.replace(cfg, update="", out=""))


def test_the_default_files_restate_the_class_defaults_exactly():
    """One set of defaults: building a config directly (as tests and the audit's fallback did) or loading the default
    YAML (as the command line does) gives the same attack and the same training."""
    assert to_dict(load(AttackConfig, [DEFAULT_FILE], [])) == to_dict(AttackConfig())
    assert to_dict(load(TrainConfig, [TrainConfig.DEFAULT_FILE], [])) == to_dict(TrainConfig())
    assert to_dict(build(AttackConfig, {})) == to_dict(AttackConfig())


@pytest.mark.parametrize("client,images", [(2, 1), (0, 8)])
def test_attack_py_the_audit_and_a_study_cell_build_the_same_config(tiny_run, tmp_path, monkeypatch, client, images):
    from pipelines.attack_audit import AttackAudit
    from studies.runner import StudyRunner
    from studies.spec import StudySpec, cells

    update = tiny_run / "updates" / "round_1" / f"client_{client}"
    argv = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SAME.items()]
    from_cli = _attack_config_of_attack_py([*argv, "--update", str(update), "--out", str(tmp_path / "a")], monkeypatch)
    audit = AttackAudit(AuditConfig(every=1, attack=dict(SAME)), num_clients=3).attack_config(images)
    spec = build(StudySpec, {"name": "same", "out": str(tmp_path / "study"), "seeds": [0],
                             "attack": {"overrides": {k: v for k, v in SAME.items() if k != "optim.seed"}}})
    runner = StudyRunner(spec, progress=False)
    study = runner.attack_config(cells(spec)[0], update, tmp_path / "cell")
    assert from_cli.update == study.update == str(update)
    assert _comparable(from_cli) == _comparable(audit) == _comparable(study)
    batch_weight = load(AttackConfig, [DEFAULT_FILE, BATCH_FILE], []).objective["update_matching"]["weight"]
    assert from_cli.objective["update_matching"]["weight"] == (batch_weight if images > 1 else 0.0)
    assert from_cli.optim.restarts == (2 if images > 1 else 4)  # batch.yaml's 2 restarts; the default's 4 (one per TV weight)


def test_a_named_config_turns_the_automatic_choice_off():
    single = attack_config(DEFAULT_FILE, num_images=8)
    assert to_dict(single) == to_dict(attack_config(None, num_images=1)) == to_dict(AttackConfig())
    assert to_dict(attack_config(None, num_images=8)) == to_dict(load(AttackConfig, [DEFAULT_FILE, BATCH_FILE], []))
    assert attack_config("configs/attack/multistep.yaml", num_images=8).objective["update_matching"]["weight"] == \
        load(AttackConfig, [DEFAULT_FILE, DEFAULT_FILE.parent / "multistep.yaml"], []).objective["update_matching"]["weight"]


def test_the_plan_reads_the_update_and_says_why_it_chose_the_batch_attack(tiny_run):
    plan = plan_attack(update=tiny_run / "updates" / "round_1" / "client_0", overrides={"optim.compile": False})
    assert plan.num_images == 8 and plan.batch and not plan.config.optim.compile
    assert "had 8 images: attacking with configs/attack/batch.yaml" in plan.describe()
    one = plan_attack(run=tiny_run)  # no update named: the run's high-risk client (1 image), as attack.py
    assert one.update.name == "client_2" and one.num_images == 1 and not one.batch and one.describe() == ""
    assert plan_attack(DEFAULT_FILE, update=plan.update).batch is False


def test_the_audit_attacks_a_multi_image_client_with_the_multi_image_config(monkeypatch):
    """Not only its helper: the auditor's run() attacks with the config for the client's image count."""
    import pipelines.attack_audit as audit_module

    used: list[AttackConfig] = []

    class Stop(Exception):
        pass

    def capture(knowledge, cfg, *args, **kwargs):
        used.append(cfg)
        raise Stop

    monkeypatch.setattr(audit_module, "attack_until_converged", capture)
    monkeypatch.setattr(audit_module, "AttackerKnowledge", lambda *a, **k: None)
    auditor = audit_module.AttackAudit(AuditConfig(every=1), num_clients=3)
    for images in (8, 1):
        with pytest.raises(Stop):
            auditor.run(0, 0, None, {}, {}, {"num_images": images}, None, None, None)
    assert used[0].objective["update_matching"]["weight"] > 0 and used[0].optim.restarts == 2
    assert used[1].objective["update_matching"]["weight"] == 0 and used[1].optim.restarts == 4


def test_a_bad_override_fails_when_the_audit_is_built():
    from common.errors import UserError
    from pipelines.attack_audit import AttackAudit

    with pytest.raises(UserError, match="optim.lr"):
        AttackAudit(AuditConfig(every=1, attack={"optim.lr": -1}), num_clients=3)


def test_choices_are_checked_by_the_one_validator_with_their_allowed_values():
    """Literal fields, not hand-written lists: the schema's validator names the key and the allowed values."""
    from common.errors import UserError
    from privacy.base import make_filter

    with pytest.raises(UserError, match=r"'privacy.filters.0.calibration' must be one of \['pooled', 'per_tensor'\], got 'bogus'"):
        make_filter({"name": "gaussian", "calibration": "bogus"}, "privacy.filters.0")
    with pytest.raises(UserError, match=r"'optim.memory_format' must be one of \['auto', 'channels_last', 'contiguous'\]"):
        attack_config(None, ["optim.memory_format=weird"])
