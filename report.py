"""Turn a finished study folder into ONE self-contained HTML report.

    python report.py runs/studies/sigma0                      # -> runs/studies/sigma0/report.html
    python report.py runs/studies/sigma0 --out sigma0.html

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
    args = p.parse_args(argv)

    from studies.report import write_report

    path = write_report(Path(args.study), Path(args.out) if args.out else None)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    run_cli(main)
