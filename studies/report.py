"""A finished study folder as ONE self-contained HTML page (``python report.py STUDY``).

The page holds the study's title and key facts, the tables of ``summary.md`` (converted here: no
markdown dependency), every PNG figure of the study and every cell's ``reconstruction.png`` as
base64 data URIs, the full ``results.csv`` (numbers rounded), the exact configs (``study.yaml``,
one ``config.yaml`` per distinct training config and per distinct attack config) and the software
versions and date. Nothing is loaded from elsewhere: no network, no external CSS, JS or fonts, no
JavaScript at all. Every piece of text from the study is escaped with ``html.escape``.

This module imports neither torch nor the training code, so a report is quick to make on a
machine that is busy training.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import importlib.metadata
import json
import math
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["torch", "torchvision", "pytorch_lightning", "timm", "torchmetrics", "numpy"]
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


def check_study(study_dir: Path) -> None:
    if not study_dir.exists():
        raise UserError(f"study folder not found: {study_dir}")
    if not study_dir.is_dir():
        raise UserError(f"{study_dir} is not a folder (give the study's output folder, e.g. runs/studies/sigma0)")
    if not (study_dir / "results.csv").is_file():
        raise UserError(f"{study_dir} is not a finished study: it has no results.csv (run study.py --config ... first)")


# ----------------------------------------------------------------------------- reading the study


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return (data if isinstance(data, dict) else None), text


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


def img_tag(path: Path, alt: str, css: str = "") -> str:
    """An <img> with the PNG inlined as a data URI, or a note when the file is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return f'<p class="note">missing image: {e(path.name)}</p>'
    size = png_size(data)
    if size is None:
        return f'<p class="note">{e(path.name)} is not a PNG image; not embedded</p>'
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    klass = f' class="{e(css)}"' if css else ""
    return f'<img{klass} src="{uri}" alt="{e(alt)}" width="{size[0]}" height="{size[1]}">'


def table_html(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None,
               align: list[str | None] | None = None, css: str = "") -> str:
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
    return "\n".join(out)


