"""The schema of train.py's config (configs/default.yaml); --help is generated from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from common.config_loader import option
from common.errors import UserError
from federation.audit import AuditConfig
from datamodules.federated import SplitConfig
from datamodules.sources import DataConfig
from federation.client import OptimizerConfig
from model.factory import ModelConfig


@dataclasses.dataclass
class LocalConfig:
    epochs: int = option(1, "local epochs per round (each a full pass over the client's images, reshuffled)")
    steps: int = option(0, "a fixed number of local steps instead of epochs (0 = use epochs)")


@dataclasses.dataclass
class FLConfig:
    rounds: int = option(12, "number of FL rounds")
    client_fraction: float = option(1.0, "fraction of clients sampled each round (at least one)")
    weighting: Literal["steps", "samples", "uniform"] = option("steps", "FedAvg weights: steps (the paper), samples, or uniform")
    lr_decay_every: int = option(9, "multiply the client lr by lr_decay every this many rounds (0 = never)")
    lr_decay: float = option(0.1, "lr decay factor")
    on_invalid: Literal["stop", "continue"] = option("stop", "when the global model stops being a model (negative or non-finite BN running "
                                                             "variances, non-finite weights or test loss, e.g. after a privacy filter broke "
                                                             "it): stop with a one-line error (the rounds so far are kept in OUT.partial) or "
                                                             "continue (a warning each round; metrics.csv's 'invalid' column says what broke)")
    bn_buffers: Literal["shared", "local"] = option("shared", "BN running statistics (running_mean, running_var, num_batches_tracked): "
                                                              "shared (sent and averaged: the paper's setting and its attack's side channel) "
                                                              "or local (FedBN, Li et al. 2021: each client keeps its own and sends none; "
                                                              "test accuracy is then each client's model averaged, docs/privacy-filters.md)")
    bn_affine: Literal["shared", "local"] = option("shared", "BN weight and bias: shared, or local (FedBN's full variant: kept on the "
                                                             "client; an attacker replaying the client's steps has only the server's values)")
    workers: int = option(0, "train each round's clients in this many worker processes (accelerator gpu: worker i on GPU i; "
                             "cpu: the cores shared out); client c always goes to worker c % workers; 0 = in this process")
    split: SplitConfig = option(help="client layout", factory=SplitConfig)
    engine: str = option("simulation", "simulation (the in-process FedAvg loop, fast) or nvflare (the same clients, privacy filters, "
                                       "audit and capture inside NVIDIA FLARE's simulator; docs/nvflare.md)")


@dataclasses.dataclass
class CaptureConfig:
    clients: list[int] = option(help="clients whose updates are saved (empty = all)", factory=lambda: [2, 3])
    rounds: list[int] = option(help="rounds whose updates are saved (empty = all; negative counts from the end, -1 = last)",
                               factory=lambda: [0, -1])
    bn_statistics: bool = option(True, "record every step's exact BN batch statistics in the ground truth")


@dataclasses.dataclass
class PrivacyConfig:
    filters: list[dict[str, Any]] = option(help="filter chain on every outgoing update, in order, e.g. [{name: gaussian, sigma0: 5}]", factory=list)


@dataclasses.dataclass
class LoggingConfig:
    wandb: bool = option(True, "log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    project: str = option("fl-leakage", "W&B project")
    progress: bool = option(True, "show a progress bar")


@dataclasses.dataclass
class TrainConfig:
    DEFAULT_FILE: ClassVar[Path] = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"  # train.py's base config

    seed: int = option(0, "seed of the split, the initial model, the shuffling and the filters' noise")
    out: str = option("runs/default", "run directory")
    accelerator: Literal["cpu", "gpu", "auto", "cuda"] = option("cpu", "Lightning accelerator for local training: cpu, gpu or auto")
    data: DataConfig = option(help="data", factory=DataConfig)
    model: ModelConfig = option(help="model", factory=ModelConfig)
    optimizer: OptimizerConfig = option(help="client optimiser", factory=OptimizerConfig)
    local: LocalConfig = option(help="local training", factory=LocalConfig)
    fl: FLConfig = option(help="federation", factory=FLConfig)
    capture: CaptureConfig = option(help="which updates are saved", factory=CaptureConfig)
    privacy: PrivacyConfig = option(help="privacy filters", factory=PrivacyConfig)
    audit: AuditConfig = option(help="leakage audit of outgoing updates (runs after the privacy filters)", factory=AuditConfig)
    logging: LoggingConfig = option(help="logging", factory=LoggingConfig)


def check_train_config(cfg: TrainConfig) -> None:
    """The federation's own settings (data, split, model and filters are checked where they are built)."""
    if cfg.fl.workers < 0:
        raise UserError(f"fl.workers must be >= 0, got {cfg.fl.workers}")
    if cfg.fl.rounds < 1:
        raise UserError(f"fl.rounds must be at least 1, got {cfg.fl.rounds}")
    if not 0 < cfg.fl.client_fraction <= 1:
        raise UserError(f"fl.client_fraction must be in (0, 1], got {cfg.fl.client_fraction}")
    if cfg.local.epochs < 1 and cfg.local.steps < 1:
        raise UserError("local.epochs or local.steps must be at least 1")
    if cfg.fl.engine == "nvflare" and "local" in (cfg.fl.bn_buffers, cfg.fl.bn_affine):
        raise UserError("fl.bn_buffers/bn_affine=local runs on fl.engine=simulation only (the NVFlare job does not keep client state yet)")
    cfg.optimizer.validate()
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("accelerator gpu requested but no CUDA device is available")
