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
import torch.nn.functional as F
from torch.func import functional_call

from model.factory import batch_norm_layers


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


def relu_with_smooth_grad(x: torch.Tensor, beta: float) -> torch.Tensor:
    """ReLU whose value *and* first derivative are exact, but whose derivative has a smooth slope.

    ``relu(x) + c/2 (x - x0)^2`` with ``x0 = stop_grad(x)`` and ``c = stop_grad(beta sigmoid'(beta x))``:
    the added term and its first derivative are exactly zero where they are evaluated, so the
    replayed update is exact; differentiating the replay once more (as update matching does) sees the
    slope ``c`` of a sigmoid instead of the zero of a step. Exact-ReLU replays converge badly
    (through a step function, the second derivatives update matching needs are zero almost
    everywhere). Plain tensor ops, so torch.func and torch.compile see through it.
    """
    x0 = x.detach()
    s = torch.sigmoid(beta * x0)
    c = beta * s * (1 - s)
    d = x - x0
    return torch.relu(x) + 0.5 * c * d * d


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
        self.smooth_beta = relu_beta if relu_grad == "smooth" else None
        self.unsmoothed: list[str] = []  # kinked activations the smooth replay cannot reach (reported by the attack)
        if relu_grad == "smooth":
            for name, module in self.module.named_modules():
                if isinstance(module, nn.ReLU):
                    module.forward = types.MethodType(_smooth_relu_forward(relu_beta), module)
                elif isinstance(module, KINKED):
                    self.unsmoothed.append(f"{name} ({type(module).__name__})")
        elif relu_grad != "exact":
            raise ValueError(f"relu_grad must be exact or smooth, got {relu_grad}")

    def raw(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        self._stats, self.counts = [], []
        original_relu = F.relu
        if self.smooth_beta is not None:  # F.relu in a model's own forward gets the smooth derivative too
            beta = self.smooth_beta
            F.relu = lambda input, inplace=False: relu_with_smooth_grad(input, beta)  # noqa: E731
        try:
            out = functional_call(self.module, params, (x,), strict=False)
            stats = self._stats
        finally:
            self._stats = None
            F.relu = original_relu
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


# activations whose derivative jumps (like ReLU's) but that the smooth replay does not replace;
# smooth ones (SiLU, GELU, ELU, Softplus, Tanh, Sigmoid) need nothing
KINKED = (nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.RReLU, nn.Threshold)


def _recording_bn_forward(owner: FunctionalModel):
    def forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        # two passes (mean, then mean of squared deviations) instead of torch.var_mean: the same values to
        # float rounding, but var_mean's CPU kernel is slow on these reductions, in particular batched over
        # restarts by vmap (bench.restarts: 8 restarts 2.8x -> 2.4x one restart, both faster)
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dims)
        owner.record(mean.flatten(), var, x.numel() // x.shape[1])
        # normalise with exactly the statistics recorded (biased variance, as BN does)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            y = torch.addcmul(_expand(self.bias, x), centred, _expand(scale * self.weight, x))
        else:
            y = centred * _expand(scale, x)
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
        return relu_with_smooth_grad(x, beta)

    return forward
