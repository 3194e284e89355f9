"""Federated training with Lightning clients and update capture.

    python train.py                                  # configs/default.yaml -> runs/default
    python train.py --config configs/paper_cxr.yaml data.path=/data/COVID-19_Radiography_Dataset
    python train.py fl.rounds=10 'privacy.filters=[{name: gaussian, sigma0: 5}]' --out runs/noisy
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from common.cli import load_config, parser  # noqa: E402
from common.errors import run_cli  # noqa: E402
from federation.train_config import TrainConfig  # noqa: E402



def main(argv: list[str] | None = None) -> None:
    p = parser("train.py", "FedAvg simulation of Lightning clients; saves the updates that leave the chosen clients.", TrainConfig, "configs/default.yaml")
    p.add_argument("--out", default=None, metavar="RUN", help="run directory (default: runs/default; same as out=RUN)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from RUN.partial at the first unfinished round "
                   "(refused for a complete run and for a config that differs from the interrupted run's)")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it is a complete train.py run (anything else is never replaced)")
    p.add_argument("--export-job", default=None, metavar="DIR", help="write the NVFlare job of this config to DIR (a new folder) for "
                   "real sites, and train nothing (docs/nvflare.md)")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(TrainConfig, args, str(TrainConfig.DEFAULT_FILE), {"out": args.out})

    from federation.curves import accuracy_line
    from pipelines.train_job import TrainJob

    job = TrainJob(cfg, resume=args.resume)  # validates data, split, model, filters and engine before writing anything
    if args.export_job:
        job.export(Path(args.export_job))
        print(f"NVFlare job written to {args.export_job}: submit it to your FL server (docs/nvflare.md)")
        return
    from common import interrupt

    interrupt.install()  # a Ctrl-C that lands in a destructor still stops training (common/interrupt.py)
    result = job.run(overwrite=args.overwrite, record={"argv": sys.argv[1:]})
    print(f"test accuracy per round: {accuracy_line(result.run.metrics)} (curve: {result.run.accuracy_figure})")
    print(f"done in {result.seconds:.0f}s: {cfg.fl.rounds} rounds, test accuracy {result.accuracy:.3f} -> {result.run.root}")
    broken = [r.round for r in result.records if r.invalid]
    if broken:
        print(f"warning: the global model was invalid after rounds {', '.join(map(str, broken))} (metrics.csv, column 'invalid'): "
              "its accuracy is that of a broken model, not a defence's cost", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
