"""study.py --executor ray: the tiny study through a local 2-worker Ray instance gives the local executor's
tables, a re-run starts no task, and a worker killed mid-cell is retried (issue 24).

Ray is a pinned requirement: these tests fail, not skip, when it is missing."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401 - a missing Ray is a failure here, not a skip
import torch

from common.config_loader import dump_yaml
from studies.executors import REGISTRY as EXECUTORS, ExecutorOptions
from studies.runner import StudyRunner
from tests.test_studies import ROOT, tiny_quick

TIMING = "attack_seconds"  # the one column two executions cannot share


def _spec(out: Path, iterations: int = 5, climb: bool = False):
    spec = tiny_quick(ROOT / "configs" / "studies" / "sigma0.yaml", out)
    spec.attack.overrides = {**spec.attack.overrides, "optim.iterations": iterations}
    if climb:  # nothing converges at a held-out error of 1e-12: every escalation rung runs, and each must match across executors
        spec.attack.overrides.update({"escalation.enabled": True, "convergence.heldout_error": 1e-12})
    return spec


def _local(spec) -> Path:
    """The reference: the local executor, with the one torch thread a Ray cell gets (resources.cpus: 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return StudyRunner(spec, progress=False).run()
    finally:
        torch.set_num_threads(threads)


def _without_timing(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != TIMING} for row in csv.DictReader(fh)]


def _same_tables(a: Path, b: Path) -> None:
    assert (a / "per_image.csv").read_bytes() == (b / "per_image.csv").read_bytes()
    assert _without_timing(a / "results.csv") == _without_timing(b / "results.csv")
    head_a, head_b = ((p / "results.csv").read_text().splitlines()[0] for p in (a, b))
    assert head_a == head_b


def test_ray_gives_the_local_tables_and_a_rerun_starts_no_task(tmp_path):
    reference = _local(_spec(tmp_path / "local", climb=True)).parent
    spec = _spec(tmp_path / "ray", climb=True)
    executor = EXECUTORS.get("ray")(ExecutorOptions(workers=2))
    runner = StudyRunner(spec, progress=False)
    started = time.perf_counter()
    runner.run(executor=executor)
    seconds = time.perf_counter() - started
    assert executor.tasks_started == 6 and runner.trainings_run == 3 and runner.attacks_run == 3 and not executor.failed
    _same_tables(reference, Path(spec.out))
    assert seconds < 120, seconds

    again = EXECUTORS.get("ray")(ExecutorOptions(workers=2))
    rerun = StudyRunner(spec, progress=False)
    rerun.run(executor=again)
    assert again.tasks_started == 0 and rerun.trainings_run == rerun.attacks_run == 0
    _same_tables(reference, Path(spec.out))


def test_a_worker_killed_mid_cell_is_retried_and_the_study_completes(tmp_path):
    spec = _spec(tmp_path / "ray", iterations=400)  # attacks long enough to be caught running
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(dump_yaml(spec))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen([sys.executable, "study.py", "--config", str(spec_file), "--executor", "ray", "--workers", "2",
                             "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 240
    try:
        while killed is None and proc.poll() is None and time.time() < deadline:
            found = subprocess.run(["pgrep", "-f", "ray::attack_cell"], capture_output=True, text=True).stdout.split()
            if found:
                killed = int(found[0])
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no attack cell was seen running"
    assert proc.returncode == 0, err[-3000:]
    assert not (Path(spec.out) / "failed_cells.json").exists()
    reference = _local(_spec(tmp_path / "local", iterations=400)).parent
    _same_tables(reference, Path(spec.out))


def test_executor_options_are_one_line_errors(tmp_path, capsys):
    import study
    from tests.conftest import run_entry

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(dump_yaml(_spec(tmp_path / "study")))
    code, err = run_entry(study.main, ["--config", str(spec_file), "--executor", "slurm"], capsys)
    assert code == 2 and err == "error: study.py --executor: unknown study executor 'slurm' (known: local, ray)", err
    code, err = run_entry(study.main, ["--config", str(spec_file), "--address", "auto"], capsys)
    assert code == 2 and err == "error: --address and --workers are for --executor ray; the local executor runs one cell at a time", err
    assert not (tmp_path / "study").exists()  # refused before anything was written


def test_a_cluster_address_that_does_not_answer_is_one_line(tmp_path, capsys):
    """Ray would wait on it without a word; a closed port on this machine answers at once with a refusal."""
    import socket

    import study
    from tests.conftest import run_entry

    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(dump_yaml(_spec(tmp_path / "study")))
    code, err = run_entry(study.main, ["--config", str(spec_file), "--executor", "ray", "--address", f"127.0.0.1:{port}"], capsys)
    assert code == 2 and err.startswith(f"error: --address 127.0.0.1:{port}: the Ray cluster did not answer within 10 s"), err
    code, err = run_entry(study.main, ["--config", str(spec_file), "--executor", "ray", "--address", "nohost"], capsys)
    assert code == 2 and "expected HOST:PORT" in err, err


def test_ctrl_c_cancels_the_tasks_in_flight(tmp_path, monkeypatch):
    """A Ctrl-C while cells run on Ray cancels every task in flight (on a joined cluster they would run on) and is
    raised as the interruption it is."""
    cancelled = []
    real_cancel = ray.cancel

    def wait(refs, num_returns=1, **kwargs):
        raise KeyboardInterrupt  # the moment the driver waits on its first tasks

    def cancel(ref, force=False, **kwargs):
        cancelled.append(ref)
        return real_cancel(ref, force=force, **kwargs)

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", cancel)
    runner = StudyRunner(_spec(tmp_path / "ray"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run(executor=EXECUTORS.get("ray")(ExecutorOptions(workers=2)))
    assert len(cancelled) == len({c.train_key for c in runner.cells}) == 3  # the three trainings submitted first
    assert not ray.is_initialized()  # the local instance is shut down
