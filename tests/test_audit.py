"""The leakage audit inside FL: measured per client and round, and a withheld update leaves no trace."""
import csv

import torch

from common.files import load_tensors
from federation.fedavg import client_weights
from federation.simulation import FederatedSimulation
from pipelines.audit import AttackAudit
from federation.run_layout import RunLayout
from federation.update_store import load_update
from tests.conftest import tiny_train_config


def test_withheld_update_is_absent_from_the_aggregate_and_weights_renormalise(tmp_path):
    cfg = tiny_train_config(tmp_path, **{
        "fl.rounds": 1,
        "audit": {"every": 1, "clients": [2], "threshold": -1.0e9, "attack": {"optim.iterations": 5}},
    })
    records = FederatedSimulation(cfg, auditor=AttackAudit).run(tmp_path)
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
    cfg = tiny_train_config(tmp_path, **{"fl.rounds": 2, "audit": {"every": 2, "attack": {"optim.iterations": 3}}})
    records = FederatedSimulation(cfg, auditor=AttackAudit).run(tmp_path)
    assert [len(r.audits) for r in records] == [3, 0]  # round 0 only, all clients
    assert all(not r.withheld for r in records)
