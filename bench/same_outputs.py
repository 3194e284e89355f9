"""Do two runs of the same command give the same results? The check behind a behaviour-preserving change.

    python -m bench.same_outputs BEFORE AFTER

BEFORE and AFTER are folders written by the same commands at two commits (e.g. ``train.py out=X/run`` then
``attack.py run=X/run out=X/attack``). Every tensor file is compared byte for byte, and where a safetensors
header's metadata is a dict, as a dict (safetensors writes metadata from a hash map, in no fixed order);
JSON and CSV files are compared as data without timings, provenance and the folders' own paths; metrics.json
also by key order. Figures are not compared. Exit status 1 when anything differs.
"""
from __future__ import annotations

import argparse
import csv
import json
import struct
import sys
from pathlib import Path
from typing import Any

SKIPPED_KEYS = {"seconds", "wall_seconds", "update", "out", "run", "provenance", "versions"}


def _strip(obj: Any, roots: tuple[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, roots) for k, v in obj.items() if k not in SKIPPED_KEYS and "seconds" not in k}
    if isinstance(obj, list):
        return [_strip(v, roots) for v in obj]
    if isinstance(obj, str):
        return obj.replace(roots[0], "<root>").replace(roots[1], "<root>")
    return obj


def _safetensors_parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def same_safetensors(a: Path, b: Path) -> bool:
    """Identical bytes, or identical tensor bytes and headers equal as data (metadata order aside)."""
    if a.read_bytes() == b.read_bytes():
        return True
    (ha, da), (hb, db) = _safetensors_parts(a), _safetensors_parts(b)
    return da == db and ha == hb


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(fh)]


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    roots = (str(a), str(b))
    same, differ = 0, []
    for f in sorted(p for p in a.rglob("*") if p.is_file()):
        rel = f.relative_to(a)
        g = b / rel
        if not g.is_file():
            differ.append(f"{rel} (missing)")
            continue
        if f.suffix == ".safetensors":
            ok = same_safetensors(f, g)
        elif f.suffix == ".json":
            ja, jb = json.loads(f.read_text()), json.loads(g.read_text())
            ok = _strip(ja, roots) == _strip(jb, roots) and (f.name != "metrics.json" or list(ja) == list(jb))
        elif f.suffix == ".csv":
            ok = _csv_rows(f) == _csv_rows(g)
        elif f.suffix in (".yaml", ".txt"):
            ok = f.read_text().replace(roots[0], "<root>") == g.read_text().replace(roots[1], "<root>")
        else:
            continue
        same += ok
        if not ok:
            differ.append(str(rel))
    differ += [f"{p.relative_to(b)} (only in {b})" for p in sorted(b.rglob("*")) if p.is_file() and not (a / p.relative_to(b)).exists()]
    return same, differ


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args()
    same, differ = compare(args.before, args.after)
    for d in differ:
        print(f"differs: {d}")
    print(f"{same} files the same, {len(differ)} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
