"""Run a study (a resumable grid of train.py + attack.py cells) and summarise it.

    python study.py --config configs/studies/bn_ablation.yaml
    python study.py --config configs/studies/sigma0.yaml --quick     # reduced: 1 seed, 3 grid points, 2 rounds
    python study.py --config configs/studies/sigma0.yaml seeds=[0] out=runs/studies/sigma0_s0
    python study.py --config configs/studies/sigma0.yaml --executor ray                # cells as Ray tasks (docs/scale.md)

Re-running the same command skips finished cells. Outputs: OUT/results.csv (one row per attacked
update), OUT/per_image.csv, OUT/summary.md and the PNGs the spec's `report` section asks for.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("WANDB_MODE", "offline")

from common.cli import parser  # noqa: E402
from common.config_loader import load  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402
from studies.spec import StudySpec  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = parser("study.py", "Run a grid of train.py + attack.py cells and summarise the leakage.", StudySpec, None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true",
                   help="reduced version into OUT_quick: first seed, 3 grid points per axis (ends and middle), at most 2 FL rounds, "
                        "at most 60 attack iterations, no time budget, no compile (minutes instead of an hour)")
    p.add_argument("--wandb", action="store_true", help="log every training run and attack run now, and one study run with the results table and figures, "
                        "to W&B (offline by default; upload with wandb sync)")
    p.add_argument("--executor", default="local", help="where cells run: local (this process, one after another) or ray (each training "
                   "and attack a Ray task with the spec's resources; docs/scale.md)")
    p.add_argument("--address", default="", help="--executor ray: join the Ray cluster at this address (e.g. auto, or HOST:6379) "
                   "instead of starting a local one; every worker must see OUT at the same path")
    p.add_argument("--workers", type=int, default=0, help="--executor ray without --address: cells side by side on the local Ray "
                   "instance (default: CPUs / resources.cpus)")
    args = p.parse_intermixed_args(argv)
    if not args.config:
        raise UserError("study.py needs --config configs/studies/<name>.yaml")
    spec = load(StudySpec, args.config, list(args.overrides))
    if args.quick:
        from studies.quick import reduce

        spec = reduce(spec)

    from studies.analyze import analyze
    from studies.executors import REGISTRY as EXECUTORS, ExecutorOptions
    from studies.runner import StudyRunner

    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    executor = EXECUTORS.get(args.executor)(ExecutorOptions(address=args.address, workers=args.workers))
    from common import interrupt

    interrupt.install()  # a Ctrl-C that lands in a destructor still stops the study (exit 130; a re-run resumes)
    started = time.time()
    runner = StudyRunner(spec, progress=not args.no_progress, wandb=args.wandb)
    results = runner.run(executor=executor)
    summary = analyze(results.parent, spec)
    if args.wandb:
        from studies.study_folder import study_figures

        log_study_run(results.parent, spec, study_figures(results.parent))
    print(f"{spec.name}: {len(runner.cells)} cells ({runner.trainings_run} trainings and {runner.attacks_run} attacks run now, "
          f"the rest reused) in {time.time() - started:.0f}s -> {results.parent}")
    from studies.tables import markdown_table

    for table in summary["tables"]:
        print(f"\n### {table['heading']}\n\n{markdown_table(table['header'], table['rows'])}\n")
    if executor.failed:
        raise UserError(f"{len(executor.failed)} cell(s) failed after a retry (listed in {results.parent / 'failed_cells.json'}); "
                        "the tables hold the others; re-run the same command to retry them")


def log_study_run(study_dir, spec: StudySpec, figures: list) -> None:
    """One more W&B run with the study's own products: the results table (axis columns included) and its figures."""
    import csv

    from common.config_loader import to_dict
    from common.tracking import start_run

    run = start_run(True, "fl-leakage", f"study-{spec.name}", to_dict(spec), study_dir, "study")
    if run is None:
        return
    import wandb

    with open(study_dir / "results.csv") as fh:
        rows = list(csv.reader(fh))
    run.log({"results": wandb.Table(columns=rows[0], data=rows[1:])})
    for png in figures:
        run.log({png.stem: wandb.Image(str(png))})
    run.finish()


if __name__ == "__main__":
    run_cli(main)
