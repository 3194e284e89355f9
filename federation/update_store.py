"""The on-disk contract of a run (documented in docs/update-format.md).

    RUN/global/round_<r>.safetensors                      global model sent to clients in round r
    RUN/updates/round_<r>/client_<c>/update.safetensors   what left the client (state-dict deltas)
    RUN/updates/round_<r>/client_<c>/meta.json            what the attacker is told
    RUN/ground_truth/round_<r>/client_<c>/...             scoring only; never read by the attack
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.files import load_tensors, read_json, save_tensors, write_json
from federation.update_meta import check_meta, required_fields

FORMAT = "fl-leakage-update/1"
REQUIRED_META = required_fields()  # the schema's required keys (federation/update_meta.py), checked first for a clear message


def global_model_path(run: Path, rnd: int) -> Path:
    return run / "global" / f"round_{rnd}.safetensors"


def update_dir(run: Path, rnd: int, client: int) -> Path:
    return run / "updates" / f"round_{rnd}" / f"client_{client}"


def ground_truth_dir(run: Path, rnd: int, client: int) -> Path:
    return run / "ground_truth" / f"round_{rnd}" / f"client_{client}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_update(directory: Path, delta: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write update.safetensors first and meta.json last: a folder with meta.json is complete."""
    save_tensors(directory / "update.safetensors", delta)
    write_json(directory / "meta.json", meta)


def load_update(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check an update; every problem becomes a one-line :class:`UserError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"update folder not found: {directory}")
    meta = read_json(directory / "meta.json", "update metadata")
    if not isinstance(meta, dict):
        raise UserError(f"update metadata {directory / 'meta.json'} must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"update metadata {directory / 'meta.json'} lacks {', '.join(missing)}")
    if meta["format"] != FORMAT:
        raise UserError(f"update metadata format '{meta['format']}' is not {FORMAT}")
    check_meta(meta, directory / "meta.json")
    delta = load_tensors(directory / "update.safetensors", "update file")
    if not delta:
        raise UserError(f"update {directory / 'update.safetensors'} holds no tensors")
    for key, value in delta.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = "NaN" if torch.isnan(value).any() else "Inf"
            raise UserError(f"update {directory} holds {bad} values in '{key}'")
    return delta, meta


def locate(update_directory: str | Path) -> tuple[Path, int, int] | None:
    """(run, round, client) of an update folder laid out as RUN/updates/round_<r>/client_<c>, else None."""
    d = Path(update_directory).resolve()
    try:
        rnd = int(d.parent.name.removeprefix("round_"))
        client = int(d.name.removeprefix("client_"))
    except ValueError:
        return None
    if d.parent.parent.name != "updates":
        return None
    return d.parent.parent.parent, rnd, client


def update_root(update_directory: Path) -> Path:
    """The folder an update's own files may live in: its run (RUN/updates/round_r/client_c), else the update folder."""
    where = locate(update_directory)
    return where[0] if where is not None else update_directory.resolve()


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


def list_updates(run: Path) -> list[tuple[int, int, Path]]:
    """(round, client, folder) for every complete update of a run, sorted."""
    found = []
    for meta in (run / "updates").glob("round_*/client_*/meta.json"):
        try:
            rnd = int(meta.parent.parent.name.split("_")[1])
            client = int(meta.parent.name.split("_")[1])
        except (IndexError, ValueError):
            continue
        found.append((rnd, client, meta.parent))
    return sorted(found)


def high_risk_update(run: str | Path) -> Path:
    """The latest round's update of the client with the fewest local images (then smallest batch)."""
    run = Path(run)
    updates = list_updates(run)
    if not updates:
        hint = " (run python train.py first)" if not run.exists() else ""
        raise UserError(f"no captured updates under {run / 'updates'}{hint}")
    last = max(r for r, _, _ in updates)

    def risk(item: tuple[int, int, Path]) -> tuple[int, int, int]:
        meta = read_json(item[2] / "meta.json", "update metadata")
        return int(meta.get("num_images", math.inf)), int(meta.get("batch_size", math.inf)), item[1]

    return min((u for u in updates if u[0] == last), key=risk)[2]
