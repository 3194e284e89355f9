"""The leakage audit inside FL: measured per client and round, and a withheld update leaves no trace."""
import csv

import torch

from common.files import load_tensors
from federation.fedavg import client_weights
from federation.federation import Federation
from federation.in_process import InProcessEngine
from pipelines.attack_audit import AttackAudit
from federation.run_layout import RunLayout
from federation.update_store import load_update
from tests.conftest import tiny_train_config


def test_withheld_update_is_absent_from_the_aggregate_and_weights_renormalise(tmp_path):
    cfg = tiny_train_config(tmp_path, **{
        "fl.rounds": 1,
        "audit": {"every": 1, "clients": [2], "threshold": -1.0e9, "attack": {"optim.iterations": 5, "escalation.enabled": False}},
    })
    records = InProcessEngine(Federation(cfg, auditor=AttackAudit)).run(tmp_path)
    assert records[0].withheld == [2]
    audit = list(csv.DictReader(open(tmp_path / "audit.csv")))
    assert len(audit) == 1 and audit[0]["client"] == "2" and audit[0]["withheld"] == "True"
    assert float(audit[0]["rdlv"]) == float(audit[0]["rdlv"])  # a number
    start = load_tensors(RunLayout(tmp_path).global_model(0))
    end = load_tensors(RunLayout(tmp_path).global_model(1))
    updates = {c: load_update(RunLayout(tmp_path).update(0, c)) for c in (0, 1)}
    w = client_weights([u[1]["num_images"] for u in updates.values()], [u[1]["local_steps"] for u in updates.values()], "steps")
    assert abs(sum(w) - 1) < 1e-12 and w == [0.5, 0.5]  # both took 2 steps; client 2's step is not counted
    for key, value in start.items():
        if not value.is_floating_point():
            continue
        expected = value.double() + sum(wi * updates[c][0][key].double() for wi, c in zip(w, (0, 1)))
        assert torch.allclose(end[key].double(), expected, atol=1e-6), key
    # and the withheld client's update was really different: including it would move the model elsewhere
    d2, _ = load_update(RunLayout(tmp_path).update(0, 2))
    assert any(float(d2[k].abs().max()) > 0 for k in d2 if d2[k].is_floating_point())
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[3] == "2"


def test_audit_without_threshold_only_measures(tmp_path):
    cfg = tiny_train_config(tmp_path, **{"fl.rounds": 2, "audit": {"every": 2, "enforce": False, "attack": {"optim.iterations": 3, "escalation.enabled": False}}})
    records = InProcessEngine(Federation(cfg, auditor=AttackAudit)).run(tmp_path)
    assert [len(r.audits) for r in records] == [3, 0]  # round 0 only, all clients
    assert all(not r.withheld for r in records)


def _stalled_audit(tmp_path, **audit):
    """A 1-iteration attack without escalation cannot converge: the audit's verdict is inconclusive."""
    cfg = tiny_train_config(tmp_path, **{"fl.rounds": 1, "audit": {"every": 1, "clients": [2], **audit,
                                                                  "attack": {"optim.iterations": 1, "optim.warmup": 0,
                                                                             "escalation.enabled": False}}})
    records = InProcessEngine(Federation(cfg, auditor=AttackAudit)).run(tmp_path)
    row = list(csv.DictReader(open(tmp_path / "audit.csv")))[0]
    return records[0], row


def test_an_inconclusive_update_is_withheld_by_default(tmp_path):
    record, row = _stalled_audit(tmp_path)
    assert record.audits[0].verdict == "inconclusive" and record.audits[0].converged is False
    assert float(row["ssim"]) < 0.75  # nothing close: only the missing convergence keeps it back
    assert record.withheld == [2] and row["verdict"] == "inconclusive" and row["withheld"] == "True"
    assert float(row["heldout_error"]) > 0.05 and row["rungs"] == "1"


def test_an_inconclusive_update_is_sent_under_the_send_policy(tmp_path):
    record, row = _stalled_audit(tmp_path, inconclusive="send")
    assert record.audits[0].verdict == "inconclusive"
    assert record.withheld == [] and row["withheld"] == "False"


def test_the_audit_policy_table():
    from federation.audit import AuditConfig, withholds

    assert withholds(AuditConfig(), "leaks") and withholds(AuditConfig(), "inconclusive")
    assert not withholds(AuditConfig(), "no leak found")
    assert not withholds(AuditConfig(inconclusive="send"), "inconclusive") and withholds(AuditConfig(inconclusive="send"), "leaks")
    assert not any(withholds(AuditConfig(enforce=False), v) for v in ("leaks", "inconclusive", "no leak found"))


def test_the_audit_runs_the_reidentification_test_over_the_federations_pool(tmp_path):
    """The audit scores against the same pool as attack.py (the run's training pool), so its verdict can fire on
    re-identification; and it records the verdict a server could give from the update alone."""
    record, row = _stalled_audit(tmp_path)
    audit = record.audits[0]
    assert audit.identified in (0, 1)  # client 2 of the tiny split holds one image
    pool = len(Federation(tiny_train_config(tmp_path / "again")).split.train_indices)
    assert float(row["identification_p"]) == (1.0 if audit.identified == 0 else 1 / pool)  # chance 1 / N over the training pool
    assert audit.server_verdict == "inconclusive" and row["server_verdict"] == "inconclusive"
    assert row["leak_tests"] == ("reidentification" if audit.verdict == "leaks" else "")
