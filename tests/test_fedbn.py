"""FedBN (fl.bn_buffers / fl.bn_affine = local): BN entries stay on the client, the update carries the rest,
the attack runs on what is sent and refuses what it cannot have."""
from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from common.files import load_tensors, read_json
from federation.client import evaluate
from federation.federation import Federation
from federation.in_process import InProcessEngine
from federation.run_files import read_metrics
from federation.run_layout import RunLayout
from federation.update_meta import check_meta
from federation.update_store import load_update
from inversion.bn_sources.base import make_bn_source
from pipelines.attack_plan import plan_attack
from tests.conftest import interrupted_then_resumed, tiny_train_config

STATS = ("running_mean", "running_var", "num_batches_tracked")
# a gaussian filter with sigma0 0 changes nothing, but makes the run save the pre-filter update (every entry's delta)
NO_OP_FILTER = [{"name": "gaussian", "sigma0": 0.0}]


@pytest.fixture(scope="module")
def fedbn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedbn") / "run"
    out.mkdir()
    fed = Federation(tiny_train_config(out, **{"fl.bn_buffers": "local", "fl.rounds": 3, "privacy.filters": NO_OP_FILTER}))
    InProcessEngine(fed).run(out)
    return out, fed


def test_the_statistics_never_leave_the_client_and_the_server_never_moves_them(fedbn_run):
    out, fed = fedbn_run
    run = RunLayout(out)
    bn_stats = sorted(k for k in fed.global_model.state_dict() if k.endswith(STATS))
    assert bn_stats and fed.states.keys == bn_stats
    for rnd, client, folder in run.updates():
        update, meta = load_update(folder)
        assert not set(update) & set(bn_stats), (rnd, client)
        assert meta["local_keys"] == bn_stats and set(bn_stats) <= set(meta["withheld_keys"])
        assert any(k.endswith(".weight") for k in update)  # the weights still go
    first, last = load_tensors(run.global_model(0)), load_tensors(run.global_model(3))
    for key in bn_stats:
        assert torch.equal(first[key], last[key]), key
    conv = next(k for k in first if k.endswith(".weight") and first[k].dim() == 4)
    assert not torch.equal(first[conv], last[conv])  # the rest is averaged as before


def test_each_client_trains_on_from_its_own_statistics(fedbn_run):
    """kept after round r = kept after round r-1 + round r's change (red if a client restarted from the server's buffers)."""
    out, fed = fedbn_run
    run = RunLayout(out)
    for client in range(3):
        for rnd in (1, 2):
            before = load_tensors(run.local_state(rnd - 1, client))
            after = load_tensors(run.local_state(rnd, client))
            change = load_tensors(run.ground_truth(rnd, client) / "update_prefilter.safetensors")
            for key in fed.states.keys:
                assert torch.allclose(before[key] + change[key], after[key], rtol=0, atol=1e-6), (client, rnd, key)
        mean = next(k for k in fed.states.keys if k.endswith("running_mean"))
        assert not torch.equal(load_tensors(run.local_state(2, client))[mean], load_tensors(run.global_model(3))[mean])


def test_accuracy_is_the_mean_over_the_clients_models(fedbn_run):
    out, fed = fedbn_run
    run = RunLayout(out)
    rows = read_metrics(run.metrics)
    for rnd in range(3):
        global_state = load_tensors(run.global_model(rnd + 1))
        accs, losses = [], []
        for client in range(3):
            model = fed.global_model
            model.load_state_dict({**global_state, **load_tensors(run.local_state(rnd, client))})
            acc, loss = evaluate(model, fed.test_loader)
            accs.append(acc)
            losses.append(loss)
        assert rows[rnd].test_accuracy == pytest.approx(sum(accs) / 3, abs=1e-12)
        assert rows[rnd].test_loss == pytest.approx(sum(losses) / 3, rel=1e-9)
    fed.global_model.load_state_dict(load_tensors(run.global_model(3)))
    alone, _ = evaluate(fed.global_model, fed.test_loader)  # the server's model with its initial statistics: not what is reported
    assert isinstance(alone, float)


def test_a_resumed_fedbn_run_ends_where_an_uninterrupted_one_does(fedbn_run, tmp_path, monkeypatch):
    out, _ = fedbn_run
    cut = tmp_path / "cut"
    cut.mkdir()
    interrupted_then_resumed(tiny_train_config(cut, **{"fl.bn_buffers": "local", "fl.rounds": 3, "privacy.filters": NO_OP_FILTER}), 1,
                             monkeypatch)
    a, b = RunLayout(out), RunLayout(cut)
    for path_of in (lambda r: r.global_model(3), lambda r: r.local_state(2, 0), lambda r: r.local_state(2, 2)):
        x, y = load_tensors(path_of(a)), load_tensors(path_of(b))
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert [r.test_accuracy for r in read_metrics(a.metrics)] == [r.test_accuracy for r in read_metrics(b.metrics)]