# ----------------------------------------------------------------------------- markdown (the subset analyze.py writes)


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def inline_md(text: str) -> str:
    """Escape ``text``; `code` and **bold** become <code> and <strong>."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(e(text[last:m.start()]))
        out.append(f"<code>{e(m.group(1))}</code>" if m.group(1) is not None else f"<strong>{e(m.group(2))}</strong>")
        last = m.end()
    out.append(e(text[last:]))
    return "".join(out)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")


def md_table(lines: list[str]) -> str:
    """A markdown pipe table (header, separator, rows) as an HTML table."""
    header = _split_row(lines[0])
    body = lines[1:]
    align: list[str | None] = [None] * len(header)
    if body and _SEPARATOR.match(body[0]):
        for j, spec in enumerate(_split_row(body[0])[: len(header)]):
            left, right = spec.startswith(":"), spec.endswith(":")
            align[j] = "center" if left and right else "right" if right else "left" if left else None
        body = body[1:]
    rows = []
    for line in body:
        cells = _split_row(line)
        cells = (cells + [""] * len(header))[: len(header)]
        rows.append(cells)
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{inline_md(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for cells in rows:
        out.append("<tr>" + "".join(f"<td{_cell_attrs(align[j], c)}>{inline_md(c)}</td>" for j, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table>")
    return '<div class="scroll">' + "\n".join(out) + "</div>"


def _cell_attrs(align: str | None, cell: str) -> str:
    if align:
        return f' style="text-align:{align}"'
    return ' class="num"' if _looks_numeric(cell) else ""


def _looks_numeric(cell: str) -> bool:
    return bool(re.match(r"^[+-]?(\d|\.\d)", cell)) or cell == "n/a"


def markdown_to_html(md: str, figure_ids: dict[str, str] | None = None, skip_title: str | None = None) -> str:
    """Headings, paragraphs, pipe tables, lists, fenced code, image lines (as links to the figures).

    Headings move one level down (# -> <h2>) so that they sit under the page's <h1>; a first
    heading equal to ``skip_title`` is dropped. An image line ``![alt](file.png)`` becomes a link
    to that figure in the page's Figures section when ``figure_ids`` knows the file.
    """
    figure_ids = figure_ids or {}
    lines = md.splitlines()
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    i = 0
    first_heading = True

    def flush_para() -> None:
        if para:
            out.append("<p>" + inline_md(" ".join(s.strip() for s in para)) + "</p>")
            para.clear()

    def flush() -> None:
        flush_para()
        if items:
            out.append("<ul>" + "".join(f"<li>{x}</li>" for x in items) + "</ul>")
            items.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith("```"):
            flush()
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            out.append("<pre>" + e("\n".join(code)) + "</pre>")
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", stripped)
        if heading:
            flush()
            text = heading.group(2)
            if not (first_heading and skip_title is not None and text == skip_title):
                level = min(len(heading.group(1)) + 1, 6)
                out.append(f"<h{level}>{inline_md(text)}</h{level}>")
            first_heading = False
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(md_table(block))
            continue
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", stripped)
        if image:
            flush_para()
            alt, src = image.group(1), image.group(2)
            anchor = figure_ids.get(Path(src).name)
            if anchor:
                items.append(f'figure: <a href="#{e(anchor)}">{e(alt or src)}</a>')
            else:
                items.append(f"figure {e(src)} (not in the study folder)")
            i += 1
            continue
        bullet = re.match(r"^[-*]\s+(.*)$", stripped)
        if bullet:
            flush_para()
            items.append(inline_md(bullet.group(1)))
            i += 1
            continue
        if items:
            flush()
        para.append(line)
        i += 1
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------- environment


def versions() -> list[tuple[str, str]]:
    """Python and package versions at report time (read from package metadata: nothing is imported)."""
    out = [("python", sys.version.split()[0])]
    for name in PACKAGES:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    out.append(("platform", platform.platform()))
    return out


def git_commit(root: Path = ROOT) -> str:
    """The code's git commit (with a note when the tracked files have uncommitted changes)."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            reason = (head.stderr.strip().splitlines() or ["not a git checkout"])[0]
            return f"unknown ({reason[:120]})"
        commit = head.stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        if status.returncode == 0 and status.stdout.strip():
            commit += " (with uncommitted changes to tracked files)"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


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
        data, text = _read_yaml(path)
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


def render(study_dir: Path) -> str:
    fields, rows = read_results(study_dir / "results.csv")
    spec, spec_text = read_spec(study_dir)
    report = spec.get("report") if isinstance(spec.get("report"), dict) else {}
    name = str(spec.get("name") or study_dir.resolve().name)
    title = str(report.get("title") or name)
    generated = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    results_time = dt.datetime.fromtimestamp((study_dir / "results.csv").stat().st_mtime, dt.timezone.utc).replace(microsecond=0)

    figures = sorted(p for p in study_dir.glob("*.png") if p.is_file())
    figure_ids = {p.name: f"fig-{slug(p.stem)}" for p in figures}

    sections = [
        ("summary", "Summary", summary_section(study_dir, spec, rows, fields, title, figure_ids)),
        ("figures", "Figures", figures_section(figures, figure_ids)),
        ("results", "All results", results_section(fields, rows)),
        ("gallery", "Reconstructions", gallery_section(study_dir, spec, rows)),
        ("configs", "Configs", configs_section(study_dir, spec_text, rows)),
        ("environment", "Software and date", environment_section(study_dir, generated, results_time)),
    ]
    nav = "<nav><ul>" + "".join(f'<li><a href="#{sid}">{e(label)}</a></li>' for sid, label, _ in sections) + "</ul></nav>"
    body = "\n".join(f'<section id="{sid}">\n<h2>{e(label)}</h2>\n{content}\n</section>' for sid, label, content in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'  # no favicon request
        f"<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{e(title)}</h1>\n"
        f'<p class="meta">Study <code>{e(name)}</code> in <code>{e(str(study_dir))}</code>; '
        f"report generated {e(generated.isoformat())}.</p>\n</header>\n"
        f"{nav}\n{body}\n"
        '<footer>Made by <code>report.py</code>: a single self-contained file (images inlined as data URIs, '
        "no scripts, nothing loaded from the network).</footer>\n"
        "</body>\n</html>\n"
    )


def summary_section(study_dir: Path, spec: dict[str, Any], rows: list[dict[str, str]], fields: list[str], title: str,
                    figure_ids: dict[str, str]) -> str:
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    axes = list(grid) or []
    seeds = spec.get("seeds") or sorted({r.get("seed", "") for r in rows}, key=lambda s: (not _is_number(s), s))
    targets = spec.get("targets") or []
    facts: list[tuple[str, str]] = [
        ("attacked updates", f"{len(rows)} (rows of results.csv)"),
        ("training runs", str(len({r.get("train_key") for r in rows if r.get("train_key")}))),
        ("seeds", ", ".join(str(s) for s in seeds)),
    ]
    for axis in axes:
        values = grid.get(axis) or {}
        facts.append((f"axis {axis}", ", ".join(str(v) for v in values)))
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
    out = ['<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>"]
    summary = study_dir / "summary.md"
    if summary.is_file():
        out.append(f'<p class="note">From <code>summary.md</code> (written by <code>studies/analyze.py</code>):</p>')
        out.append(markdown_to_html(summary.read_text(encoding="utf-8", errors="replace"), figure_ids, skip_title=title))
    else:
        out.append('<p class="note">No <code>summary.md</code> in the study folder (the study was not analysed; '
                   "re-run the same <code>study.py</code> command, which reuses every finished cell).</p>")
    return "\n".join(out)


def figures_section(figures: list[Path], figure_ids: dict[str, str]) -> str:
    if not figures:
        return '<p class="note">The study folder has no PNG figures.</p>'
    out = []
    for path in figures:
        out.append(f'<figure id="{e(figure_ids[path.name])}">{img_tag(path, path.stem)}'
                   f"<figcaption>{e(path.name)}</figcaption></figure>")
    return "\n".join(out)


def results_section(fields: list[str], rows: list[dict[str, str]]) -> str:
    if not rows:
        return '<p class="note">results.csv has no rows.</p>'
    numeric = [all(_is_number(r.get(f) or "0") or (r.get(f) or "") in ("", "None") for r in rows)
               and any(_is_number(r.get(f) or "") for r in rows) for f in fields]
    body = []
    for r in rows:
        body.append([fmt_number(r.get(f)) for f in fields])
    head = (f'<p class="note">{len(rows)} rows, one per attacked update (<code>results.csv</code>); '
            "floats rounded to 3 decimals (1 decimal from 100 up, scientific below 0.01).</p>")
    return head + '<div class="scroll">' + table_html(fields, body, numeric, css="results") + "</div>"


def gallery_section(study_dir: Path, spec: dict[str, Any], rows: list[dict[str, str]]) -> str:
    cells = list(dict.fromkeys(r.get("cell") for r in rows if r.get("cell")))
    if not cells:
        return '<p class="note">No cells in results.csv.</p>'
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    by_cell = {r.get("cell"): r for r in rows}
    out = ['<p class="note">Each attacked update\'s <code>cells/&lt;id&gt;/reconstruction.png</code>, '
           "as the attack wrote it.</p>", '<div class="gallery">']
    for cell in cells:
        row = by_cell[cell]
        cell_dir = study_dir / "cells" / str(cell)
        info = _read_json(cell_dir / "cell.json")
        axes = info.get("axes") if isinstance(info.get("axes"), dict) else {a: row.get(a, "") for a in grid}
        metrics = _read_json(cell_dir / "metrics.json")
        ssim = metrics.get("ssim", row.get("ssim"))
        rdlv = metrics.get("rdlv", row.get("rdlv"))
        labels = [f"{k} = {v}" for k, v in axes.items()]
        labels += [f"seed {info.get('seed', row.get('seed', ''))}", f"round {info.get('round', row.get('round', ''))}",
                   f"client {info.get('client', row.get('client', ''))}"]
        scores = f"SSIM {fmt_number(ssim) or 'n/a'}, RDLV {fmt_number(rdlv) or 'n/a'}"
        alt = f"reconstruction of cell {cell}: " + ", ".join(labels)
        out.append(f'<figure id="cell-{e(slug(str(cell)))}">{img_tag(cell_dir / "reconstruction.png", alt)}'
                   f"<figcaption>{e(', '.join(labels))}<br>{e(scores)}<br>cell <code>{e(str(cell))}</code></figcaption></figure>")
    out.append("</div>")
    return "\n".join(out)


def configs_section(study_dir: Path, spec_text: str | None, rows: list[dict[str, str]]) -> str:
    out = ["<h3>study.yaml</h3>"]
    out.append(f"<pre>{e(spec_text)}</pre>" if spec_text is not None else '<p class="note">study.yaml is missing.</p>')

    train_keys = list(dict.fromkeys(r.get("train_key") for r in rows if r.get("train_key")))
    seeds = {r.get("train_key"): r.get("seed", "") for r in rows}
    train = [(f"train/{k}", study_dir / "train" / str(k) / "config.yaml") for k in train_keys]

    def train_members(members: list[str], label: str) -> list[str]:
        run_json = _read_json(study_dir / label / "run.json")
        notes = ["study overrides: " + json.dumps(run_json["overrides"], default=str)] if run_json.get("overrides") else []
        listed = ", ".join(f"{m} (seed {seeds.get(m.split('/', 1)[1], '')})" for m in members)
        return [f"Runs: {listed}"] + notes

    out += _config_groups("Training runs", "runs", "run", train, TRAIN_PER_RUN_KEYS, train_members)
    missing = [k for k in train_keys if not (study_dir / "train" / str(k) / "config.yaml").is_file()]
    if missing:
        out.append(f'<p class="note">No config.yaml for training run(s): {e(", ".join(str(k) for k in missing))}</p>')

    cells = list(dict.fromkeys(r.get("cell") for r in rows if r.get("cell")))
    attack = [(f"cells/{c}", study_dir / "cells" / str(c) / "config.yaml") for c in cells]
    out += _config_groups("Attacks", "cells", "cell", attack, ATTACK_PER_CELL_KEYS,
                          lambda members, label: ["Cells: " + ", ".join(m.split("/", 1)[1] for m in members)])
    return "\n".join(out)


def _config_groups(title: str, plural: str, singular: str, entries: list[tuple[str, Path]], per_keys: list[str],
                   notes: Callable[[list[str], str], list[str]]) -> list[str]:
    """One block per distinct config (apart from ``per_keys``), with the members and notes under its name."""
    groups = group_configs(entries, per_keys)
    out = [f"<h3>{title} ({len(entries)} {plural}, {len(groups)} distinct config{'s' if len(groups) != 1 else ''})</h3>",
           f'<p class="note">{plural.capitalize()} whose <code>config.yaml</code> agree apart from '
           f"{', '.join(f'<code>{k}</code>' for k in per_keys)} share one block; the block is the exact "
           f"file of the first {singular} named.</p>"]
    for label, text, members in groups:
        out.append(f"<h4>{e(label)}/config.yaml</h4>")
        out.append("".join(f'<p class="note">{e(x)}</p>' for x in notes(members, label)))
        out.append(f"<pre>{e(text)}</pre>")
    return out


def environment_section(study_dir: Path, generated: dt.datetime, results_time: dt.datetime) -> str:
    rows = [["report generated (UTC)", generated.isoformat()], ["results.csv written (UTC)", results_time.isoformat()],
            ["git commit", git_commit()]]
    rows += [[k, v] for k, v in versions()]
    out = ['<p class="note">Versions are those installed where the report was made (studies do not record them); '
           "run the report in the environment that ran the study.</p>", table_html(["", "version / value"], rows)]
    recorded = {}
    for run_json in sorted(study_dir.glob("train/*/run.json")):
        found = _read_json(run_json).get("versions")
        if isinstance(found, dict):
            recorded[run_json.parent.name] = found
    if recorded:
        out.append("<h3>Versions recorded by training runs</h3>")
        out.append(table_html(["run", "versions"], [[k, ", ".join(f"{a} {b}" for a, b in v.items())] for k, v in recorded.items()]))
    return "\n".join(out)
