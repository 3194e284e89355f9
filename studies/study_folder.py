"""Reading a finished study folder (results.csv, study.yaml, summary.json, figures, recorded versions): what the HTML
report and the W&B Report both show. Every reader refuses a folder that is not a finished study with one line,
and never imports torch, so that a report is quick to make on a machine that is busy training."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError


def check_study(study_dir: Path) -> None:
    if not study_dir.exists():
        raise UserError(f"study folder not found: {study_dir}")
    if not study_dir.is_dir():
        raise UserError(f"{study_dir} is not a folder (give the study's output folder, e.g. runs/studies/sigma0)")
    if not (study_dir / "results.csv").is_file():
        raise UserError(f"{study_dir} is not a finished study: it has no results.csv (run study.py --config ... first)")


def read_results(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} cannot be read as CSV ({err})") from err
    if not fields:
        raise UserError(f"{path} is empty: the study has not collected any results yet")
    if "cell" not in fields:
        raise UserError(f"{path} has no 'cell' column: it is not a study's results.csv (re-run study.py to collect it)")
    torn = next((i for i, r in enumerate(rows, start=2) if None in r or any(v is None for v in r.values())), None)
    if torn is not None:
        raise UserError(f"{path} is torn: line {torn} does not have the header's {len(fields)} columns (re-run study.py to collect it)")
    return fields, rows


def read_spec(study_dir: Path) -> tuple[dict[str, Any], str | None]:
    """(the parsed study.yaml or {}, its text or None)."""
    path = study_dir / "study.yaml"
    if not path.is_file():
        return {}, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return (data if isinstance(data, dict) else {}), text


def read_json_dict(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml_dict(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return (data if isinstance(data, dict) else None), text


def study_names(spec: dict[str, Any], study_dir: Path) -> tuple[str, str]:
    """(the study's name, its title): the spec's ``report.title``, else its name, else the folder's."""
    report = spec.get("report") if isinstance(spec.get("report"), dict) else {}
    name = str(spec.get("name") or Path(study_dir).resolve().name)
    return name, str(report.get("title") or name)


def study_figures(study_dir: Path) -> list[Path]:
    """Every figure of a study: the PNGs in its folder (the report's, the W&B study run's and the W&B Report's)."""
    return sorted(p for p in Path(study_dir).glob("*.png") if p.is_file())


def read_summary(study_dir: Path) -> dict[str, Any] | None:
    """summary.json as analyze.py wrote it (None when missing or unreadable: the page says so)."""
    data = read_json_dict(study_dir / "summary.json")
    if not data or not isinstance(data.get("tables"), list):
        return None
    return {"title": str(data.get("title", "")), "lead": str(data.get("lead", "")), "figures": [str(f) for f in data.get("figures", [])],
            "tables": [{"heading": str(t.get("heading", "")), "header": [str(c) for c in t.get("header", [])],
                        "rows": [[str(c) for c in row] for row in t.get("rows", [])]} for t in data["tables"] if isinstance(t, dict)]}


def recorded_versions(study_dir: Path) -> list[list[str]]:
    out = []
    for run_json in sorted(study_dir.glob("train/*/run.json")):
        found = read_json_dict(run_json).get("versions")
        if isinstance(found, dict):
            out.append([run_json.parent.name, ", ".join(f"{a} {b}" for a, b in found.items())])
    return out
