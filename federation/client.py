"""The FL client: local training of the shared model with BN in train mode, cross-entropy loss."""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from common.config_loader import option
from common.errors import UserError
from model.factory import ClientModel


@dataclasses.dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam"] = option("sgd", "sgd or adam")
    lr: float = option(0.02, "client learning rate (the server may decay it over rounds)")
    momentum: float = option(0.9, "sgd: momentum")
    dampening: float = option(0.0, "sgd: dampening")
    nesterov: bool = option(False, "sgd: Nesterov momentum")
    weight_decay: float = option(0.0, "L2 weight decay (added to the gradient, as torch.optim does)")
    betas: list[float] = option(help="adam: (beta1, beta2)", factory=lambda: [0.9, 0.999])
    eps: float = option(1e-8, "adam: epsilon")

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"optimizer.lr must be a positive number, got {self.lr}")
        if self.name == "sgd" and self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise UserError("sgd Nesterov momentum needs momentum > 0 and dampening = 0")
        if len(self.betas) != 2:
            raise UserError("optimizer.betas needs two values")

    def describe(self, lr: float) -> dict:
        """The optimiser as an attacker sees it in the update metadata (lr = the one actually used)."""
        if self.name == "sgd":
            return {"name": "sgd", "lr": lr, "momentum": self.momentum, "dampening": self.dampening,
                    "nesterov": self.nesterov, "weight_decay": self.weight_decay}
        return {"name": "adam", "lr": lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


LOSS = {"name": "cross_entropy", "reduction": "mean", "label_smoothing": 0.0}


class FLClient(pl.LightningModule):
    """Wraps the shared :class:`ClientModel`; one instance is reused across clients and rounds."""

    def __init__(self, model: ClientModel, optimizer: OptimizerConfig):
        super().__init__()
        self.model = model
        self.optimizer_cfg = optimizer
        self.lr = optimizer.lr
        self.last_loss = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        loss = F.cross_entropy(self.model(images), labels)
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.optimizer_cfg
        if cfg.name == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: ClientModel, loader) -> tuple[float, float]:
    """Global test accuracy and loss with BN in eval mode (running statistics)."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels, _ in loader:
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return correct / max(1, total), loss_sum / max(1, total)
