"""A finished study as a W&B Report, built with W&B's Report API (``wandb-workspaces``).

The report holds what ``report.html`` holds, in W&B's own blocks:

- the title and the lead: the spec's title and the summary's facts;
- every summary table, as a Markdown table under its heading;
- every figure of the study folder, as a media panel over the study run. ``study.py --wandb`` logs
  each PNG under its file stem;
- all results, as the study run's ``results`` table;
- panels over the study's synced training runs (test accuracy, train loss per round) and attack
  runs (SSIM, RDLV, the reconstructions).

Building it calls no network. ``Report(entity=...)`` would ask the W&B API for a default entity,
so the entity is always passed: the user's, or '' when none was given. The specification (what
``Report.save`` uploads, except the run sets' project ids, which only the server knows) is
written to a JSON file. The report is saved to W&B only when an
entity is given, the user is logged in, and W&B is not offline or disabled.
"""
from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common.errors import UserError
from studies.html_report import summary_facts
from studies.study_folder import check_study, read_results, read_spec, read_summary, study_figures, study_names
from studies.tables import markdown_table

SPEC_FILE = "wandb_report.json"


def default_project(study_dir: Path) -> str:
    """The project docs/reports.md syncs a study's runs into: fl-leakage-<study name>."""
    return f"fl-leakage-{study_names(read_spec(study_dir)[0], study_dir)[0]}"


def build_report(study_dir: Path, entity: str, project: str, link_runsets: bool = False) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` of a finished study (not saved).

    ``link_runsets``: give the run sets the entity too. Serialising such a run set asks the W&B
    server for the project's internal id, so it is only done for a report that is being saved; the
    offline specification names the run sets' project and query instead (``runsets``)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise UserError("--wandb-report needs wandb-workspaces (pip install -r requirements.txt)") from None
    check_study(study_dir)
    _, rows = read_results(study_dir / "results.csv")
    spec, _ = read_spec(study_dir)
    name, title = study_names(spec, study_dir)
    summary = read_summary(study_dir)
    facts = summary_facts(spec, rows)
    lead = (summary or {}).get("lead") or f"Leakage study '{name}': {len(rows)} attacked updates."

    def runs(query: str, label: str) -> Any:
        return wr.Runset(entity=entity if link_runsets else "", project=project, name=label, query=query)

    study_runs = [runs(f"study-{name}", "study run")]
    blocks: list[Any] = [wr.TableOfContents(), wr.H1("Summary"), wr.P(lead),
                         wr.UnorderedList([f"{key}: {value}" for key, value in facts])]
    if summary and summary["tables"]:
        blocks.append(wr.H1("Summary tables"))
        for table in summary["tables"]:
            blocks += [wr.H2(table["heading"]), wr.MarkdownBlock(markdown_table(table["header"], table["rows"]))]
    figures = study_figures(study_dir)
    if figures:
        blocks += [wr.H1("Figures"), wr.PanelGrid(runsets=study_runs, panels=[
            wr.MediaBrowser(title=png.name, media_keys=[png.stem], num_columns=1) for png in figures])]
    blocks += [
        wr.H1("All results"),
        wr.PanelGrid(runsets=study_runs, panels=[wr.WeavePanelSummaryTable(table_name="results")]),
        wr.H1("Training runs"),
        wr.PanelGrid(runsets=[runs("train-", "training runs")], panels=[
            wr.LinePlot(title="test accuracy per round", x="round", y=["test/accuracy"]),
            wr.LinePlot(title="train loss per round", x="round", y=["train/loss"])]),
        wr.H1("Attacks"),
        wr.PanelGrid(runsets=[runs("attack-", "attack runs")], panels=[
            wr.BarPlot(title="SSIM", metrics=["ssim"]), wr.BarPlot(title="RDLV", metrics=["rdlv"]),
            wr.MediaBrowser(title="reconstructions", media_keys=["reconstruction"])]),
        wr.P("Every reconstruction, the exact configs and the software versions: report.html (python report.py STUDY)."),
    ]
    return wr.Report(entity=entity, project=project, title=title, description=lead, blocks=blocks)


def specification(report: Any) -> dict[str, Any]:
    """What ``Report.save`` would upload: where, the title and lead, and the view spec (blocks and panels)."""
    model = report._to_model()  # the package's own serialisation: the same call save() makes
    runsets = [{"name": rs.name, "entity": report.entity, "project": rs.project, "query": rs.query}
               for block in report.blocks if hasattr(block, "runsets") for rs in block.runsets]
    return {"entity": report.entity, "project": report.project, "title": report.title, "description": report.description,
            "runsets": runsets, "spec": json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))}


def logged_in() -> bool:
    """An API key in WANDB_API_KEY or ~/.netrc for the W&B host, and W&B neither offline nor disabled (no network call)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def write_wandb_report(study_dir: Path, spec_file: Path, entity: str = "", project: str = "") -> tuple[Path, str | None]:
    """(the specification file, the saved report's URL or None when it was not saved)."""
    project = project or default_project(study_dir)
    from common.files import write_json

    write_json(spec_file, specification(build_report(study_dir, entity, project)))
    if not entity or not logged_in():
        return spec_file, None
    report = build_report(study_dir, entity, project, link_runsets=True)
    try:
        report.save()
    except Exception as err:  # noqa: BLE001 - the network or the API: the specification is written either way
        raise UserError(f"the W&B Report could not be saved ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}); "
                        f"its specification is in {spec_file}") from None
    return spec_file, str(report.url)
