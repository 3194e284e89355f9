"""A functional twin of the client model for the attacker.

Why a twin: ``torch.func.functional_call`` on a train-mode BN layer updates its buffers in place
and not differentiably. The twin's BN layers instead compute the batch statistics from their
inputs, normalise with them (biased variance, as BN does) and *return* them, so that running
statistics can be predicted functionally and matched. The global model itself is never touched.
"""
from __future__ import annotations

import copy
import dataclasses
import types

import torch
import torch.nn as nn
from torch.func import functional_call

from lightning_modules.models import batch_norm_layers


@dataclasses.dataclass
class BNStat:
    """Batch statistics of one BN layer's input on one step."""

    mean: torch.Tensor  # [C]
    var: torch.Tensor  # [C], biased: what BN normalises with
    count: int  # values per channel (B*H*W)

    @property
    def var_unbiased(self) -> torch.Tensor:
        """What PyTorch feeds into running_var."""
        return self.var * (self.count / max(1, self.count - 1))


class ReLUWithSmoothGrad(torch.autograd.Function):
    """ReLU whose value *and* first derivative are exact, but whose derivative has a smooth slope.

    The derivative is ``1[x>0] + s - stop_grad(s)`` with ``s = sigmoid(beta x)``: numerically the exact
    step, so the replayed update is exact, while differentiating it once more (as update matching
    does) sees sigmoid' instead of zero. Exact-ReLU replays converge badly (paper.md section 8).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, beta: float) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, beta = inputs
        ctx.save_for_backward(x)
        ctx.beta = beta

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.beta * x)
        return grad * ((x > 0).to(grad.dtype) + s - s.detach()), None


class FunctionalModel:
    """Call as ``fm(params, x) -> (logits, [BNStat per BN layer])``; vmappable over restarts.

    ``raw(params, x)`` returns the statistics as (mean, var) tuples instead, which torch.func
    transforms can carry as auxiliary outputs; ``counts`` then holds the values per channel.
    """

    def __init__(self, model: nn.Module, relu_grad: str = "exact", relu_beta: float = 10.0):
        self.module = copy.deepcopy(model).train()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.bn_names = [name for name, _ in batch_norm_layers(self.module)]
        self.param_names = [name for name, _ in self.module.named_parameters()]
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.counts: list[int] = []
        for _, bn in batch_norm_layers(self.module):
            bn.forward = types.MethodType(_recording_bn_forward(self), bn)
        if relu_grad == "smooth":
            for module in self.module.modules():
                if isinstance(module, nn.ReLU):
                    module.forward = types.MethodType(_smooth_relu_forward(relu_beta), module)
        elif relu_grad != "exact":
            raise ValueError(f"relu_grad must be exact or smooth, got {relu_grad}")

    def raw(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        self._stats, self.counts = [], []
        try:
            out = functional_call(self.module, params, (x,), strict=False)
            stats = self._stats
        finally:
            self._stats = None
        return out, stats

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[BNStat]]:
        out, stats = self.raw(params, x)
        return out, self.wrap(stats)

    def wrap(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> list[BNStat]:
        return [BNStat(m, v, n) for (m, v), n in zip(stats, self.counts)]

    def record(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        if self._stats is not None:
            self._stats.append((mean, var))
            self.counts.append(count)


def _recording_bn_forward(owner: FunctionalModel):
    def forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        centred = x - _expand(mean, x)
        var = (centred * centred).mean(dims)
        owner.record(mean, var, x.numel() // x.shape[1])
        y = centred * _expand(torch.rsqrt(var + self.eps), x)
        if self.affine:
            y = y * _expand(self.weight, x) + _expand(self.bias, x)
        # timm's BatchNormAct2d applies dropout and an activation after the normalisation
        drop = getattr(self, "drop", None)
        act = getattr(self, "act", None)
        if drop is not None:
            y = drop(y)
        if act is not None:
            y = act(y)
        return y

    return forward


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _smooth_relu_forward(beta: float):
    def forward(self: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
        return ReLUWithSmoothGrad.apply(x, beta)

    return forward
