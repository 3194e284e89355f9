"""One training job, used by train.py, studies and benchmarks: validate, train in a staging folder,
write run.json last, commit.

Everything is checked before a file is written (the federation validates data, split, model and
filters when it is built; the engine says whether it can resume); a failed or interrupted job
leaves ``RUN.partial`` with a ``FAILED`` note and never a half-written ``RUN``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from common.config_loader import to_dict
from common.errors import UserError
from common.files import StagedDir, write_json
from common.versions import package_versions, provenance
from federation.train_config import TrainConfig
from federation.curves import accuracy_figure
from federation.engines import engine
from federation.run_files import read_metrics
from federation.run_layout import RunLayout
from federation.federation import Federation, RoundRecord
from pipelines.attack_audit import AttackAudit


@dataclasses.dataclass
class TrainResult:
    run: RunLayout
    records: list[RoundRecord]  # the rounds trained by this job (fewer after a resume)
    accuracy: float  # final test accuracy
    seconds: float


class TrainJob:
    """``TrainJob(cfg)`` validates; ``.run()`` trains; ``.export(dir)`` writes an NVFlare job instead."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.started = time.time()
        self.federation = Federation(cfg, auditor=AttackAudit)
        self.run_rounds = engine(cfg.fl.engine, resume)

    def run(self, overwrite: bool = False, record: dict[str, Any] | None = None) -> TrainResult:
        """Train into ``cfg.out``; ``record``: extra facts for run.json (a study's overrides, the command line)."""
        cfg = self.cfg
        staged = StagedDir(cfg.out, resume=self.resume, overwrite=overwrite, own=lambda p: RunLayout(p).is_complete(), what="a complete training run")
        if self.resume:
            check_resumable(staged, cfg)
        with staged.staged() as work:
            run = RunLayout(work)
            records = self.run_rounds(self.federation, work, self.resume)
            accuracy = records[-1].test_accuracy if records else last_accuracy(run.metrics)  # killed after the last round
            accuracy_figure(run.metrics, run.accuracy_figure, f"{Path(cfg.out).name}: {cfg.model.name}, {cfg.fl.rounds} rounds")
            write_json(run.run_json, {
                "state": "complete", "seconds": round(time.time() - self.started, 2), "rounds": cfg.fl.rounds,
                "resumed_at_round": (records[0].round if records else cfg.fl.rounds) if self.resume else None,
                "final_test_accuracy": accuracy, **(record or {}), "versions": package_versions(), "provenance": provenance(),
            })
        return TrainResult(RunLayout(staged.final), records, accuracy, time.time() - self.started)

    def export(self, job_dir: Path) -> None:
        from federation.flare.job import export_job

        if job_dir.exists() or job_dir.is_symlink():
            raise UserError(f"{job_dir} already exists: choose a new folder for the NVFlare job")
        blocked = next((p for p in job_dir.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise UserError(f"--export-job {job_dir}: {blocked} is a file, not a folder")
        export_job(self.federation, job_dir)


def check_resumable(staged: StagedDir, cfg: TrainConfig) -> None:
    """A resume continues the very run that was interrupted: same resolved config, not a finished run."""
    if not staged.partial.is_dir():
        if staged.final.exists():
            raise UserError(f"{staged.final} is complete: nothing to resume (--overwrite replaces it with a new run)")
        raise UserError(f"nothing to resume: {staged.partial} not found")
    saved = RunLayout(staged.partial).read_config()
    if saved is not None:
        now = to_dict(cfg)
        keys = sorted(k for k in set(saved) | set(now) if k != "logging" and saved.get(k) != now.get(k))
        if keys:
            raise UserError(f"--resume with a config that differs from the interrupted run's ({', '.join(keys)}): "
                            f"resume with the same settings, or start a new run")


def last_accuracy(metrics_csv: Path) -> float:
    rows = read_metrics(metrics_csv)
    if not rows:
        raise UserError(f"nothing to resume in {metrics_csv.parent}")
    return rows[-1].test_accuracy