def test_fedbn_full_keeps_the_bn_weights_too_and_the_attack_says_its_replay_uses_the_servers(tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    fed = Federation(tiny_train_config(out, **{"fl.bn_buffers": "local", "fl.bn_affine": "local", "fl.rounds": 1}))
    InProcessEngine(fed).run(out)
    bn_weights = [k for k in fed.states.keys if not k.endswith(STATS)]
    assert bn_weights and all(k.endswith((".weight", ".bias")) for k in bn_weights)
    update, meta = load_update(RunLayout(out).update(0, 2))
    assert not set(update) & set(fed.states.keys)
    report = plan_attack(update=RunLayout(out).update(0, 2), out=tmp_path / "attack", overrides={
        "optim.iterations": 3, "optim.restarts": 1, "optim.grid": {}, "escalation.enabled": False, "logging.wandb": False,
        "logging.progress": False, "scoring.lpips": False, "optim.compile": False}).run()
    assert report.metrics["bn_source"] == "none"
    assert report.metrics["threat_model"]["kept_on_client"] == fed.states.keys
    assert "the client keeps" in capsys.readouterr().err


def test_the_bn_sources_refuse_what_a_fedbn_update_does_not_hold(fedbn_run):
    out, fed = fedbn_run
    update, meta = load_update(RunLayout(out).update(2, 2))
    state = load_tensors(RunLayout(out).global_model(2))
    names = sorted({k.rsplit(".", 1)[0] for k in fed.states.keys})
    assert make_bn_source("auto", names, state, update, 0.1, 1, local_keys=meta["local_keys"]).name == "none"
    with pytest.raises(UserError, match="withholds"):
        make_bn_source("multi_step", names, state, update, 0.1, 1, local_keys=meta["local_keys"])
    with pytest.raises(UserError, match="the client keeps its own"):
        make_bn_source("global", names, state, update, 0.1, 1, local_keys=meta["local_keys"])
    assert make_bn_source("global", names, state, update, 0.1, 1).name == "global"  # buffers shared: the eval-mode assumption


def test_the_metadata_refuses_a_kept_entry_that_was_sent(fedbn_run):
    out, _ = fedbn_run
    _, meta = load_update(RunLayout(out).update(0, 2))
    bad = dict(meta, withheld_keys=meta["withheld_keys"][1:])
    with pytest.raises(UserError, match="which withheld_keys does not list"):
        check_meta(bad, "meta.json")
    assert read_json(RunLayout(out).update(0, 2) / "meta.json")["local_keys"] == meta["local_keys"]


def test_fedbn_on_nvflare_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="simulation only"):
        Federation(tiny_train_config(tmp_path, **{"fl.bn_buffers": "local", "fl.engine": "nvflare"}))


def test_an_update_without_bn_statistics_is_attacked_by_update_matching_everywhere(fedbn_run, tmp_path):
    """The default attack's only signal is the BN prior from the buffers: for a FedBN update attack.py, the audit and a
    study cell all choose batch.yaml (update matching through the replayed steps), for the 1-image client too."""
    from common.config_loader import to_dict
    from federation.audit import AuditConfig
    from pipelines.attack_audit import AttackAudit
    from pipelines.attack_plan import BATCH_FILE, attack_config

    out, _ = fedbn_run
    update = RunLayout(out).update(2, 2)
    _, meta = load_update(update)
    assert meta["num_images"] == 1
    plan = plan_attack(update=update, overrides={"optim.compile": False})
    assert plan.batch and plan.buffers_withheld and "withholds the BN running statistics" in plan.describe()
    assert plan.config.objective["update_matching"]["weight"] > 0
    audit = AttackAudit(AuditConfig(every=1), num_clients=3)
    from_audit = audit.attack_config(1, True)
    assert from_audit.objective == plan.config.objective and from_audit.optim.restarts == plan.config.optim.restarts
    assert audit.attack_config(1, False).objective["update_matching"]["weight"] == 0  # buffers sent: the default attack
    from_study = attack_config("", [], num_images=1, buffers_withheld=True)
    assert to_dict(from_study.objective) == to_dict(plan.config.objective)
    assert BATCH_FILE.is_file()
