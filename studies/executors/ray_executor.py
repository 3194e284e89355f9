"""Every training and every attack cell as a Ray task, on a local Ray instance or a cluster (``--address``).

A cell is the same code the local executor runs (the runner's ``ensure_trained`` /
``ensure_attacked``), called in a Ray worker with the spec's ``resources`` (``num_cpus``, which is
also the cell's torch thread count, and ``num_gpus``). Results are written straight into the study
folder, so every worker must see that folder at the same path: a shared file system on a cluster
(docs/scale.md). An attack is submitted when its training run is complete; finished cells are
never submitted again, so a re-run of a finished study starts no task. A task that fails, or whose
worker dies, is retried once (``max_retries=1``); a second failure is recorded in
``OUT/failed_cells.json`` and the study goes on (a re-run tries those cells again).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from common.errors import UserError
from common.files import write_json
from federation.run_layout import RunLayout
from studies.executors.base import CellRunner, Executor, cell_is_whole, register
from studies.spec import Cell, StudySpec

ROOT = Path(__file__).resolve().parents[2]
FAILED_FILE = "failed_cells.json"


def _worker_runner(runner_type: Callable[..., CellRunner], spec: StudySpec, wandb: bool) -> CellRunner:
    """The driver's runner rebuilt in a worker (its class travels by reference: the executor never imports it)."""
    import torch

    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    return runner_type(spec, progress=False, wandb=wandb)


def train_cell(runner_type: Callable[..., CellRunner], spec: StudySpec, wandb: bool, cell: Cell) -> tuple[str, bool]:
    """(the run folder, whether it was trained now) of one cell, in a Ray worker."""
    runner = _worker_runner(runner_type, spec, wandb)
    run = runner.ensure_trained(cell)
    return str(run), runner.trainings_run > 0


def attack_cell(runner_type: Callable[..., CellRunner], spec: StudySpec, wandb: bool, cell: Cell, run: str, rnd: int,
                client: int) -> tuple[str, bool]:
    """(the cell folder, whether it was attacked now) of one attack cell, in a Ray worker."""
    runner = _worker_runner(runner_type, spec, wandb)
    cell_dir = runner.ensure_attacked(cell, Path(run), rnd, client)
    return str(cell_dir), runner.attacks_run > 0


#: how long a cluster address may take to accept a connection before the study gives up on it
CONNECT_SECONDS = 10.0


def check_reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """A HOST:PORT address must accept a TCP connection within ``seconds``: ``ray.init`` would wait on a host that
    does not answer without a word (auto and ray:// addresses are left to Ray)."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as err:
        raise UserError(f"--address {address}: the Ray cluster did not answer within {seconds:g} s ({err.strerror or err})") from None


@register
class RayExecutor(Executor):
    name = "ray"

    def __init__(self, options: Any):
        super().__init__(options)
        self.tasks_started = 0

    def run(self, runner: CellRunner, on_cell: Callable[[Path], None] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray (pip install -r requirements.txt)") from None
        res = runner.spec.resources
        started_here = not ray.is_initialized()
        if started_here:
            self._init(ray, res.cpus, res.gpus)
        options = dict(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=1, retry_exceptions=True)
        train = ray.remote(train_cell).options(**options)
        attack = ray.remote(attack_cell).options(**options)
        out = Path(runner.spec.out)
        by_key: dict[str, list[Cell]] = {}
        for cell in runner.cells:
            by_key.setdefault(cell.train_key, []).append(cell)
        pending: dict[Any, tuple[str, Any]] = {}
        bar = tqdm(total=0, desc=f"{runner.spec.name} (ray)", unit="cell", disable=not runner.progress, dynamic_ncols=True)

        def submit(remote: Any, what: tuple[str, Any], *args: Any) -> None:
            pending[remote.remote(type(runner), runner.spec, runner.wandb, *args)] = what
            self.tasks_started += 1

        def attacks_of(key: str, run: Path) -> None:
            for cell in by_key[key]:
                for rnd, client in runner.targets(run):
                    bar.total += 1
                    cell_dir = out / "cells" / cell.attack_key(rnd, client)
                    if cell_is_whole(cell_dir):
                        bar.update(1)
                        if on_cell is not None:
                            on_cell(cell_dir)
                    else:
                        submit(attack, ("attack", (cell, rnd, client)), cell, str(run), rnd, client)
            bar.refresh()

        try:
            for key, group in by_key.items():
                bar.total += 1
                run = RunLayout(out / "train" / key)
                if run.is_complete():
                    bar.update(1)
                    attacks_of(key, run.root)
                else:
                    submit(train, ("train", group[0]), group[0])
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                kind, what = pending.pop(ready[0])
                try:
                    path, ran = ray.get(ready[0])
                except Exception as err:  # noqa: BLE001 - a task's second failure, whatever it was, is a failed cell
                    self._failed(kind, what, err)
                    bar.update(1)
                    continue
                bar.update(1)
                if kind == "train":
                    runner.trainings_run += int(ran)
                    attacks_of(what.train_key, Path(path))
                else:
                    runner.attacks_run += int(ran)
                    if on_cell is not None:
                        on_cell(Path(path))
        except KeyboardInterrupt:  # Ctrl-C: the cells in flight stop too (a joined cluster would run them on)
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
            if started_here:
                ray.shutdown()
        failed = out / FAILED_FILE
        if self.failed:
            write_json(failed, {"failed": self.failed})
        elif failed.is_file():
            failed.unlink()

    def _init(self, ray: Any, cpus: float, gpus: float) -> None:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
               "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
        if self.options.address:
            check_reachable(self.options.address)
            kwargs["address"] = self.options.address
        else:  # a local instance sized for the cells side by side
            workers = self.options.workers or max(1, int((os.cpu_count() or 1) // max(cpus, 1e-9)))
            kwargs["num_cpus"] = workers * cpus
            if gpus:
                kwargs["num_gpus"] = workers * gpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {self.options.address}" if self.options.address else "a local Ray instance"
            raise UserError(f"cannot start {where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None

    def _failed(self, kind: str, what: Any, err: BaseException) -> None:
        if kind == "train":
            label = f"training {what.train_key} (seed {what.seed})"
        else:
            cell, rnd, client = what
            label = f"attack {cell.attack_key(rnd, client)} (seed {cell.seed}, round {rnd}, client {client})"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
        self.failed.append({"cell": label, "error": reason})
        print(f"warning: {label} failed twice: {reason}", file=sys.stderr)
