"""Ground-truth recorder: per local step, which images were used and each BN layer's batch statistics.

This is the oracle for "exact BN" experiments and for checking the inferred statistics; it is
written to the ground-truth tree, which the attack never reads.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn as nn

from model.factory import batch_norm_layers


def batch_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean, biased and unbiased variance of a BN layer's input (as BN computes them)."""
    dims = [0] + list(range(2, x.dim()))
    n = x.numel() // x.shape[1]
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    return {"mean": mean, "var": var, "var_unbiased": var * n / max(1, n - 1)}


class BatchStatisticsRecorder(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []  # [{"indices": [...], "lr": float, "bn": {layer: stats}}]
        self._handles: list = []
        self._current: dict | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps = []
        for name, bn in batch_norm_layers(pl_module.model):
            self._handles.append(bn.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            if self._current is not None and _module.training:
                self._current["bn"][name] = {k: v.detach().clone() for k, v in batch_stats(inputs[0]).items()}
        return record

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._current = {"indices": [int(i) for i in batch[2]], "lr": float(lr), "bn": {}}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._current is not None:
            self.steps.append(self._current)
        self._current = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat safetensors layout: ``step_<t>/<layer>/<mean|var|var_unbiased>``."""
        return {f"step_{t}/{layer}/{k}": v for t, step in enumerate(self.steps) for layer, stats in step["bn"].items() for k, v in stats.items()}
