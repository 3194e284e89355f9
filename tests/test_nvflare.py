"""The federation inside NVIDIA FLARE's simulator (fl.engine=nvflare): the same updates as the
in-process engine, privacy filters and the audit acting on what NVFlare sends, a complete run that
attack.py scores, and an exported job that NVFlare's own simulator command runs."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import run_cli
from common.files import load_tensors
from federation.run_layout import RunLayout

if not os.environ.get("CI"):  # in CI (requirements.txt pins it) a missing NVFlare is a failure, not a skip
    pytest.importorskip("nvflare")

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = [{"images": 8, "batch_size": 4}, {"images": 6, "batch_size": 3}, {"images": 1, "batch_size": 1, "classes": ["face"]}]
CONFIG = {
    "seed": 0,
    "data": {"source": "lfw", "image_size": 16},
    "model": {"name": "bn_convnet", "resize_to": 0, "width": 8, "depth": 3},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "fl": {"rounds": 2, "split": {"clients": CLIENTS}},
    "capture": {"clients": [], "rounds": []},
    "privacy": {"filters": [{"name": "dp_gaussian", "clip_norm": 5.0, "noise_multiplier": 0.001, "noise": "local", "parts": "all"}]},
    # the 1-image client is audited every round and always withheld (threshold far below any RDLV)
    "audit": {"every": 1, "clients": [2], "threshold": -1.0e9, "attack": {"optim.iterations": 3, "optim.restarts": 1, "escalation.enabled": False}},
    "logging": {"wandb": False, "progress": False},
}


def _train(argv):
    import train

    try:
        run_cli(lambda: train.main(argv))
    except SystemExit as info:
        assert info.code == 0, info.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config on both engines; the in-process one with the sites' thread count, so that float
    reductions run in the same order (docs/nvflare.md)."""
    from federation.flare.job import site_threads

    base = tmp_path_factory.mktemp("nvflare")
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    _train(["--config", str(config), "fl.engine=nvflare", "--out", str(base / "nvflare")])
    threads = torch.get_num_threads()
    torch.set_num_threads(site_threads(len(CLIENTS)))
    try:
        _train(["--config", str(config), "--out", str(base / "simulation")])
    finally:
        torch.set_num_threads(threads)
    return base / "nvflare", base / "simulation"


def _metrics(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_nvflare_run_is_complete_and_round_0_updates_equal_the_in_process_engine(runs):
    flare, sim = runs
    assert json.loads((flare / "run.json").read_text())["state"] == "complete"
    assert [(r, c) for r, c, _ in RunLayout(flare).updates()] == [(r, c) for r in range(2) for c in range(3)]
    for client in range(3):
        a = load_tensors(flare / "updates" / "round_0" / f"client_{client}" / "update.safetensors")
        b = load_tensors(sim / "updates" / "round_0" / f"client_{client}" / "update.safetensors")
        assert set(a) == set(b)
        assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= 1e-5, client
    # a fresh Trainer per round and restore_state=False: no optimizer state (momentum) carries over, so round 1
    # agrees too, up to the float order of NVFlare's aggregation (a carried momentum buffer would differ by ~1e-2)
    for client in range(3):
        a = load_tensors(flare / "updates" / "round_1" / f"client_{client}" / "update.safetensors")
        b = load_tensors(sim / "updates" / "round_1" / f"client_{client}" / "update.safetensors")
        assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if k.endswith("weight")) <= 1e-4, client
    # the counters carry the exact local step count (NVFlare's own DIFF of the float global counter is fractional)
    for rnd, client, folder in RunLayout(flare).updates():
        update = load_tensors(folder / "update.safetensors")
        steps = json.loads((folder / "meta.json").read_text())["local_steps"]
        counters = [v for k, v in update.items() if k.endswith("num_batches_tracked")]
        assert counters and all(v.dtype == torch.int64 and int(v) == steps for v in counters), (rnd, client)
    test_images = len(json.loads((flare / "split.json").read_text())["test_indices"])
    for a, b in zip(_metrics(flare), _metrics(sim)):
        assert abs(float(a["test_accuracy"]) - float(b["test_accuracy"])) <= 1 / test_images + 1e-9


