"""The Lightning side of :mod:`common.interrupt`: a Ctrl-C swallowed during a step stops the fit at the next step."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from common import interrupt


class StopOnInterrupt(pl.Callback):
    """Checks the Ctrl-C flag after every step: a local round of hundreds of steps stops within one."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        interrupt.check()
