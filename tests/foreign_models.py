"""A model that is not part of the project, given to it by import path (tests.foreign_models:TinyNet)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    """conv-BN, conv-BN with functional ReLUs (F.relu, not nn.ReLU modules) and a flatten head."""

    def __init__(self, channels: int = 1, classes: int = 2, size: int = 25, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * ((size + 1) // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


class NormalisingNet(TinyNet):
    """TinyNet that normalises its input itself (mean/std buffers), as many wrapped models do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("mean", torch.tensor([0.5]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([0.5]).view(1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - self.mean) / self.std)
