"""Turn a finished study folder into ONE self-contained HTML report.

    python report.py runs/studies/sigma0                      # -> runs/studies/sigma0/report.html
    python report.py runs/studies/sigma0 --out sigma0.html
    python report.py runs/studies/sigma0 --wandb-report --entity ENTITY    # and the W&B Report (docs/reports.md)

The page holds the study's summary and tables, every figure and every cell's reconstruction
(inlined as data URIs), the full results table, the exact configs, and the software versions and
date. It loads nothing from the network and runs no scripts. See docs/reports.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import run_cli


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="report.py",
        description="Write a finished study folder (study.py's output: results.csv, summary.md, figures, cells/, train/) "
                    "as one self-contained HTML file: summary and tables, figures, all results, a gallery of "
                    "reconstructions, the exact configs, software versions and date.",
        epilog="Bad input (a missing folder, a folder that is not a finished study) is a one-line error with exit status 2. "
               "Publishing a study to Weights & Biases instead: docs/reports.md.",
    )
    p.add_argument("study", metavar="STUDY", help="the study's output folder, e.g. runs/studies/sigma0 (must contain results.csv)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="HTML file to write (default: STUDY/report.html); written atomically, replacing an older one")
    p.add_argument("--wandb-report", action="store_true",
                   help="also build the study's W&B Report (wandb-workspaces): its specification is written to wandb_report.json "
                        "beside the HTML file, and the report is saved to W&B when --entity is given and you are logged in")
    p.add_argument("--entity", default="", help="--wandb-report: the W&B entity (user or team); without it nothing is sent")
    p.add_argument("--project", default="", help="--wandb-report: the W&B project holding the study's synced runs "
                   "(default: fl-leakage-<study name>, as docs/reports.md syncs them)")
    args = p.parse_args(argv)
    if (args.entity or args.project) and not args.wandb_report:
        from common.errors import UserError

        raise UserError("--entity and --project are for --wandb-report")

    from studies.html_report import write_report

    path = write_report(Path(args.study), Path(args.out) if args.out else None)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.wandb_report:
        from studies.wandb_report import SPEC_FILE, write_wandb_report

        spec_file, url = write_wandb_report(Path(args.study), path.parent / SPEC_FILE, args.entity, args.project)
        if url:
            print(f"W&B Report saved: {url} (specification: {spec_file})")
        else:
            why = "no --entity given" if not args.entity else "not logged in to W&B, or WANDB_MODE is offline/disabled"
            print(f"W&B Report specification: {spec_file} (not saved: {why}; run the same command online with --entity to save it)")


if __name__ == "__main__":
    run_cli(main)
