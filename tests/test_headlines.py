"""docs/results.md's headline numbers against their results.csv (bench/headlines.py): green as committed, red when a
CSV or a sentence changes."""
from __future__ import annotations

import csv
import shutil

import bench.headlines as headlines


def test_every_headline_on_the_results_page_matches_its_csv():
    assert headlines.missing(headlines.PAGE.read_text()) == []
    assert len(headlines.HEADLINES) >= 10


def test_a_reworded_number_is_caught():
    page = headlines.PAGE.read_text()
    sentence = headlines.HEADLINES["claim3_pooled_sweep_leaks_everywhere"]()
    assert "55 of 55" in sentence and sentence.split("(")[0] in " ".join(page.split())
    changed = " ".join(page.split()).replace(sentence, sentence.replace("55 of 55", "54 of 55"))
    assert [name for name, _ in headlines.missing(changed)] == ["claim3_pooled_sweep_leaks_everywhere"]


def test_a_changed_csv_is_caught(tmp_path, monkeypatch):
    copy = tmp_path / "results"
    shutil.copytree(headlines.RESULTS, copy, ignore=shutil.ignore_patterns("*.png"))
    path = copy / "per_round" / "results.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = next(r for r in rows if r["num_images"] == "1" and r["verdict"] == "leaks")
    first["verdict"] = "inconclusive"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(headlines, "RESULTS", copy)
    assert [name for name, _ in headlines.missing(headlines.PAGE.read_text())] == ["per_round_one_image_client"]
