"""Turn a finished study folder into pictures and a summary, as its spec's `report` asks.

The summary is data first (``summary.json``: title, lead line, tables as header + rows, figures),
then text rendered from it (``summary.md``); the HTML report renders the same data with its own
templates, so nothing is parsed back from markdown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import load_tensors, read_json
from federation.run_layout import RunLayout
from leakage.ground_truth import load_ground_truth
from pipelines.attack_output import AttackOutput
from studies import plots
from studies.reference import REFERENCES
from studies.spec import StudySpec
from common.files import write_json
from studies.tables import difference_pivot, group, markdown_table, pivot, pools_attacks, read_rows, verdict_pivot


def _split_by(rows: list[dict[str, Any]], by: str | None) -> dict[Any, list[dict[str, Any]]]:
    if not by:
        return {None: rows}
    return {k[0]: v for k, v in sorted(group(rows, [by]).items(), key=lambda kv: str(kv[0]))}


#: the plot kinds a spec's report may ask for (dispatched in :func:`analyze`)
PLOT_KINDS = ("bars", "privacy_utility", "heatmap", "per_round")


def check_report(report: dict[str, Any]) -> None:
    """A spec's report section, checked before any cell runs (else its mistakes surface after hours of cells)."""
    for plot in report.get("plots", []) or []:
        if not isinstance(plot, dict) or plot.get("kind") not in PLOT_KINDS:
            raise UserError(f"study report plot {plot!r}: kind must be one of {', '.join(PLOT_KINDS)}")
        if plot["kind"] in ("bars", "privacy_utility") and "x" not in plot:
            raise UserError(f"study report plot {plot!r} needs an x (the axis on the horizontal axis)")
    for table in report.get("tables", []) or []:
        if not isinstance(table, dict) or "row" not in table or "metric" not in table:
            raise UserError(f"study report table {table!r} needs a row and a metric")


def analyze(study_dir: Path, spec: StudySpec) -> dict[str, Any]:
    """Writes the PNGs, summary.json and summary.md into ``study_dir``; returns the summary (and the figures' paths)."""
    rows = read_rows(study_dir / "results.csv")
    report = spec.report or {}
    figures: list[Path] = []
    tables: list[dict[str, Any]] = []
    for k, plot in enumerate(report.get("plots", [])):
        kind = plot.get("kind")
        metric = plot.get("metric", "rdlv")
        for value, sel in _split_by(rows, plot.get("by")).items():
            suffix = f"_{plot['by']}{value}" if plot.get("by") else ""
            name = study_dir / f"{k:02d}_{kind}_{metric}{suffix}.png"
            title = f"{metric} ({plot['by']} {value})" if plot.get("by") else ""
            if kind == "bars":
                figures.append(plots.grouped_bars(sel, plot["x"], plot.get("hue"), metric, name, title, plot.get("order")))
            elif kind == "privacy_utility":
                ref = REFERENCES.get(plot.get("reference", "")) if plot.get("reference") else None
                figures.append(plots.privacy_utility(sel, plot["x"], name, metric, plot.get("x_label"), ref, plot.get("log_x", False)))
            elif kind == "heatmap":
                figures.append(plots.heatmap(sel, name, metric))
            elif kind == "per_round":
                figures.append(plots.per_round(sel, name, metric))
            else:  # check_report refuses it before any cell runs
                raise UserError(f"study report plot kind '{kind}' is not one of {', '.join(PLOT_KINDS)}")
    for t in report.get("tables", []):
        for value, sel in _split_by(rows, t.get("by")).items():
            heading = f"{t['metric']} by {t['row']}" + (f" x {t['col']}" if t.get("col") else "") + (f", {t['by']} {value}" if t.get("by") else "")
            if t.get("difference_to") is not None:
                header, body = difference_pivot(sel, t["row"], t["metric"], t["difference_to"], row_order=t.get("row_order"))
                tables.append({"heading": f"{heading}: difference to {t['row']} = {t['difference_to']}", "header": header, "rows": body})
                continue
            header, body = pivot(sel, t["row"], t.get("col"), t["metric"], row_order=t.get("row_order"), col_order=t.get("col_order"))
            tables.append({"heading": f"{heading} (mean ± std over seeds)", "header": header, "rows": body})
    if any(r.get("verdict") for r in rows):
        # leak rates and inconclusive counts apart, in the layout of each table the spec asks for (once per layout)
        layouts: dict[tuple, dict[str, Any]] = {}
        for t in report.get("tables", []) or [{"row": "seed"}]:
            layouts.setdefault((t["row"], t.get("col"), t.get("by")), t)
        for (row_key, col_key, by), t in layouts.items():
            for value, sel in _split_by(rows, by).items():
                heading = f"verdicts by {row_key}" + (f" x {col_key}" if col_key else "") + (f", {by} {value}" if by else "")
                header, body = verdict_pivot(sel, row_key, col_key, row_order=t.get("row_order"), col_order=t.get("col_order"))
                tables.append({"heading": f"{heading} (leak rate with its 95% Clopper-Pearson interval; an inconclusive attack "
                                          f"did not converge and counts as neither leak nor protection)", "header": header, "rows": body})
                if pools_attacks(sel, [row_key] + ([col_key] if col_key else [])):  # the updates are the independent trials
                    header, body = verdict_pivot(sel, row_key, col_key, row_order=t.get("row_order"), col_order=t.get("col_order"),
                                                 per_update=True)
                    tables.append({"heading": f"{heading}, per attacked update (it leaks when any of its attacks in the cell shows a leak; "
                                              f"no leak found when none does and one converged; 95% Clopper-Pearson over updates)",
                                   "header": header, "rows": body})
    if report.get("gallery", True):
        path = gallery(study_dir, study_dir / "gallery.png", limit=int(report.get("gallery_limit", 24)))
        if path is not None:
            figures.append(path)
    summary = {"title": str(report.get("title", spec.name)),
               "lead": f"{len(rows)} attacked updates; seeds {spec.seeds}.{_verdict_lead(rows)}{provenance_note(rows)}",
               "tables": tables, "figures": [p.name for p in figures]}
    write_json(study_dir / "summary.json", summary)
    (study_dir / "summary.md").write_text(summary_markdown(summary))
    return {**summary, "figure_paths": figures}


