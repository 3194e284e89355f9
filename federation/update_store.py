"""Reading and writing one update (update.safetensors + meta.json), checked; the run around it is
:class:`federation.run_layout.RunLayout` (docs/update-format.md)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.files import load_tensors, read_json, save_tensors, write_json
from federation.run_layout import RunLayout, update_meta, update_tensors
from federation.update_meta import check_meta, required_fields

FORMAT = "fl-leakage-update/1"
REQUIRED_META = required_fields()  # the schema's required keys (federation/update_meta.py), checked first for a clear message


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_update(directory: Path, delta: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write update.safetensors first and meta.json last: a folder with meta.json is complete."""
    save_tensors(update_tensors(directory), delta)
    write_json(update_meta(directory), meta)


def load_update(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check an update; every problem becomes a one-line :class:`UserError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"update folder not found: {directory}")
    meta_file = update_meta(directory)
    meta = read_json(meta_file, "update metadata")
    if not isinstance(meta, dict):
        raise UserError(f"update metadata {meta_file} must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"update metadata {meta_file} lacks {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise UserError(f"update metadata format '{meta['format']}' is not {FORMAT}")
    check_meta(meta, meta_file)
    delta = load_tensors(update_tensors(directory), "update file")
    if not delta:
        raise UserError(f"update {update_tensors(directory)} holds no tensors")
    for key, value in delta.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = "NaN" if torch.isnan(value).any() else "Inf"
            raise UserError(f"update {directory} holds {bad} values in '{key}'")
    return delta, meta


def update_root(update_directory: Path) -> Path:
    """The folder an update's own files may live in: its run (RUN/updates/round_r/client_c), else the update folder."""
    where = RunLayout.of_update(update_directory)
    return where.run.root if where is not None else update_directory.resolve()


def resolve_global_model(update_directory: Path, meta: dict[str, Any], explicit: str | Path | None = None) -> Path:
    """The global model the client started from: explicit path, else the one meta.json names.

    meta.json is data that may come from elsewhere, so the path it names must be relative and stay
    inside the update's run (or the update folder when it is not part of a run); any other file
    is read only when the user names it on the command line.
    """
    if explicit:
        path = Path(explicit)
    else:
        rel = meta.get("global_model")
        if not rel:
            raise UserError(f"update {update_directory} does not name its global model: pass global_model=FILE")
        root = update_root(update_directory)
        path = (update_directory / rel).resolve()
        if Path(rel).is_absolute() or not path.is_relative_to(root):
            raise UserError(f"update metadata's global_model '{rel}' points outside {root}: pass global_model=FILE to use that file")
    if not path.is_file():
        raise UserError(f"global model not found: {path}")
    expected = meta.get("global_model_sha256")
    if expected and sha256(path) != expected:
        raise UserError(f"global model {path} is not the one this update was computed from (sha256 differs)")
    return path


def high_risk_update(run: str | Path) -> Path:
    """The latest round's update of the client with the fewest local images (then smallest batch)."""
    run = Path(run)
    updates = RunLayout(run).updates()
    if not updates:
        hint = " (run python train.py first)" if not run.exists() else ""
        raise UserError(f"no captured updates under {run / 'updates'}{hint}")
    last = max(r for r, _, _ in updates)

    def risk(item: tuple[int, int, Path]) -> tuple[int, int, int]:
        meta = read_json(update_meta(item[2]), "update metadata")
        return int(meta.get("num_images", math.inf)), int(meta.get("batch_size", math.inf)), item[1]

    return min((u for u in updates if u[0] == last), key=risk)[2]
