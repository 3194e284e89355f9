"""report.py: a tiny real study as one self-contained HTML page, checked in a real headless Chromium.

The browser test needs the Debian packages chromium and chromium-driver (and selenium from
requirements.txt). Without them it is skipped, except in CI (CI=true), where it fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from common.config_loader import build
from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "apt-get install -y chromium chromium-driver"
TITLE = 'Tiny <sigma0> & "study"'  # markup characters: the page must escape them


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A real 2-cell study (sigma0 = 0 and 5, one seed, 2 rounds, 5 attack iterations), analysed."""
    from studies.analyze import analyze
    from studies.runner import StudyRunner
    from studies.spec import StudySpec

    out = tmp_path_factory.mktemp("report") / "study"
    spec = build(StudySpec, {
        "name": "tiny_sigma0",
        "out": str(out),
        "seeds": [0],
        "train": {"config": "configs/default.yaml", "overrides": {
            "data.image_size": 16, "model.name": "bn_convnet", "model.resize_to": 0, "model.width": 8, "model.depth": 3,
            "fl.rounds": 2, "capture.clients": [2, 3], "capture.rounds": [-1], "logging.wandb": False}},
        "attack": {"config": "configs/attack/default.yaml",
                   "overrides": {"optim.iterations": 5, "scoring.lpips": False, "logging.wandb": False, "escalation.enabled": False}},
        "targets": [{"round": -1, "client": 3}],
        "grid": {"sigma0": {
            "0": {"train": {"privacy.filters": [{"name": "gaussian", "sigma0": 0}]}},
            "5": {"train": {"privacy.filters": [{"name": "gaussian", "sigma0": 5}]}},
        }},
        "report": {
            "title": TITLE,
            "plots": [{"kind": "privacy_utility", "x": "sigma0", "metric": "rdlv"}],
            "tables": [{"row": "sigma0", "metric": "rdlv"}, {"row": "sigma0", "metric": "test_accuracy"}],
        },
    })
    results = StudyRunner(spec, progress=False).run()
    analyze(results.parent, spec)
    return results.parent


@pytest.fixture(scope="module")
def report(study) -> Path:
    from studies.html_report import write_report

    return write_report(study)


class _Page(HTMLParser):
    """Tags with their attributes, and nesting errors of non-void elements."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_report_is_self_contained(study: Path, report: Path):
    assert report == study / "report.html" and report.is_file()
    assert not list(study.glob(".report.html.*")), "a temporary file of the atomic write was left behind"
    text = report.read_text(encoding="utf-8")
    page = _parse(text)
    assert text.startswith("<!DOCTYPE html>")
    assert not page.errors, page.errors[:5]
    assert not page.stack, f"unclosed elements: {page.stack}"

    # nothing external: no network, no other files, no scripts
    assert 'src="http' not in text and "src='http" not in text and 'src="//' not in text
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed")]
    links = [a for t, a in page.tags if t == "link"]
    assert all(a.get("href", "").startswith("data:") for a in links), links
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), f"<{tag} {key}={value[:60]!r}> points outside the page"

    # every PNG of the study and every cell's reconstruction, inlined
    images = [a for t, a in page.tags if t == "img"]
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    figures = sorted(p.name for p in study.glob("*.png"))
    assert "gallery.png" in figures and any(re.match(r"00_privacy_utility_rdlv", f) for f in figures), figures
    cells = sorted(p.name for p in (study / "cells").iterdir() if (p / "reconstruction.png").is_file())
    assert len(cells) == 2
    assert len(images) == len(figures) + len(cells)
    words = "".join(page.text)
    for name in figures:
        assert name in words
    for cell in cells:
        assert f'id="cell-{cell}"' in text

    # summary.md's tables as HTML tables, the full results table, configs, versions
    assert "rdlv by sigma0 (mean ± std over seeds)" in words
    assert "test_accuracy by sigma0 (mean ± std over seeds)" in words
    assert text.count("<table") >= 4  # two summary tables, results, versions
    assert "(n=1)" in words and "|---" not in text
    header = (study / "results.csv").read_text().splitlines()[0].split(",")
    for column in header:
        assert f">{column}</th>" in text
    assert "sigma0 = 0" in words and "sigma0 = 5" in words and "SSIM " in words and "RDLV " in words
    assert "study.yaml" in words and "name: tiny_sigma0" in words
    assert "Training runs (2 runs, 2 distinct configs)" in words
    assert "Attacks (2 cells, 1 distinct config)" in words
    assert "iterations: 5" in words and "sigma0: 5" in words
    for package in ("python", "torch", "pytorch_lightning", "timm", "torchmetrics", "numpy", "git commit"):
        assert f">{package}</td>" in text
    # escaped: the title's markup characters are text, not tags
    assert "<sigma0>" not in text and "&lt;sigma0&gt;" in text
    assert "<title>Tiny &lt;sigma0&gt; &amp; &quot;study&quot;</title>" in text


def test_summary_tables_come_from_the_data_and_are_escaped(study: Path, tmp_path: Path):
    """The report renders summary.json (the data summary.md is made from): cells escaped, numbers right-aligned."""
    import json

    from studies.html_report import render

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["tables"] = [{"heading": "x <b>by</b> y", "header": ["k", "v & w"],
                          "rows": [["<i>1</i>", "0.5 ± 0.1 (n=2)"], ["a", "n/a"]]}]
    (copy / "summary.json").write_text(json.dumps(summary))
    page = render(copy)
    assert "<h4>x &lt;b&gt;by&lt;/b&gt; y</h4>" in page
    assert "<thead><tr><th>k</th><th>v &amp; w</th></tr></thead>" in page
    assert '<tr><td>&lt;i&gt;1&lt;/i&gt;</td><td class="num">0.5 ± 0.1 (n=2)</td></tr>' in page
    assert '<tr><td>a</td><td class="num">n/a</td></tr>' in page
    (copy / "summary.json").unlink()
    assert "No <code>summary.json</code> in the study folder" in render(copy)


def test_summary_markdown_is_rendered_from_the_same_data(study: Path):
    import json

    from studies.analyze import summary_markdown

    summary = json.loads((study / "summary.json").read_text())
    assert (study / "summary.md").read_text() == summary_markdown(summary)
    assert "| sigma0 | rdlv |\n|---|---|\n| 0 | " in summary_markdown(summary)


# ----------------------------------------------------------------------------- the browser


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skip (locally) or fail (CI) when something is missing."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
    missing = [name for name, path in (("chromium", chromium), ("chromedriver (package chromium-driver)", driver)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -r requirements.txt)")
    if missing:
        message = (f"the headless-browser test of report.html needs {', '.join(missing)}; "
                   f"install the browser with: {INSTALL_HINT}")
        if _in_ci():
            pytest.fail(f"CI is set and {message}")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _load(driver, path: Path) -> list[dict]:
    """Open ``path`` and return the browser console entries it produced."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return driver.get_log("browser")