def _verdict_lead(rows: list[dict[str, Any]]) -> str:
    verdicts = [r.get("verdict") for r in rows if r.get("verdict")]
    if not verdicts:
        return ""
    counts = {v: verdicts.count(v) for v in ("leaks", "no leak found", "inconclusive")}
    lead = (f" Verdicts: {counts['leaks']} leak, {counts['no leak found']} no leak found (converged), "
            f"{counts['inconclusive']} inconclusive (the attack did not converge: no evidence either way).")
    tests = [t for r in rows if r.get("verdict") == "leaks" for t in str(r.get("leak_tests") or "").split()]
    if tests:  # rows written before the tests were recorded have none
        lead += " Leaks found by " + ", ".join(f"{name} {tests.count(name)}" for name in ("ssim", "reidentification", "rdlv")
                                               if name in tests) + " (an attack may fire several)."
    server = [r.get("server_verdict") for r in rows if r.get("server_verdict")]
    if server:
        lead += (f" From the update alone: {server.count('reconstructed')} reconstructed, {server.count('inconclusive')} "
                 "inconclusive (docs/verdict-validation.md).")
    return lead


def summary_markdown(summary: dict[str, Any]) -> str:
    md = [f"# {summary['title']}", "", summary["lead"], ""]
    md += [f"### {t['heading']}\n\n{markdown_table(t['header'], t['rows'])}\n" for t in summary["tables"]]
    md += ["", "## Figures", ""] + [f"![{Path(name).stem}]({name})" for name in summary["figures"]]
    return "\n".join(md) + "\n"


def gallery(study_dir: Path, path: Path, limit: int = 24) -> Path | None:
    """Each training image beside its best (matched) reconstruction, over the study's cells."""
    pairs = []
    for cell in sorted((study_dir / "cells").glob("*")):
        files = AttackOutput(cell)
        if not (files.metrics.is_file() and files.reconstruction.is_file() and (cell / "cell.json").is_file()):
            continue  # unfinished, or an attack that failed (no reconstruction)
        info = read_json(cell / "cell.json")
        metrics = read_json(files.metrics)
        where = RunLayout.of_update(metrics["update"])
        if where is None:
            continue
        gt = load_ground_truth(*where)
        recs = load_tensors(files.reconstruction)["images"]
        axes = " ".join(f"{v}" for v in info["axes"].values())
        for row in metrics.get("per_image", []):
            j = row.get("matched_reconstruction")
            if j is None:
                continue
            pairs.append((gt.images[row["image"]], recs[j], f"{axes} c{info['client']}\nSSIM {row['ssim']:.2f}"))
            if len(pairs) >= limit:
                break
        if len(pairs) >= limit:
            break
    return plots.gallery(pairs, path) if pairs else None


def _short(value: str) -> str:
    """A commit as 12 hex digits, marked when it had uncommitted changes (else two provenances read the same)."""
    return value[:12] + (" with uncommitted changes" if "uncommitted" in value else "")


def provenance_note(rows: list[dict[str, str]]) -> str:
    """A sentence when the cells were not all made alike: several commits, torch versions or thread counts
    (a thread count alone changes a training path), or cells that recorded none."""
    parts = []
    for column, what in (("commit", "code commits"), ("torch", "torch versions"), ("train_threads", "training thread counts"),
                         ("attack_threads", "attack thread counts")):
        values = sorted({r.get(column) or "unrecorded" for r in rows})
        if len(values) > 1:
            parts.append(f"{len(values)} {what} ({', '.join(_short(v) for v in values)})")
    return f" Mixed provenance: {'; '.join(parts)}; compare cells of one provenance." if parts else ""
