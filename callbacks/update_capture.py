"""Update capture: the client's outbox.

At the start of local training it snapshots the state dict; at the end it forms the delta of every
entry (weights, BN affine, running statistics, num_batches_tracked), runs the privacy filter chain
on it (what leaves the client), and, for the chosen clients and rounds, writes the update with the
metadata an attacker sees, and separately the ground truth for scoring.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from callbacks.batch_statistics import BatchStatisticsRecorder
from common.files import save_tensors, write_json
from datamodules.sources import ImagePool
from federation.update_store import FORMAT, global_model_path, ground_truth_dir, save_update, sha256, update_dir
from lightning_modules.fl_client import LOSS, OptimizerConfig
from lightning_modules.models import ModelSpec
from privacy.base import FilterChain, FilterContext


@dataclasses.dataclass
class ClientRound:
    """Who is training, on what, in which round: the facts the capture needs besides the module."""

    round: int
    client: int
    pool: ImagePool
    indices: torch.Tensor
    batch_size: int
    local_epochs: int
    model_spec: ModelSpec
    optimizer: OptimizerConfig
    lr: float
    seed: int


@dataclasses.dataclass
class ClientResult:
    outgoing: dict[str, torch.Tensor]  # after the privacy filters: what the server receives
    raw: dict[str, torch.Tensor]  # before the filters (ground truth only)
    meta: dict[str, Any]
    num_samples: int
    local_steps: int
    filter_effects: list[dict[str, Any]]
    train_loss: float


def state_delta(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (after[k] - before[k]).detach().clone() for k in before}


class UpdateCapture(pl.Callback):
    def __init__(self, job: ClientRound, filters: FilterChain, run_dir: Path | None, capture: bool,
                 recorder: BatchStatisticsRecorder | None = None):
        self.job = job
        self.filters = filters
        self.run_dir = run_dir
        self.capture = capture and run_dir is not None
        self.recorder = recorder
        self.result: ClientResult | None = None
        self._before: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        job = self.job
        raw = state_delta(self._before, {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()})
        steps = int(trainer.global_step)
        meta = self.metadata(steps, trainer)
        gen = torch.Generator().manual_seed(job.seed + 7919)
        ctx = FilterContext(gen, job.round, job.client, int(job.indices.numel()), steps)
        outgoing, effects = self.filters.apply(raw, ctx)
        meta["withheld_keys"] = sorted(set(raw) - set(outgoing))
        self.result = ClientResult(outgoing, raw, meta, int(job.indices.numel()), steps, effects, pl_module.last_loss)
        if self.capture:
            self.save(self.result)

    def metadata(self, steps: int, trainer: pl.Trainer) -> dict[str, Any]:
        job = self.job
        spec = job.model_spec
        meta = {
            "format": FORMAT,
            "round": job.round,
            "client": job.client,
            "model": spec.to_dict(),
            "input_shape": [spec.in_chans, spec.image_size, spec.image_size],
            "normalization": {"mean": spec.norm_mean, "std": spec.norm_std, "resize_to": spec.resize_to, "value_range": [0.0, 1.0]},
            "loss": dict(LOSS),
            "optimizer": job.optimizer.describe(job.lr),
            "lr": job.lr,
            "batch_size": job.batch_size,
            "num_images": int(job.indices.numel()),
            "local_steps": steps,
            "local_epochs": job.local_epochs,
            "shuffle": True,
            "drop_last": False,
            "bn_momentum": spec.bn_momentum,
            "privacy_filters": self.filters.describe(),
        }
        if self.run_dir is not None:
            gm = global_model_path(self.run_dir, job.round)
            if gm.is_file():
                meta["global_model"] = str(Path("../../../global") / gm.name)
                meta["global_model_sha256"] = sha256(gm)
        return meta

    def save(self, result: ClientResult) -> None:
        job = self.job
        assert self.run_dir is not None
        gt = ground_truth_dir(self.run_dir, job.round, job.client)
        save_tensors(gt / "images.safetensors", {
            "images": job.pool.images[job.indices],
            "labels": job.pool.labels[job.indices],
            "indices": job.indices,
        })
        if len(self.filters):  # with an empty chain the pre-filter update is update.safetensors itself
            save_tensors(gt / "update_prefilter.safetensors", result.raw)
        steps = self.recorder.steps if self.recorder else []
        if self.recorder:
            save_tensors(gt / "bn_stats.safetensors", self.recorder.tensors())
        write_json(gt / "batches.json", {
            "pool_indices": [int(i) for i in job.indices],
            "steps": [{"indices": s["indices"], "positions": _positions(job.indices, s["indices"]), "lr": s["lr"]} for s in steps],
            "bn_layers": list(steps[0]["bn"]) if steps else [],
            "filter_effects": result.filter_effects,
            "train_loss": result.train_loss,
        })
        save_update(update_dir(self.run_dir, job.round, job.client), result.outgoing, result.meta)


def _positions(indices: torch.Tensor, picked: list[int]) -> list[int]:
    where = {int(v): i for i, v in enumerate(indices)}
    return [where[i] for i in picked]
