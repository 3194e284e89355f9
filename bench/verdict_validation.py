"""The verdict rule on a set of study rows: what changes against the verdicts the rows were written with, the
confusion table of the ground-truth-free verdict against leakage, and the AUROC of the risk score.

    python -m bench.verdict_validation calibration docs/results/*/results.csv    # the calibration set (issue 37)
    python -m bench.verdict_validation test runs/studies/verdict_test/results.csv  # the pre-registered test set

Writes bench/results/verdict_validation_<name>.json and prints the tables (docs/verdict-validation.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.common import RESULTS, ROOT
from studies.tables import read_rows
from studies.verdict_validation import rescore, validation


def split_family(csv_path: Path) -> str:
    """Which federated split a study's rows come from: the split is a function of the seed and the split spec only,
    so (family, seed, client) names one client's images across studies."""
    spec = ROOT / "configs" / "studies" / f"{csv_path.parent.name}.yaml"
    if spec.is_file():
        clients = ((yaml.safe_load(spec.read_text()) or {}).get("train", {}).get("overrides", {}) or {}).get("fl.split.clients")
        if clients:
            return json.dumps(clients, sort_keys=True)
    return "default"


def load(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        family = split_family(path)
        for row in read_rows(path):
            rows.append({**row, "study": path.parent.name, "split_family": family})
    return rows


def distinct_images(rows: list[dict[str, Any]]) -> int:
    """Distinct private images behind the rows: one client's images are named by (split family, seed, client)."""
    clients = {(r["split_family"], r["seed"], r["client"]): int(r["num_images"]) for r in rows}
    return sum(clients.values())


def changes(rows: list[dict[str, Any]], reid_alpha: float) -> dict[str, Any]:
    """Old verdict -> new verdict, counted per client size, and the rows whose verdict changed."""
    moved = Counter()
    changed = []
    for r in rows:
        new, fired = rescore(r, reid_alpha)
        moved[f"{int(r['num_images'])} image(s): {r.get('verdict')} -> {new}"] += 1
        if new != r.get("verdict"):
            changed.append({k: r.get(k) for k in ("study", "seed", "round", "client", "num_images", "ssim", "identification_top1",
                                                     "identification_chance", "heldout_error", "verdict")} | {"new": new, "fired": fired})
    return {"transitions": dict(sorted(moved.items())), "changed": changed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the set's name (results file bench/results/verdict_validation_<name>.json)")
    p.add_argument("csv", nargs="+", type=Path, help="study results.csv files")
    p.add_argument("--reid-alpha", type=float, default=0.01)
    args = p.parse_args(argv)
    rows = load(args.csv)
    table = validation(rows, args.reid_alpha)
    out = {"command": "python -m bench.verdict_validation " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": len(rows), "distinct_images": distinct_images(rows), "reid_alpha": args.reid_alpha,
           "validation": table, **changes(rows, args.reid_alpha)}
    for size, t in table.items():
        lr, fr, fn = t["leak_given_reconstructed"], t["false_reconstructed"], t["false_no_leak_found"]
        auc = f"{t['auroc_risk']:.3f}" if t["auroc_risk"] is not None else "n/a"
        print(f"{size}: {t['updates']} updates, {t['positives']} leak; {t['confusion']}; P(leak | reconstructed) "
              f"{lr['k']}/{lr['n']} ({lr['ci95'][0]:.2f}-{lr['ci95'][1]:.2f}); false no leak found {fn['k']}/{fn['n']} "
              f"(upper {fn['ci95'][1]:.2f}); AUROC {auc}")
    for k, v in out["transitions"].items():
        print(f"  {k}: {v}")
    print(f"{len(rows)} rows, {out['distinct_images']} distinct private images")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"verdict_validation_{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
