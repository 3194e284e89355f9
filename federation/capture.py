"""Update capture: what local training produced, and the writer of what leaves the client.

At the start of local training the callback snapshots the state dict; at the end it forms the
delta of every entry (weights, BN affine, running statistics, num_batches_tracked) and the
metadata an attacker sees, and hands both to the outbox (``federation.outbox``: privacy filters,
then :func:`save_round`), which every engine runs the same way. :func:`save_round` writes the
update as it left the client and, separately, the ground truth for scoring.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from federation.batch_statistics import BatchStatisticsRecorder
from common.files import save_tensors, write_json
from datamodules.sources import ImagePool
from federation.run_layout import RunLayout
from federation.update_store import FORMAT, save_update, sha256
from federation.client import LOSS, OptimizerConfig
from model.factory import ModelSpec
from privacy.base import FilterChain


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
    kept: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # entries the client keeps (FedBN): never sent


def state_delta(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (after[k] - before[k]).detach().clone() for k in before}


@dataclasses.dataclass
class LocalResult:
    """Local training's product, before anything leaves the client."""

    raw: dict[str, torch.Tensor]  # after - before, every state-dict entry
    meta: dict[str, Any]  # what the attacker will be told (withheld_keys added by the outbox)
    steps: int
    train_loss: float
    #: per BN running variance, the smallest change honest local training can make (privacy.base.keep_variances_valid)
    running_var_min_delta: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class UpdateCapture(pl.Callback):
    """Forms the client's delta and metadata; ``outbox`` (if given) sends it on at once.

    ``outbox(job, local) -> ClientResult``: the in-process simulation passes one; under NVFlare the
    delta leaves through NVFlare's own task-result filters instead, and ``local`` is read from here.
    """

    def __init__(self, job: ClientRound, filters: FilterChain, run_dir: Path | None,
                 outbox: Callable[[ClientRound, LocalResult], ClientResult | None] | None = None):
        self.job = job
        self.filters = filters
        self.run_dir = run_dir
        self.outbox = outbox
        self.local: LocalResult | None = None
        self.result: ClientResult | None = None
        self._before: dict[str, torch.Tensor] = {}
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # steps of this fit: a Trainer reused across rounds (NVFlare's patched one) keeps counting
        raw = state_delta(self._before, {k: v.detach().cpu() for k, v in pl_module.model.state_dict().items()})
        steps = int(trainer.global_step) - self._start_step
        momentum = self.job.model_spec.bn_momentum
        # each BN forward keeps (1 - momentum) of the running variance and adds a batch variance >= 0: after `steps` of
        # them it is at least (1 - momentum)^steps of the variance received, whatever the data
        # (less a relative 1e-5, so that float rounding of an honest update, e.g. a channel whose batch variance is exactly
        # 0, is never moved)
        keep = (1.0 - momentum) ** steps * (1.0 - 1e-5) if momentum is not None else 0.0
        lowest = {k: (keep - 1.0) * v for k, v in self._before.items() if k.endswith("running_var")}
        self._before = {}  # a full model copy: not kept beyond the delta
        self.local = LocalResult(raw, self.metadata(steps), steps, pl_module.last_loss, lowest)
        if self.outbox is not None:
            self.result = self.outbox(self.job, self.local)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = int(trainer.global_step)

    def metadata(self, steps: int) -> dict[str, Any]:
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
            gm = RunLayout(self.run_dir).global_model(job.round)
            if gm.is_file():
                meta["global_model"] = str(Path("../../../global") / gm.name)
                meta["global_model_sha256"] = sha256(gm)
        return meta



def save_round(run_dir: Path, job: ClientRound, result: ClientResult, filtered: bool,
               recorder: BatchStatisticsRecorder | None = None) -> None:
    """The ground truth (site-local, for scoring), then the update exactly as it left the client."""
    gt = RunLayout(run_dir).ground_truth(job.round, job.client)
    save_tensors(RunLayout(run_dir).ground_truth_images(job.round, job.client), {
        "images": job.pool.images[job.indices],
        "labels": job.pool.labels[job.indices],
        "indices": job.indices,
    })
    if filtered:  # with an empty chain the pre-filter update is update.safetensors itself
        save_tensors(gt / "update_prefilter.safetensors", result.raw)
    steps = recorder.steps if recorder else []
    if recorder:
        save_tensors(gt / "bn_stats.safetensors", recorder.tensors())
    write_json(RunLayout(run_dir).batches(job.round, job.client), {
        "pool_indices": [int(i) for i in job.indices],
        "steps": [{"indices": s["indices"], "positions": _positions(job.indices, s["indices"]), "lr": s["lr"]} for s in steps],
        "bn_layers": list(steps[0]["bn"]) if steps else [],
        "filter_effects": result.filter_effects,
        "train_loss": result.train_loss,
    })
    save_update(RunLayout(run_dir).update(job.round, job.client), result.outgoing, result.meta)


def _positions(indices: torch.Tensor, picked: list[int]) -> list[int]:
    where = {int(v): i for i, v in enumerate(indices)}
    return [where[i] for i in picked]
