"""Client models: any timm model by name, any PyTorch model by import path, or a small BN ConvNet,
behind the client's input path.

The input path (normalisation, optional fixed resize) is part of the model so that an update's
metadata fully describes what the client computed, and attackers optimise images in [0, 1].
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config_loader import option
from common.errors import UserError


@dataclasses.dataclass
class ModelConfig:
    name: str = option("resnet18", "any timm model name (created with pretrained=False), bn_convnet (small, for tests), or any "
                                   "PyTorch model as an import path package.module:callable, built with kwargs alone")
    resize_to: int = option(80, "fixed bilinear resize in the input path (0 = none); lets ResNets keep >1x1 maps at 32 px")
    norm_mean: list[float] = option(help="input normalisation mean per channel (one value = all channels)", factory=lambda: [0.5])
    norm_std: list[float] = option(help="input normalisation std per channel (one value = all channels)", factory=lambda: [0.5])
    bn_momentum: float = option(0.1, "BatchNorm momentum of every BN layer (PyTorch convention)")
    width: int = option(32, "bn_convnet: channels of the first conv")
    depth: int = option(4, "bn_convnet: number of conv-BN-ReLU blocks (each after the first halves the size)")
    kwargs: dict[str, Any] = option(help="keyword arguments of the model: extra ones for timm (e.g. {output_stride: 16}), all of them "
                                         "for an import path (e.g. {num_classes: 2})", factory=dict)
    zero_init_last: bool = option(False, "timm ResNets: zero-initialise the last BN of each residual block (timm's default; "
                                         "with a short federation the residual branches then stay dead, docs/federation.md)")


@dataclasses.dataclass
class ModelSpec:
    """Everything needed to rebuild the exact client model; stored in every update's metadata."""

    name: str
    in_chans: int
    num_classes: int
    image_size: int
    resize_to: int
    norm_mean: list[float]
    norm_std: list[float]
    bn_momentum: float
    width: int = 32
    depth: int = 4
    zero_init_last: bool = False  # initialisation only: an attacker loads the global weights over it
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_chans: int, num_classes: int, image_size: int) -> "ModelSpec":
        return cls(cfg.name, in_chans, num_classes, image_size, cfg.resize_to, list(cfg.norm_mean), list(cfg.norm_std), cfg.bn_momentum,
                   cfg.width, cfg.depth, cfg.zero_init_last, dict(cfg.kwargs))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserError(f"model metadata lacks {missing}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class InputPath(nn.Module):
    """Normalise, then (optionally) resize: what the client does to every image before the backbone."""

    def __init__(self, mean: list[float], std: list[float], channels: int, resize_to: int):
        super().__init__()
        mean_t = _per_channel(mean, channels, "norm_mean")
        std_t = _per_channel(std, channels, "norm_std")
        if (std_t <= 0).any():
            raise UserError("model.norm_std must be positive")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.resize_to = resize_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.resize_to and x.shape[-1] != self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return x


def _per_channel(values: list[float], channels: int, what: str) -> torch.Tensor:
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(f"model.{what} has {len(values)} values for {channels} input channels")
    return torch.tensor(values, dtype=torch.float32)


class BNConvNet(nn.Module):
    """conv-BN-ReLU blocks (stride 2 after the first) and a flatten->linear head.

    A flatten head rather than global pooling: pooled ConvNets are nearly translation invariant and
    leak far less (translation-invariant features say little about where things are); tests want a model that leaks quickly.
    """

    def __init__(self, in_chans: int, num_classes: int, image_size: int, width: int = 32, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_chans, image_size
        for i in range(depth):
            c_out = width * min(2 ** i, 4)
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
            size = size if stride == 1 else (size + 1) // 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class ClientModel(nn.Module):
    """The model a client trains: input path + backbone. Inputs are images in [0, 1]."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.input_path = InputPath(spec.norm_mean, spec.norm_std, spec.in_chans, spec.resize_to)
        self.backbone = _make_backbone(spec)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = spec.bn_momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input_path(x))


def is_import_path(name: str) -> bool:
    """``package.module:callable`` (LightningCLI's class_path convention, with a colon)."""
    return ":" in name


def _from_import_path(spec: ModelSpec) -> nn.Module:
    """Any PyTorch model: ``package.module:callable`` called with ``model.kwargs`` alone.

    The callable decides channels and classes (e.g. ``torchvision.models:resnet18`` with
    ``{num_classes: 2}``); ``in_chans`` and ``num_classes`` describe what it must accept and output.
    Importing runs the module's code: attack.py accepts an import path from update metadata only
    when the user names it in ``trusted_models``.
    """
    import importlib

    module_name, _, attr = spec.name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as err:
        hint = ""
        if isinstance(err, ModuleNotFoundError) and err.name and module_name.split(".")[0] == err.name.split(".")[0]:
            hint = (f": put the folder that holds '{err.name.split('.')[0]}' on PYTHONPATH "
                    f"(PYTHONPATH=/path/to/your/code python ...; docs/update-format.md)")
        raise UserError(f"cannot import model '{spec.name}' ({type(err).__name__}: {err}){hint}") from None
    if not callable(target):
        raise UserError(f"model '{spec.name}' is not callable")
    try:
        model = target(**spec.kwargs)
    except Exception as err:  # the user's constructor may raise anything
        raise UserError(f"model '{spec.name}' could not be built with kwargs {spec.kwargs} ({type(err).__name__}: {err})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{spec.name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _make_backbone(spec: ModelSpec) -> nn.Module:
    backbone_size = spec.resize_to or spec.image_size
    if spec.name == "bn_convnet":
        return BNConvNet(spec.in_chans, spec.num_classes, backbone_size, spec.width, spec.depth)
    if is_import_path(spec.name):
        return _from_import_path(spec)
    import timm

    if not timm.is_model(spec.name):
        raise UserError(f"unknown model '{spec.name}' (bn_convnet, a timm model name such as resnet18, or an import path "
                        "package.module:callable such as torchvision.models:resnet18)")
    try:
        try:  # ResNet-family models take zero_init_last; the others refuse the keyword
            return timm.create_model(spec.name, pretrained=False, in_chans=spec.in_chans, num_classes=spec.num_classes,
                                     zero_init_last=spec.zero_init_last, **spec.kwargs)
        except TypeError as err:
            if "zero_init_last" not in str(err):
                raise
        return timm.create_model(spec.name, pretrained=False, in_chans=spec.in_chans, num_classes=spec.num_classes, **spec.kwargs)
    except Exception as err:  # timm raises many types for unsupported arguments
        raise UserError(f"timm could not create '{spec.name}' with {spec.in_chans} channels and {spec.num_classes} classes ({err})") from err


def build_model(spec: ModelSpec) -> ClientModel:
    model = ClientModel(spec)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError(f"model '{spec.name}' has no BatchNorm layer: this project studies BN models in train mode")
    return model


#: a BN layer's buffers (state-dict suffixes); the first two are the running statistics the paper's attack reads
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
BN_STATISTICS = BN_BUFFERS[:2]


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_batch_norm_viable(model: nn.Module, spec: ModelSpec, batch_size: int, who: str) -> None:
    """Fail early, naming the layer, when a train-mode BN layer would see one value per channel."""
    probe = copy.deepcopy(model).train()
    problems: list[str] = []

    def hook(name: str):
        def check(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            per_channel = x.numel() // max(1, x.shape[1])
            if per_channel <= 1 and not problems:
                problems.append(f"{name} sees {tuple(x.shape[2:]) or '1x1'} maps")
        return check

    for name, bn in batch_norm_layers(probe):
        bn.register_forward_pre_hook(hook(name))
    x = torch.rand(batch_size, spec.in_chans, spec.image_size, spec.image_size)
    with torch.no_grad():
        try:
            probe(x)
        except ValueError as err:
            if not problems:
                raise UserError(f"{who}: the model cannot train on a batch of {batch_size} ({err})") from err
    if problems:
        raise UserError(
            f"{who} trains on batches of {batch_size} image(s), and BN layer {problems[0]}: one value per channel "
            f"(use a larger model.resize_to, a larger image size or a larger batch)"
        )