def test_filters_act_inside_nvflare_and_the_server_averages_what_was_sent(runs):
    flare, sim = runs
    for rnd in range(2):
        before = load_tensors(RunLayout(flare).global_model(rnd))
        after = load_tensors(RunLayout(flare).global_model(rnd + 1))
        sent = {}
        for client in range(3):
            folder = flare / "updates" / f"round_{rnd}" / f"client_{client}"
            update = load_tensors(folder / "update.safetensors")
            raw = load_tensors(flare / "ground_truth" / f"round_{rnd}" / f"client_{client}" / "update_prefilter.safetensors")
            assert any(not torch.equal(update[k], raw[k]) for k in update if update[k].is_floating_point())  # the filter acted
            effects = json.loads((flare / "ground_truth" / f"round_{rnd}" / f"client_{client}" / "batches.json").read_text())
            expected = json.loads((sim / "ground_truth" / f"round_{rnd}" / f"client_{client}" / "batches.json").read_text())
            assert effects["filter_effects"][0]["epsilon"] == pytest.approx(expected["filter_effects"][0]["epsilon"], rel=1e-12)
            if client != 2:  # client 2 is withheld by the audit
                sent[client] = (update, json.loads((folder / "meta.json").read_text())["local_steps"])
        total = sum(steps for _, steps in sent.values())
        for key, value in before.items():
            if not value.is_floating_point():
                continue
            mean = sum(u[key].double() * steps / total for u, steps in sent.values())
            assert torch.allclose(after[key].double(), value.double() + mean, atol=1e-6), (rnd, key)
    # the accountant lives in the site's filter: after 2 rounds its epsilon is the in-process engine's (checked above) and grew
    eps = [json.loads((flare / "ground_truth" / f"round_{r}" / "client_0" / "batches.json").read_text())["filter_effects"][0]["epsilon"]
           for r in range(2)]
    assert 0 < eps[0] < eps[1]


def test_the_audit_withholds_inside_nvflare(runs):
    flare, _ = runs
    with open(flare / "audit.csv", newline="") as fh:
        audit = list(csv.DictReader(fh))
    assert [(r["round"], r["client"], r["withheld"]) for r in audit] == [("0", "2", "True"), ("1", "2", "True")]
    assert [row["withheld"] for row in _metrics(flare)] == ["2", "2"]


def test_attack_scores_the_nvflare_run(runs, tmp_path):
    import attack

    flare, _ = runs
    out = tmp_path / "attack"
    try:
        run_cli(lambda: attack.main(["--run", str(flare), "--out", str(out), "optim.iterations=5", "optim.restarts=1", "escalation.enabled=false",
                                     "logging.wandb=false", "logging.progress=false", "scoring.lpips=false"]))
    except SystemExit as info:
        assert info.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["update"].endswith("round_1/client_2") and -1 <= metrics["ssim"] <= 1


def test_exported_job_runs_in_nvflare_simulator_command(tmp_path):
    config = tmp_path / "tiny.yaml"
    tree = dict(CONFIG, audit={}, privacy={"filters": [{"name": "gaussian", "sigma0": 1.0}]}, fl=dict(CONFIG["fl"], rounds=1))
    config.write_text(yaml.safe_dump(tree))
    job = tmp_path / "job"
    _train(["--config", str(config), "--export-job", str(job)])
    assert (job / "meta.json").is_file()
    workspace = tmp_path / "workspace"
    env = {"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "nvflare"), "simulator", str(job), "-w", str(workspace), "-n", "3", "-t", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    sites = [tmp_path / "fl_leakage_site"] + sorted(workspace.glob("**/fl_leakage_site"))
    updates = [u for site in sites if site.is_dir() for u in RunLayout(site).updates()]
    assert len(updates) == 3  # every site wrote the update it sent in round 0


def test_resume_is_refused_before_any_work_for_an_engine_that_cannot(tmp_path, capsys):
    from tests.conftest import run_entry
    import train

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    code, err = run_entry(train.main, ["--config", str(config), "fl.engine=nvflare", "--resume", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--resume is for simulation, not fl.engine=nvflare" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("config_b64, message", [("%%% not base64", "--config-b64 is not a base64-encoded JSON train config"),
                                                 ("WzEsIDJd", "--config-b64 is not a train config")])  # base64 of [1, 2]
def test_a_site_with_a_bad_config_says_so_in_one_line(tmp_path, config_b64, message):
    done = subprocess.run([sys.executable, str(ROOT / "flare_site.py"), "--config-b64", config_b64, "--run", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "site").exists()


def test_a_site_name_outside_the_split_is_one_line():
    import flare_site
    from common.errors import UserError

    with pytest.raises(UserError, match="is not site-<k>"):
        flare_site.site_client("hospital", 4)
    with pytest.raises(UserError, match="no client in a split of 4"):
        flare_site.site_client("site-5", 4)


def test_export_job_under_a_file_is_one_line(tmp_path, capsys):
    import train

    (tmp_path / "afile").write_text("mine")
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: train.main(["--config", str(ROOT / "configs" / "convnet.yaml"), "--export-job", str(tmp_path / "afile" / "job")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "afile is a file, not a folder" in err[0], err
    assert (tmp_path / "afile").read_text() == "mine"
