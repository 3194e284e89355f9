"""The files a federation writes into its run (besides the updates): setup, per-round metrics, and
what a resume reads back. Paths come from :class:`RunLayout`."""
from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any

import torch

from common.config_loader import dump_yaml
from common.errors import UserError
from common.files import load_tensors, save_tensors, write_json
from datamodules.federated import FederatedSplit
from datamodules.sources import ImagePool
from federation.train_config import TrainConfig
from federation.run_layout import RunLayout

METRIC_FIELDS = ["round", "lr", "clients", "withheld", "test_accuracy", "test_loss", "train_loss", "seconds", "invalid"]


def write_setup(run: RunLayout, cfg: TrainConfig, pool: ImagePool, split: FederatedSplit, prior: torch.Tensor) -> None:
    """What a run holds before its first round: resolved config, population prior, client split."""
    run.config.write_text(dump_yaml(cfg))
    write_prior(run, pool, split, prior)
    write_json(run.split, {
        "clients": [{"images": s.images, "batch_size": s.batch_size, "pool_indices": idx.tolist()}
                    for s, idx in zip(split.specs, split.client_indices)],
        "test_indices": split.test_indices.tolist(), "class_names": pool.class_names,
    })


def prior_population(pool: ImagePool, split: FederatedSplit) -> str:
    """What the prior image is the mean of, in words (recorded in prior.safetensors and said beside RDLV)."""
    public = split.public_indices
    test = len(split.test_indices)
    return f"mean of the {len(public)} {pool.name} images no client holds: {test} test, {len(public) - test} dealt to no client"


def write_prior(run: RunLayout, pool: ImagePool, split: FederatedSplit, prior: torch.Tensor) -> None:
    """The population prior image and per-class means, from the images no client holds (``public_indices``)."""
    public = split.public_indices
    images, labels = pool.images[public], pool.labels[public]
    tensors = {"mean": prior}
    for k, name in enumerate(pool.class_names):
        if (labels == k).any():
            tensors[f"class/{name}"] = images[labels == k].mean(0)
    save_tensors(run.prior, tensors, metadata={"population": prior_population(pool, split), "images": str(len(images)),
                                               "pool_indices": " ".join(str(int(i)) for i in public)})


def append_metrics_csv(path: Any, record: Any) -> None:
    """One metrics.csv row from a ``RoundRecord`` (any object with the METRIC_FIELDS attributes)."""
    new = not path.exists()
    fields = METRIC_FIELDS
    if not new:  # a run resumed from before a column was added keeps its own columns
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), None) or METRIC_FIELDS
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        row: dict[str, Any] = {f: getattr(record, f) for f in METRIC_FIELDS}
        row["clients"] = " ".join(map(str, record.clients))
        row["withheld"] = " ".join(map(str, record.withheld))
        writer.writerow(row)


@dataclasses.dataclass(frozen=True)
class RoundRow:
    """One finished round as metrics.csv records it (the columns every reader needs)."""

    round: int
    test_accuracy: float
    test_loss: float


def read_metrics(path: Any) -> list[RoundRow]:
    """metrics.csv, one row per finished round: the one reader of the file (curves, resume, studies)."""
    with open(path, newline="") as fh:
        return [RoundRow(int(r["round"]), float(r["test_accuracy"]), float(r["test_loss"])) for r in csv.DictReader(fh)]


def finished_rounds(run: RunLayout) -> tuple[int, dict[str, torch.Tensor]] | None:
    """(first round to run, global model) of an interrupted run; None if it finished no round.

    Rounds are the unit of resumption: a round counts as done once its metrics row is written, which
    happens after the aggregated model is saved; audit rows of an unfinished round are dropped.
    """
    if not run.metrics.is_file():
        return None
    done = [row.round for row in read_metrics(run.metrics)]
    nxt = max(done) + 1 if done else 0
    path = run.global_model(nxt)
    if not path.is_file():
        raise UserError(f"cannot resume {run.root}: round {nxt - 1} finished but {path.name} is missing")
    truncate_csv(run.audit, nxt)
    return nxt, load_tensors(path, "global model")


def truncate_csv(path: Any, before_round: int) -> None:
    """Drop rows of rounds >= before_round (left by an interrupted round)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
        fields = list(rows[0].keys()) if rows else []
    if not fields:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["round"]) < before_round)


def append_server_privacy(path: Any, rnd: int, effects: list[dict[str, Any]], state: list[dict[str, Any]]) -> None:
    """One line of the privacy filters' server half for round ``rnd`` (nothing when no filter has one)."""
    if not effects and not any(state):
        return
    with open(path, "a") as fh:
        fh.write(json.dumps({"round": rnd, "effects": effects, "state": state}) + "\n")


def server_privacy_state(path: Any, before_round: int) -> list[dict[str, Any]] | None:
    """The server half's state after round ``before_round - 1`` (a resume); lines of later rounds are dropped."""
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["round"] < before_round]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept[-1]["state"] if kept and kept[-1]["round"] == before_round - 1 else None
