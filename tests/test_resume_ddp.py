"""Resumable long runs (kill -9, then --resume ends exactly like an uninterrupted run) and DDP restarts."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.files import load_tensors
from tests.conftest import ROOT

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TINY_TRAIN = ["data.image_size=16", "model.name=bn_convnet", "model.resize_to=0", "model.width=8", "model.depth=3",
              "logging.wandb=false", "logging.progress=false", "capture.clients=[2]", "capture.rounds=[-1]"]


def _run(args, timeout=300):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_when(args, ready, timeout=120):
    """Start a command, SIGKILL it as soon as ``ready()`` is true; False if it finished first."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                return False
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
    raise AssertionError("the command never reached the kill point")


def test_train_killed_mid_run_resumes_to_the_same_final_model(tmp_path):
    args = ["train.py", *TINY_TRAIN, "fl.rounds=6", "privacy.filters=[{name: gaussian, sigma0: 1.0}]"]
    _run(args + ["--out", str(tmp_path / "full")])
    killed = tmp_path / "killed"
    metrics = tmp_path / "killed.partial" / "metrics.csv"
    assert _kill_when(args + ["--out", str(killed)], lambda: metrics.is_file() and metrics.read_text().count("\n") >= 3)
    assert not killed.exists()
    rows_at_kill = metrics.read_text().count("\n") - 1
    assert 2 <= rows_at_kill < 6
    _run(args + ["--out", str(killed), "--resume"])
    info = json.loads((killed / "run.json").read_text())
    assert info["resumed_at_round"] >= 2
    a = load_tensors(tmp_path / "full" / "global" / "round_6.safetensors")
    b = load_tensors(killed / "global" / "round_6.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (killed / "metrics.csv").read_text() .count("\n") == 7  # header + 6 rounds, none twice


@pytest.fixture(scope="module")
def tiny_cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    _run(["train.py", *TINY_TRAIN, "fl.rounds=2", "--out", str(out)])
    return out


def test_attack_killed_mid_run_resumes_to_the_same_result(tiny_cli_run, tmp_path):
    # the default (single-image) attack named: the run's captured client has 8 images, which would pick batch.yaml
    args = ["attack.py", "--config", "configs/attack/default.yaml", "--run", str(tiny_cli_run), "optim.iterations=400", "optim.checkpoint_every=25", "escalation.enabled=false", "optim.langevin=0.01",
            "optim.restarts=2", "logging.wandb=false", "logging.progress=false"]
    _run(args + ["--out", str(tmp_path / "full")])
    ckpt = tmp_path / "killed.partial" / "checkpoints" / "last.ckpt"
    assert _kill_when(args + ["--out", str(tmp_path / "killed")], lambda: ckpt.is_file())
    assert not (tmp_path / "killed").exists()
    _run(args + ["--out", str(tmp_path / "killed"), "--resume"])
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["resumed"] and not a["resumed"]
    assert (a["objective"], a["restart"], a["iterations"]) == (b["objective"], b["restart"], b["iterations"])
    ra = load_tensors(tmp_path / "full" / "reconstruction.safetensors")
    rb = load_tensors(tmp_path / "killed" / "reconstruction.safetensors")
    assert torch.equal(ra["restart_images"], rb["restart_images"])
    assert not (tmp_path / "killed" / "checkpoints").exists()


def test_ddp_restarts_on_two_gloo_processes_equal_one_process(tiny_cli_run, tmp_path):
    args = ["attack.py", "--config", "configs/attack/default.yaml", "--run", str(tiny_cli_run), "optim.iterations=30", "optim.restarts=4", "escalation.enabled=false", "logging.wandb=false", "logging.progress=false"]
    _run(args + ["devices=2", "--out", str(tmp_path / "ddp")])
    _run(args + ["devices=1", "--out", str(tmp_path / "one")])
    a = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    b = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert a["devices"] == 2 and b["devices"] == 1
    assert a["restart"] == b["restart"]
    assert a["objective"] == pytest.approx(b["objective"], rel=1e-5)
    ra = load_tensors(tmp_path / "ddp" / "reconstruction.safetensors")
    rb = load_tensors(tmp_path / "one" / "reconstruction.safetensors")
    assert torch.allclose(ra["restart_images"], rb["restart_images"], atol=1e-5)  # every restart, not only the best
    assert torch.allclose(ra["images"], rb["images"], atol=1e-5)


def test_a_term_that_couples_restarts_is_refused_across_processes():
    """group_consistency compares restarts; DDP gives each process only its own: refused, not silently weakened."""
    from common.config_loader import build
    from common.errors import UserError
    from inversion.attack_config import AttackConfig
    from pipelines.attack_setup import make_trainer

    cfg = build(AttackConfig, {"devices": 2, "objective": {"bn_statistics": {"weight": 1.0}, "group_consistency": {"weight": 0.1}}})
    with pytest.raises(UserError, match="group_consistency couples the restarts"):
        make_trainer(cfg)
    cfg.objective["group_consistency"]["weight"] = 0.0
    assert make_trainer(cfg) is not None


def test_a_ctrl_c_swallowed_by_a_destructor_still_stops_training(tmp_path):
    """A KeyboardInterrupt raised inside __del__ (Lightning's Profiler) is only printed; the flag raises it later."""
    import gc

    from common import interrupt
    from federation.federation import Federation
    from federation.in_process import InProcessEngine
    from tests.conftest import tiny_train_config

    old = signal.getsignal(signal.SIGINT)
    try:
        interrupt.install()

        class Profiler:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the handler runs here, inside __del__: "Exception ignored ... KeyboardInterrupt"

        Profiler()
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.check()  # raised once, then cleared
        # the federation checks between clients: a swallowed Ctrl-C during client 0 stops the run before client 1
        fed = Federation(tiny_train_config(tmp_path / "run", **{"fl.rounds": 2}))
        trained = []
        real = fed.train_client

        def train_and_swallow(rnd, client, *args, **kwargs):
            trained.append((rnd, client))
            out = real(rnd, client, *args, **kwargs)
            interrupt._pending = True  # as _on_sigint leaves it when its KeyboardInterrupt was swallowed
            return out

        fed.train_client = train_and_swallow
        with pytest.raises(KeyboardInterrupt):
            InProcessEngine(fed).run(None)
        assert trained == [(0, 0)]
    finally:
        signal.signal(signal.SIGINT, old)
        interrupt._pending = False
