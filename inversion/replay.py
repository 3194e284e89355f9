"""Differentiable replay of the client's local training, as the metadata describes it.

Same loss, optimiser (SGD with momentum/dampening/Nesterov/weight decay, or Adam), lr, batch
split and number of steps; BN in train mode with batch statistics taken with the weights each step
really used (pre-step weights). Parameters are plain tensors passed functionally, so the replay
never mutates the global model, and gradients flow back to the dummy images (and soft labels).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import grad as func_grad

from common.errors import UserError
from inversion.functional import BNStat, FunctionalModel

SUPPORTED_OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class ClientProcedure:
    """What the client did locally, read from the update metadata (public to the attacker)."""

    optimizer: dict[str, Any]
    batch_size: int
    num_images: int
    local_steps: int
    local_epochs: int
    bn_momentum: float
    shuffle: bool = True  # False: every epoch visits the images in the same order as the first

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "ClientProcedure":
        opt = dict(meta["optimizer"])
        if opt.get("name") not in SUPPORTED_OPTIMIZERS:
            raise UserError(f"the replay does not support optimizer '{opt.get('name')}' (supported: {', '.join(SUPPORTED_OPTIMIZERS)})")
        loss = meta.get("loss", {})
        if loss.get("name") != "cross_entropy" or loss.get("reduction", "mean") != "mean" or loss.get("label_smoothing", 0.0):
            raise UserError(f"the replay supports mean cross-entropy without label smoothing, the update says {loss}")
        proc = cls(opt, int(meta["batch_size"]), int(meta["num_images"]), int(meta["local_steps"]),
                   int(meta.get("local_epochs", 1)), float(meta["bn_momentum"]), bool(meta.get("shuffle", True)))
        if min(proc.batch_size, proc.num_images, proc.local_steps) < 1 or proc.batch_size > proc.num_images:
            raise UserError(f"update metadata is inconsistent: batch_size {proc.batch_size}, num_images {proc.num_images}, local_steps {proc.local_steps}")
        if not 0 < proc.bn_momentum <= 1:
            raise UserError(f"bn_momentum {proc.bn_momentum} is not supported (cumulative averaging is not replayed)")
        return proc


    def batches(self, seed: int = 0) -> list[torch.Tensor]:
        """The attacker's batch split over dummy slots 0..N-1.

        The first epoch takes the slots in order (dummies are exchangeable, so this loses nothing);
        later epochs reshuffle on the client, in an order no attacker can know, so a seeded
        permutation stands in for it; a client that does not shuffle repeats the first epoch's order.
        """
        gen = torch.Generator().manual_seed(seed)
        out: list[torch.Tensor] = []
        order = torch.arange(self.num_images)
        while len(out) < self.local_steps:
            for chunk in order.split(self.batch_size):
                if len(out) < self.local_steps:
                    out.append(chunk)
            order = torch.randperm(self.num_images, generator=gen) if self.shuffle else torch.arange(self.num_images)
        return out


@dataclasses.dataclass
class ReplayOutput:
    delta: dict[str, torch.Tensor] | None  # replayed parameter update (None for forward-only passes)
    stats: list[list[BNStat]]  # per step, per BN layer


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard labels (int) or soft labels (probabilities), mean over the batch, as the client's CE."""
    return F.cross_entropy(logits, labels)


class LocalTrainingReplay:
    def __init__(self, fmodel: FunctionalModel, params0: dict[str, torch.Tensor], procedure: ClientProcedure):
        self.fmodel = fmodel
        self.params0 = params0
        self.proc = procedure

    def run(self, x: torch.Tensor, y: torch.Tensor, steps: list[torch.Tensor]) -> ReplayOutput:
        opt = self.proc.optimizer
        params = dict(self.params0)
        state: dict[str, Any] = {}
        all_stats: list[list[BNStat]] = []
        for t, idx in enumerate(steps):
            xb, yb = x[idx], y[idx]

            def loss_fn(p: dict[str, torch.Tensor], xb=xb, yb=yb):
                logits, stats = self.fmodel.raw(p, xb)
                return cross_entropy(logits, yb), stats

            grads, stats = func_grad(loss_fn, has_aux=True)(params)
            all_stats.append(self.fmodel.wrap(stats))
            params = optimizer_step(opt, params, grads, state, t)
        delta = {k: params[k] - self.params0[k] for k in params}
        return ReplayOutput(delta, all_stats)


def optimizer_step(opt: dict[str, Any], params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                   state: dict[str, Any], t: int) -> dict[str, torch.Tensor]:
    """One functional step of torch.optim.SGD / torch.optim.Adam (same update rules)."""
    lr = float(opt["lr"])
    wd = float(opt.get("weight_decay", 0.0))
    out = {}
    if opt["name"] == "sgd":
        mu = float(opt.get("momentum", 0.0))
        damp = float(opt.get("dampening", 0.0))
        nesterov = bool(opt.get("nesterov", False))
        for k, p in params.items():
            d = grads[k] + wd * p if wd else grads[k]
            if mu:
                buf = d if t == 0 else mu * state[k] + (1 - damp) * d
                state[k] = buf
                d = d + mu * buf if nesterov else buf
            out[k] = p - lr * d
        return out
    b1, b2 = (float(b) for b in opt.get("betas", (0.9, 0.999)))
    eps = float(opt.get("eps", 1e-8))
    step = t + 1
    for k, p in params.items():
        g = grads[k] + wd * p if wd else grads[k]
        m = (1 - b1) * g if t == 0 else b1 * state[k + ".m"] + (1 - b1) * g
        v = (1 - b2) * g * g if t == 0 else b2 * state[k + ".v"] + (1 - b2) * g * g
        state[k + ".m"], state[k + ".v"] = m, v
        m_hat = m / (1 - b1**step)
        v_hat = v / (1 - b2**step)
        # clamp keeps sqrt differentiable where a gradient is exactly zero; 1e-30 is far below eps^2
        out[k] = p - lr * m_hat / (torch.sqrt(v_hat.clamp_min(1e-30)) + eps)
    return out


def forward_steps(fmodel: FunctionalModel, x: torch.Tensor, steps: list[torch.Tensor],
                  params_per_step: list[dict[str, torch.Tensor]]) -> ReplayOutput:
    """BN statistics of each step's dummy batch under given weights, without replaying the update."""
    stats = []
    for idx, params in zip(steps, params_per_step):
        _, s = fmodel(params, x[idx])
        stats.append(s)
    return ReplayOutput(None, stats)
