"""Federated training with Lightning clients and update capture.

    python train.py                                  # configs/default.yaml -> runs/default
    python train.py --config configs/paper_cxr.yaml data.path=/data/COVID-19_Radiography_Dataset
    python train.py fl.rounds=10 'privacy.filters=[{name: gaussian, sigma0: 5}]' --out runs/noisy
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("WANDB_MODE", "offline")

from common.cli import load_config, parser  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402
from federation.config import TrainConfig  # noqa: E402

if TYPE_CHECKING:
    from common.files import StagedDir

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.yaml")


def main(argv: list[str] | None = None) -> None:
    p = parser("train.py", "FedAvg simulation of Lightning clients; saves the updates that leave the chosen clients.", TrainConfig, "configs/default.yaml")
    p.add_argument("--out", default=None, metavar="RUN", help="run directory (default: runs/default; same as out=RUN)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from RUN.partial at the first unfinished round "
                   "(refused for a complete run and for a config that differs from the interrupted run's)")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it is a complete train.py run (anything else is never replaced)")
    p.add_argument("--export-job", default=None, metavar="DIR", help="write the NVFlare job of this config to DIR (a new folder) for "
                   "real sites, and train nothing (docs/nvflare.md)")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(TrainConfig, args, DEFAULT_CONFIG, {"out": args.out})

    from common.files import StagedDir, is_complete_run, write_json
    from common.interrupt import failure_note
    from federation.curves import accuracy_figure, accuracy_line
    from federation.engines import engine
    from federation.simulation import FederatedSimulation
    from pipelines.audit import AttackAudit

    started = time.time()
    simulation = FederatedSimulation(cfg, auditor=AttackAudit)  # validates data, split, model and filters before writing anything
    run_rounds = engine(cfg.fl.engine, args.resume)
    if args.export_job:
        export(simulation, Path(args.export_job))
        return
    staged = StagedDir(cfg.out, resume=args.resume, overwrite=args.overwrite, own=is_complete_run, what="a complete training run")
    if args.resume:
        check_resumable(staged, cfg)
    run_dir = staged.open()
    try:
        records = run_rounds(simulation, run_dir, args.resume)
        accuracy = records[-1].test_accuracy if records else last_accuracy(run_dir)  # killed after the last round
        accuracy_figure(run_dir / "metrics.csv", run_dir / "accuracy.png", f"{Path(cfg.out).name}: {cfg.model.name}, {cfg.fl.rounds} rounds")
        write_json(run_dir / "run.json", {
            "state": "complete", "seconds": round(time.time() - started, 2), "rounds": cfg.fl.rounds,
            "resumed_at_round": (records[0].round if records else cfg.fl.rounds) if args.resume else None,
            "final_test_accuracy": accuracy, "argv": sys.argv[1:], "versions": versions(),
        })
    except BaseException as err:
        staged.fail(failure_note(err))
        raise
    final = staged.commit()
    print(f"test accuracy per round: {accuracy_line(final / 'metrics.csv')} (curve: {final / 'accuracy.png'})")
    print(f"done in {time.time() - started:.0f}s: {cfg.fl.rounds} rounds, test accuracy {accuracy:.3f} -> {final}")


def export(simulation, job_dir: Path) -> None:
    from federation.flare.job import export_job

    if job_dir.exists() or job_dir.is_symlink():
        raise UserError(f"{job_dir} already exists: choose a new folder for the NVFlare job")
    export_job(simulation, job_dir)
    print(f"NVFlare job written to {job_dir}: submit it to your FL server (docs/nvflare.md)")


def check_resumable(staged: "StagedDir", cfg: TrainConfig) -> None:
    """A resume continues the very run that was interrupted: same resolved config, not a finished run."""
    import yaml

    from common.config import to_dict

    if not staged.partial.is_dir():
        if staged.final.exists():
            raise UserError(f"{staged.final} is complete: nothing to resume (--overwrite replaces it with a new run)")
        raise UserError(f"nothing to resume: {staged.partial} not found")
    saved_file = staged.partial / "config.yaml"
    if saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text()) or {}
        now = to_dict(cfg)
        keys = sorted(k for k in set(saved) | set(now) if k != "logging" and saved.get(k) != now.get(k))
        if keys:
            raise UserError(f"--resume with a config that differs from the interrupted run's ({', '.join(keys)}): "
                            f"resume with the same settings, or start a new run")


def last_accuracy(run_dir: Path) -> float:
    import csv

    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UserError(f"nothing to resume in {run_dir}")
    return float(rows[-1]["test_accuracy"])


def versions() -> dict[str, str]:
    import pytorch_lightning
    import timm
    import torch
    import torchmetrics

    return {"python": sys.version.split()[0], "torch": torch.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "timm": timm.__version__, "torchmetrics": torchmetrics.__version__}


if __name__ == "__main__":
    run_cli(main)
