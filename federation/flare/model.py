"""The server's copy of the model: the client LightningModule's keys (``model.<state-dict key>``)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from model.factory import ModelSpec, build_model


class GlobalModule(nn.Module):
    """Holds ``build_model(spec)`` as ``self.model``, like ``FLClient``, so that keys match what sites send."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.model = build_model(ModelSpec.from_dict(spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