IMAGES_JS = "return Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}));"


def test_report_in_headless_chromium(report: Path, browser, tmp_path):
    # control: a broken image must show up as a SEVERE console entry, or the check below proves nothing
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>c</title>'
                       '<link rel="icon" href="data:,"></head><body><img src="missing.png" alt="x"></body></html>')
    logs = _load(browser, control)
    assert any(entry["level"] == "SEVERE" for entry in logs), f"the browser log is not captured: {logs}"

    logs = _load(browser, report)
    severe = [entry for entry in logs if entry["level"] == "SEVERE"]
    assert not severe, severe
    assert browser.title == TITLE
    images = browser.execute_script(IMAGES_JS)
    assert len(images) >= 1
    broken = [img for img in images if not img["complete"] or img["width"] <= 0]
    assert not broken, broken
    assert browser.execute_script("return document.querySelectorAll('table').length") >= 4


# ----------------------------------------------------------------------------- the command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "report.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_missing_folder_is_one_line_error(tmp_path):
    result = _cli(str(tmp_path / "no_such_study"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_folder_without_results_is_one_line_error(tmp_path):
    (tmp_path / "study.yaml").write_text("name: half\n")
    result = _cli(str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "results.csv" in lines[0], result.stderr
    with pytest.raises(UserError):
        from studies.html_report import write_report

        write_report(tmp_path)


def test_cli_writes_out_file(study: Path, tmp_path):
    out = tmp_path / "nested" / "tiny.html"
    result = _cli(str(study), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and str(out) in result.stdout
    assert not list(out.parent.glob(".tiny.html.*"))
    assert "--out FILE" in _cli("--help").stdout


def _no_network(monkeypatch) -> list:
    """Every attempt to open a connection is recorded and refused."""
    import socket

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_the_wandb_report_holds_every_table_and_figure_of_report_html(study: Path, report: Path, tmp_path: Path, monkeypatch):
    """Built offline, with no network call; its specification lies beside report.html."""
    import json

    from studies.study_folder import read_summary, study_figures
    from studies.tables import markdown_table
    from studies.wandb_report import SPEC_FILE, write_wandb_report

    calls = _no_network(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # logged in, but offline: never saved
    path, url = write_wandb_report(study, report.parent / SPEC_FILE, entity="my-team")
    assert url is None and calls == [] and path == study / "wandb_report.json"
    saved = json.loads(path.read_text())
    assert saved["entity"] == "my-team" and saved["project"] == "fl-leakage-tiny_sigma0" and saved["title"] == TITLE
    blocks = saved["spec"]["blocks"]
    text = json.dumps(blocks)

    def headings(level: int) -> list[str]:
        return ["".join(c.get("text", "") for c in b["children"]) for b in blocks if b["type"] == "heading" and b["level"] == level]

    assert headings(1) == ["Summary", "Summary tables", "Figures", "All results", "Training runs", "Attacks"]
    # every summary table of report.html, under its heading, with the same cells
    summary = read_summary(study)
    assert headings(2) == [t["heading"] for t in summary["tables"]] and len(summary["tables"]) >= 2
    markdown = [b["content"] for b in blocks if b["type"] == "markdown-block"]
    assert markdown == [markdown_table(t["header"], t["rows"]) for t in summary["tables"]]
    # every figure of report.html, as a media panel of the study run's image logged under the file's stem
    figures = study_figures(study)
    assert [p.name for p in figures] == sorted(p.name for p in study.glob("*.png")) and len(figures) >= 2
    for png in figures:
        assert f'"mediaKeys": ["{png.stem}"]' in text, png.stem
    # all results (the study run's table) and panels over the synced runs
    assert '"key": {"nodeType": "const", "type": "string", "val": "results"}' in text  # the Weave panel reading the study run's table
    assert "test/accuracy" in text and '"reconstruction"' in text
    assert {(r["project"], r["query"]) for r in saved["runsets"]} == {
        ("fl-leakage-tiny_sigma0", "study-tiny_sigma0"), ("fl-leakage-tiny_sigma0", "train-"), ("fl-leakage-tiny_sigma0", "attack-")}
    # without an entity the entity is '' (no lookup of a default entity over the network)
    path, url = write_wandb_report(study, tmp_path / SPEC_FILE)
    assert url is None and calls == [] and json.loads(path.read_text())["entity"] == ""


def test_cli_wandb_report_offline_writes_the_specification(study: Path, tmp_path: Path):
    out = tmp_path / "r" / "report.html"
    done = subprocess.run([sys.executable, "report.py", str(study), "--out", str(out), "--wandb-report", "--entity", "my-team"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "wandb_report.json").is_file() and out.is_file()
    assert "not saved: not logged in to W&B, or WANDB_MODE is offline/disabled" in done.stdout, done.stdout
    done = _cli(str(study), "--out", str(tmp_path / "x.html"), "--entity", "my-team")
    assert done.returncode == 2 and done.stderr.strip() == "error: --entity and --project are for --wandb-report", done.stderr


def _copy_with_results(study: Path, tmp_path: Path, edit) -> Path:
    """A copy of the study whose results.csv went through ``edit`` (lines -> lines)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    lines = (copy / "results.csv").read_text().splitlines(keepends=True)
    (copy / "results.csv").write_text("".join(edit(lines)))
    return copy


def _with_cell(lines: list[str], name: str) -> list[str]:
    header = lines[0].rstrip("\r\n").split(",")
    first = lines[1].rstrip("\r\n").split(",")
    first[header.index("cell")] = name
    return [lines[0], ",".join(first) + "\n", *lines[2:]]


@pytest.mark.parametrize("name", ["../../outside", "ABSOLUTE", "link"])
def test_a_cell_name_that_leaves_the_study_is_refused(study: Path, tmp_path: Path, name: str):
    """A results.csv is data a user may be handed: its cell names never become paths outside the study."""
    from studies.html_report import write_report

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cell.json").write_text('{"seed": "secret"}')
    name = str(outside) if name == "ABSOLUTE" else name
    copy = _copy_with_results(study, tmp_path, lambda lines: _with_cell(lines, name))
    if name == "link":
        (copy / "cells" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="points outside"):
        write_report(copy)


def test_a_torn_or_column_less_results_csv_is_refused(study: Path, tmp_path: Path):
    from studies.html_report import write_report

    torn = _copy_with_results(study, tmp_path / "torn", lambda lines: [*lines[:-1], lines[-1][: len(lines[-1]) // 3]])
    with pytest.raises(UserError, match="torn: line"):
        write_report(torn)
    no_cell = _copy_with_results(study, tmp_path / "nocell", lambda lines: ["a,b\n", "1,2\n"])
    with pytest.raises(UserError, match="no 'cell' column"):
        write_report(no_cell)
