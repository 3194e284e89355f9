"""A finished study folder rendered as ONE self-contained HTML page (``python report.py STUDY``); reading the
folder is ``studies.study_folder``'s job.

The page holds the study's title and key facts, the summary tables (from ``summary.json``, the
data that ``summary.md`` is rendered from), every PNG figure of the study and every cell's
``reconstruction.png`` as base64 data URIs, the full ``results.csv`` (numbers rounded), the exact
configs (``study.yaml``, one ``config.yaml`` per distinct training config and per distinct attack
config) and the software versions and date. Nothing is loaded from elsewhere: no network, no
external CSS, JS or fonts, no JavaScript at all. The page is a jinja2 template
(``studies/templates/report.html.j2``) with autoescaping: every piece of text from the study is
escaped.

This module imports neither torch nor the training code, so a report is quick to make on a
machine that is busy training.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import jinja2
from markupsafe import Markup

from common.errors import UserError
from common.files import inside
from common.versions import code_commit, package_versions
from pipelines.attack_output import AttackOutput
from studies.study_folder import (check_study, read_json_dict, read_results, read_spec, read_summary, read_yaml_dict, recorded_versions,
                                  study_figures, study_names)

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Keys of a training run's config.yaml that differ between runs of one grid point by construction.
TRAIN_PER_RUN_KEYS = ["seed", "out"]
# Keys of an attack cell's config.yaml that differ between cells by construction (paths, seed).
ATTACK_PER_CELL_KEYS = ["run", "update", "global_model", "out", "optim.seed"]

e = html.escape


# ----------------------------------------------------------------------------- entry point


def write_report(study_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``study_dir`` and write the HTML atomically (temp file + rename); returns the path."""
    study_dir = Path(study_dir)
    check_study(study_dir)
    out = Path(out) if out is not None else study_dir / "report.html"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    page = render(study_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for sharing
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- small formatters


def fmt_number(value: Any) -> str:
    """Round a CSV value for display; text stays as it is."""
    if value is None:
        return ""
    text = str(value).strip()
    if text in ("", "None"):
        return ""
    try:
        number = float(text)
    except ValueError:
        return text
    if re.fullmatch(r"[+-]?\d+", text):
        return text
    if not math.isfinite(number):
        return text.lower()
    if number == 0:
        return "0"
    if abs(number) >= 100:
        return f"{number:.1f}"
    if abs(number) >= 0.01:
        return f"{number:.3f}"
    return f"{number:.2e}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width > 0 and height > 0 else None


def image_tag(path: Path, alt: str, css: str = "") -> Markup:
    """An <img> with the PNG inlined as a data URI, or a note when the file is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return Markup(f'<p class="note">missing image: {e(path.name)}</p>')
    size = png_size(data)
    if size is None:
        return Markup(f'<p class="note">{e(path.name)} is not a PNG image; not embedded</p>')
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    klass = f' class="{e(css)}"' if css else ""
    return Markup(f'<img{klass} src="{uri}" alt="{e(alt)}" width="{size[0]}" height="{size[1]}">')


def table_html(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None,
               align: list[str | None] | None = None, css: str = "") -> Markup:
    """Cells are escaped here; ``numeric`` right-aligns columns."""
    numeric = numeric or [False] * len(header)
    align = align or [None] * len(header)

    def attrs(j: int) -> str:
        if j < len(align) and align[j]:
            return f' style="text-align:{align[j]}"'
        return ' class="num"' if j < len(numeric) and numeric[j] else ""

    klass = f' class="{e(css)}"' if css else ""
    out = [f"<table{klass}>", "<thead><tr>" + "".join(f"<th{attrs(j)}>{e(h)}</th>" for j, h in enumerate(header)) + "</tr></thead>", "<tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{attrs(j)}>{e(c)}</td>" for j, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return Markup("\n".join(out))


# ----------------------------------------------------------------------------- environment


def versions() -> list[tuple[str, str]]:
    """Python and package versions at report time, and the platform."""
    return list(package_versions(with_platform=True).items())


def git_commit(root: Path = ROOT) -> str:
    """The code's git commit (with a note when the tracked files have uncommitted changes)."""
    return code_commit(root)


# ----------------------------------------------------------------------------- configs


def _without(tree: Any, dotted: list[str]) -> Any:
    """A copy of a nested dict without the given dotted keys."""
    if not isinstance(tree, dict):
        return tree
    tree = json.loads(json.dumps(tree, default=str))
    for key in dotted:
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return tree


def group_configs(paths: list[tuple[str, Path]], ignore: list[str]) -> list[tuple[str, str, list[str]]]:
    """[(first label, its exact config text, labels of every config equal to it apart from ``ignore``)]."""
    groups: dict[str, tuple[str, str, list[str]]] = {}
    for label, path in paths:
        data, text = read_yaml_dict(path)
        if text is None:
            continue
        key = json.dumps(_without(data, ignore), sort_keys=True, default=str) if data is not None else "text:" + text
        if key not in groups:
            groups[key] = (label, text, [])
        groups[key][2].append(label)
    return list(groups.values())


# ----------------------------------------------------------------------------- the page

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1.5rem; color: #1b1f23; line-height: 1.45; }
h1 { margin-bottom: .2rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
.meta, .note, figcaption { color: #57606a; font-size: .9rem; }
nav ul { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; list-style: none; padding: 0; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .85rem; }
th, td { border: 1px solid #d0d7de; padding: .2rem .45rem; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
.scroll { overflow-x: auto; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem; }
.gallery figure { margin: 0; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: .6rem; overflow-x: auto; font-size: .8rem; }
code { background: #f6f8fa; padding: 0 .2rem; }
details { margin: .4rem 0 1rem; }
summary { cursor: pointer; }
footer { margin-top: 3rem; color: #57606a; font-size: .8rem; }
"""


TEMPLATES = Path(__file__).resolve().parent / "templates"


def _environment() -> jinja2.Environment:
    # every value printed by the template is escaped (html.escape) unless it is already markup
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False, finalize=_escape, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.globals.update(image=image_tag, table=table_html, numeric_class=_numeric_class, stem=lambda name: Path(name).stem)
    return env


def _escape(value: Any) -> str:
    return value if isinstance(value, Markup) else e(str(value))


def render(study_dir: Path) -> str:
    fields, rows = read_results(study_dir / "results.csv")
    spec, spec_text = read_spec(study_dir)
    name, title = study_names(spec, study_dir)
    generated = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    results_time = dt.datetime.fromtimestamp((study_dir / "results.csv").stat().st_mtime, dt.timezone.utc).replace(microsecond=0)
    figures = study_figures(study_dir)
    figure_ids = {p.name: f"fig-{slug(p.stem)}" for p in figures}
    return _environment().get_template("report.html.j2").render(
        css=Markup(CSS), title=title, name=name, study_dir=str(study_dir), generated=generated.isoformat(),
        sections=SECTIONS, facts=summary_facts(spec, rows), summary=read_summary(study_dir), figure_ids=figure_ids,
        figures=[{"id": figure_ids[p.name], "image": p, "alt": p.stem, "name": p.name} for p in figures],
        results=results_table(fields, rows), gallery=gallery_cells(study_dir, spec, rows), spec_text=spec_text,
        config_blocks=config_blocks(study_dir, rows), environment=environment_rows(generated, results_time),
        recorded=recorded_versions(study_dir),
    )


SECTIONS = [("summary", "Summary"), ("figures", "Figures"), ("results", "All results"), ("gallery", "Reconstructions"),
            ("configs", "Configs"), ("environment", "Software and date")]


def _numeric_class(cell: str) -> Markup:
    return Markup(' class="num"') if re.match(r"^[+-]?(\d|\.\d)", cell) or cell == "n/a" else Markup("")


def summary_facts(spec: dict[str, Any], rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    seeds = spec.get("seeds") or sorted({r.get("seed", "") for r in rows}, key=lambda s: (not _is_number(s), s))
    targets = spec.get("targets") or []
    facts: list[tuple[str, str]] = [
        ("attacked updates", f"{len(rows)} (rows of results.csv)"),
        ("training runs", str(len({r.get("train_key") for r in rows if r.get("train_key")}))),
        ("seeds", ", ".join(str(s) for s in seeds)),
    ]
    for axis in grid:
        facts.append((f"axis {axis}", ", ".join(str(v) for v in (grid.get(axis) or {}))))
    if targets:
        facts.append(("targets", "; ".join(
            f"round {t.get('round')}, client {t.get('client')}" if isinstance(t, dict) else str(t) for t in targets)
            + (" (every captured client of those rounds)" if spec.get("all_clients") else "")))
    train = spec.get("train") if isinstance(spec.get("train"), dict) else {}
    attack = spec.get("attack") if isinstance(spec.get("attack"), dict) else {}
    if train.get("config") or attack.get("config"):
        facts.append(("base configs", f"train: {train.get('config') or 'configs/default.yaml'}; "
                                      f"attack: {attack.get('config') or 'configs/attack/default.yaml'}"))
    for metric in ("ssim", "rdlv", "test_accuracy"):
        vals = [float(r[metric]) for r in rows if r.get(metric) not in (None, "", "None") and _is_number(r[metric])
                and math.isfinite(float(r[metric]))]
        if vals:
            facts.append((f"{metric} over all rows", f"min {fmt_number(min(vals))}, mean {fmt_number(sum(vals) / len(vals))}, "
                                                      f"max {fmt_number(max(vals))} (n={len(vals)})"))
    return facts


def results_table(fields: list[str], rows: list[dict[str, str]]) -> dict[str, Any]:
    numeric = [all(_is_number(r.get(f) or "0") or (r.get(f) or "") in ("", "None") for r in rows)
               and any(_is_number(r.get(f) or "") for r in rows) for f in fields]
    return {"header": fields, "rows": [[fmt_number(r.get(f)) for f in fields] for r in rows], "numeric": numeric}


def gallery_cells(study_dir: Path, spec: dict[str, Any], rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    by_cell = {r.get("cell"): r for r in rows}
    out = []
    for cell in dict.fromkeys(r.get("cell") for r in rows if r.get("cell")):
        row = by_cell[cell]
        cell_dir = inside(study_dir / "cells", str(cell), "results.csv cell")
        info = read_json_dict(cell_dir / "cell.json")
        axes = info.get("axes") if isinstance(info.get("axes"), dict) else {a: row.get(a, "") for a in grid}
        metrics = read_json_dict(AttackOutput(cell_dir).metrics)
        labels = [f"{k} = {v}" for k, v in axes.items()]
        labels += [f"seed {info.get('seed', row.get('seed', ''))}", f"round {info.get('round', row.get('round', ''))}",
                   f"client {info.get('client', row.get('client', ''))}"]
        scores = (f"SSIM {fmt_number(metrics.get('ssim', row.get('ssim'))) or 'n/a'}, "
                  f"RDLV {fmt_number(metrics.get('rdlv', row.get('rdlv'))) or 'n/a'}")
        out.append({"name": str(cell), "slug": slug(str(cell)), "image": AttackOutput(cell_dir).figure, "labels": ", ".join(labels),
                    "scores": scores, "alt": f"reconstruction of cell {cell}: " + ", ".join(labels)})
    return out


def config_blocks(study_dir: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One block per distinct training config and per distinct attack config (apart from per-run keys)."""
    train_keys = list(dict.fromkeys(r.get("train_key") for r in rows if r.get("train_key")))
    seeds = {r.get("train_key"): r.get("seed", "") for r in rows}

    def train_notes(members: list[str], label: str) -> list[str]:
        run_json = read_json_dict(study_dir / label / "run.json")
        notes = ["study overrides: " + json.dumps(run_json["overrides"], default=str)] if run_json.get("overrides") else []
        listed = ", ".join(f"{m} (seed {seeds.get(m.split('/', 1)[1], '')})" for m in members)
        return [f"Runs: {listed}"] + notes

    train = [(f"train/{k}", inside(study_dir / "train", str(k), "results.csv train_key") / "config.yaml") for k in train_keys]
    missing = [label.split("/", 1)[1] for label, path in train if not path.is_file()]
    cells = list(dict.fromkeys(r.get("cell") for r in rows if r.get("cell")))
    attack = [(f"cells/{c}", inside(study_dir / "cells", str(c), "results.csv cell") / "config.yaml") for c in cells]
    return [
        _config_block("Training runs", "runs", "run", train, TRAIN_PER_RUN_KEYS, train_notes, ", ".join(missing)),
        _config_block("Attacks", "cells", "cell", attack, ATTACK_PER_CELL_KEYS,
                      lambda members, label: ["Cells: " + ", ".join(m.split("/", 1)[1] for m in members)], ""),
    ]


def _config_block(title: str, plural: str, singular: str, entries: list[tuple[str, Path]], per_keys: list[str],
                  notes: Callable[[list[str], str], list[str]], missing: str) -> dict[str, Any]:
    groups = [{"label": label, "text": text, "notes": notes(members, label)} for label, text, members in group_configs(entries, per_keys)]
    return {"title": title, "plural": plural, "singular": singular, "count": len(entries), "per_keys": per_keys, "groups": groups,
            "missing": missing}


def environment_rows(generated: dt.datetime, results_time: dt.datetime) -> list[list[str]]:
    rows = [["report generated (UTC)", generated.isoformat()], ["results.csv written (UTC)", results_time.isoformat()],
            ["git commit", git_commit()]]
    return rows + [[k, v] for k, v in versions()]


