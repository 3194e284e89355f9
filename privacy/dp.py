"""Formal differential-privacy filters: clipped Gaussian noise with an RDP accountant, and the sparse vector technique.

``dp_gaussian`` is DP-FedAvg as practitioners deploy it (McMahan et al. 2018; Flower's and TF-Privacy's wrappers):
each client clips the trainable weights of its update to L2 norm C, the server adds N(0, (z C w_max)^2) to the
weighted average (central noise, user-level DP of the federation's models; the default) or each client adds
N(0, (z C)^2) to its own update (local noise, DP also against the server). C is fixed, or adapted after every round
toward a quantile of the clients' update norms from their noised clipped-or-not bits (Andrew et al. 2021). Opacus'
RDP accountant gives epsilon. ``svt`` follows NVFlare's ``SVTPrivacy`` filter (sparse vector technique with Laplace noise).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import TYPE_CHECKING, Any, Literal

import torch

from common.config_loader import option
from common.errors import UserError
from model.factory import BN_BUFFERS
from privacy.base import FilterContext, PrivacyFilter, ServerContext, Update, float_keys, global_norm, register

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant


# ----------------------------------------------------------------------------- accounting


def _new_accountant() -> "RDPAccountant":
    # imported on first use: opacus takes a second or two to import, and runs without dp_gaussian never need it
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


def _epsilon(accountant: RDPAccountant, delta: float) -> float:
    if not accountant.history:
        return 0.0
    with warnings.catch_warnings():
        # "Optimal order is the smallest/largest alpha": the bound is then conservative (too large), never too small.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(accountant.get_epsilon(delta))


def epsilon_after(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """Epsilon after ``rounds`` applications of the Gaussian mechanism (Opacus RDP accountant, fresh)."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = _new_accountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return _epsilon(accountant, delta)


# ----------------------------------------------------------------------------- dp_gaussian


@dataclasses.dataclass
class DPGaussianParams:
    clip_norm: float = option(1.0, "C: the clipped part of the update is scaled to L2 norm at most C (with clip_quantile: the first round's C)")
    clip_quantile: float = option(0.0, "0 = C fixed; in (0, 1): adaptive clipping (Andrew et al. 2021, as Flower and TF-Privacy): after each "
                                       "round the server moves C toward this quantile of the clients' update norms, from their noised "
                                       "clipped-or-not bits (0.5 = the median)")
    clip_lr: float = option(0.2, "adaptive clipping's geometric step: C <- C * exp(-clip_lr * (unclipped fraction - clip_quantile))")
    bit_budget: float = option(0.1, "adaptive clipping with noise: the share of the privacy budget spent on the bits (bit-count noise "
                                    "std z / (2 sqrt(share)); the update's noise multiplier becomes z / sqrt(1 - share))")
    noise_multiplier: float = option(1.0, "z: the noise std is z times the sensitivity (0 = clipping only, epsilon = inf)")
    noise: Literal["central", "local"] = option("central", "central: the server adds N(0, (z C w_max)^2) to the FedAvg average (w_max: the "
                                                           "largest client weight; DP of the federation's models, while the server itself "
                                                           "sees each clipped update); local: each client adds N(0, (z C)^2) to its own "
                                                           "update (DP also against the server)")
    parts: Literal["weights", "all"] = option("weights", "weights: clip and noise the trainable weights (BN weight and bias included), "
                                                         "BN running statistics sent as they are and counted as unprotected (keep them on "
                                                         "the client with fl.bn_buffers=local); all: every float entry, buffers included")
    delta: float = option(1e-5, "delta of the reported (epsilon, delta) guarantee")
    sample_rate: float = option(1.0, "q: probability that a client takes part in a round (amplification by subsampling; see docs)")


@register
class DPGaussian(PrivacyFilter):
    """Clip the update's weights to L2 norm C (fixed or adaptive); Gaussian noise at the server or on the client; RDP epsilon."""

    name = "dp_gaussian"
    columns = ("epsilon", "noise_std", "clip_norm")
    Params = DPGaussianParams

    def __init__(self, params: DPGaussianParams):
        super().__init__(params)
        self.accountants: dict[int, RDPAccountant] = {}
        self.clip = params.clip_norm  # this round's C (adaptive clipping: set by the server half after every round)

    def validate(self) -> None:
        p = self.params
        if not (math.isfinite(p.clip_norm) and p.clip_norm > 0):
            raise UserError(f"dp_gaussian filter: clip_norm must be > 0, got {p.clip_norm}")
        if not (math.isfinite(p.noise_multiplier) and p.noise_multiplier >= 0):
            raise UserError(f"dp_gaussian filter: noise_multiplier must be >= 0, got {p.noise_multiplier}")
        if not 0 < p.delta < 1:
            raise UserError(f"dp_gaussian filter: delta must be in (0, 1), got {p.delta}")
        if not 0 < p.sample_rate <= 1:
            raise UserError(f"dp_gaussian filter: sample_rate must be in (0, 1], got {p.sample_rate}")
        if not 0 <= p.clip_quantile < 1:
            raise UserError(f"dp_gaussian filter: clip_quantile must be in [0, 1) (0 = a fixed clip_norm), got {p.clip_quantile}")
        if not (math.isfinite(p.clip_lr) and p.clip_lr > 0):
            raise UserError(f"dp_gaussian filter: clip_lr must be > 0, got {p.clip_lr}")
        if not 0 < p.bit_budget < 1:
            raise UserError(f"dp_gaussian filter: bit_budget must be in (0, 1), got {p.bit_budget}")
        if self.adaptive and p.noise == "local" and p.noise_multiplier > 0:
            raise UserError("dp_gaussian filter: adaptive clipping (clip_quantile > 0) with noise needs noise: central (the server "
                            "counts the clients' noised bits; with local noise use a fixed clip_norm)")

    @property
    def adaptive(self) -> bool:
        return self.params.clip_quantile > 0

    @property
    def needs_server(self) -> bool:  # type: ignore[override]
        return self.adaptive or (self.params.noise == "central" and self.params.noise_multiplier > 0)

    @property
    def server_driven(self) -> bool:  # type: ignore[override]
        return self.adaptive

    @property
    def update_noise_multiplier(self) -> float:
        """The update's share of z: with adaptive clipping the bits take ``bit_budget`` of the RDP budget (Andrew et al.:
        z_update^-2 + (2 sigma_bits)^-2 = z^-2), so the whole round is one Gaussian mechanism of multiplier z."""
        z = self.params.noise_multiplier
        return z / math.sqrt(1.0 - self.params.bit_budget) if self.adaptive and z > 0 else z

    @property
    def bit_noise_std(self) -> float:
        z = self.params.noise_multiplier
        return z / (2.0 * math.sqrt(self.params.bit_budget)) if self.adaptive and z > 0 else 0.0

    @property
    def noise_std(self) -> float:
        """The noise std per unit of client weight (local: what each client adds; central: the server's on the weighted sum)."""
        return self.update_noise_multiplier * self.clip

    def clipped_keys(self, update: Update) -> list[str]:
        keys = float_keys(update)
        return keys if self.params.parts == "all" else [k for k in keys if not k.endswith(BN_BUFFERS)]

    def epsilon(self, client: int, round: int | None = None) -> float:
        """Epsilon spent so far: local noise, by ``client`` (0 before its first update); central noise, by the federation
        after ``round`` (its rounds 0..round, each one step); inf with noise_multiplier 0."""
        p = self.params
        if p.noise == "central":
            return _central_epsilon(round + 1 if round is not None else 0, p.noise_multiplier, p.sample_rate, p.delta)
        accountant = self.accountants.get(client)
        if accountant is None or not accountant.history:
            return 0.0
        if p.noise_multiplier == 0:
            return float("inf")
        return _epsilon(accountant, p.delta)

    def replay(self, ctx: FilterContext) -> None:
        """One accountant step for this client (local noise; also used to rebuild the accountants of a resumed run)."""
        if self.params.noise == "central":
            return  # the federation's epsilon follows from the round count
        if ctx.client not in self.accountants:
            self.accountants[ctx.client] = _new_accountant()
        self.accountants[ctx.client].step(noise_multiplier=self.params.noise_multiplier, sample_rate=self.params.sample_rate)

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        keys = self.clipped_keys(update)
        norm_before = global_norm(update, keys)
        factor = min(1.0, self.clip / norm_before) if norm_before > 0 else 1.0
        std = self.noise_std if self.params.noise == "local" else 0.0
        for k in keys:
            v = update[k] * factor if factor < 1.0 else update[k]
            if std > 0:
                v = v + _gaussian(v, std, ctx.generator)
            update[k] = v
        self.replay(ctx)
        return update, {
            "norm_before": norm_before,
            "norm_clipped": norm_before * factor,
            "clip_norm": self.clip,
            "clip_factor": factor,
            "unclipped": 1.0 if norm_before <= self.clip else 0.0,  # adaptive clipping's bit (noised at the server)
            "noise_std": self.noise_std,
            "epsilon": self.epsilon(ctx.client, ctx.round),
            "unprotected": float(len(float_keys(update)) - len(keys)),  # float entries sent outside the guarantee
        }

    def server_step(self, delta: Update, ctx: ServerContext) -> tuple[Update, dict[str, Any]]:
        """Central noise on the weighted average (std z C w_max: one client's clipped update moves it by at most
        w_max C), then adaptive clipping's step toward the quantile from the noised count of unclipped clients."""
        p = self.params
        effect: dict[str, Any] = {}
        used = self.clip
        if p.noise == "central" and p.noise_multiplier > 0 and ctx.clients:
            std = self.noise_std * max(ctx.weights)
            for k in self.clipped_keys({k: delta[k] for k in ctx.keys if k in delta}):
                delta[k] = delta[k] + _gaussian(delta[k], std, ctx.generator)
            effect["central_noise_std"] = std
        if self.adaptive and ctx.clients:
            bits = [e["unclipped"] for effects in ctx.effects for e in effects if e.get("filter") == self.name and "unclipped" in e]
            noisy = sum(bits) + (self.bit_noise_std * float(torch.randn(1, generator=ctx.generator, dtype=torch.float64)) if self.bit_noise_std else 0.0)
            fraction = noisy / max(1, len(bits))
            self.clip = used * math.exp(-p.clip_lr * (fraction - p.clip_quantile))
            effect.update(unclipped_fraction=fraction, next_clip_norm=self.clip)
        if effect:
            effect["clip_norm"] = used
            if p.noise == "central":  # the federation's; with local noise epsilon is each client's, in its own effects
                effect["epsilon"] = self.epsilon(-1, ctx.round)
        return delta, effect

    def server_state(self) -> dict[str, Any]:
        return {"clip_norm": self.clip} if self.adaptive else {}

    def load_server_state(self, state: dict[str, Any]) -> None:
        if self.adaptive and "clip_norm" in state:
            self.clip = float(state["clip_norm"])


def _gaussian(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    noise = torch.randn(like.shape, generator=generator, dtype=dtype)
    return (std * noise).to(device=like.device, dtype=like.dtype)


@functools.lru_cache(maxsize=256)
def _central_epsilon(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    return epsilon_after(rounds, noise_multiplier, sample_rate, delta)


# ----------------------------------------------------------------------------- svt


@dataclasses.dataclass
class SVTParams:
    fraction: float = option(0.1, "share at most this fraction of the float entries")
    epsilon: float = option(0.1, "privacy budget of the noisy threshold (eps_1; the query budget eps_2 is derived from it)")
    noise_var: float = option(0.1, "privacy budget of the released values (eps_3): Laplace scale 2*gamma/noise_var")
    gamma: float = option(1e-5, "clip bound: magnitudes are clipped to gamma for selection, shared values to [-gamma, gamma]")
    tau: float = option(1e-6, "threshold on the clipped magnitude (before its Laplace noise)")
    replace: bool = option(True, "draw the shared entries from the accepted ones with replacement (as NVFlare)")


def _laplace(n: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Laplace(0, scale) samples as the difference of two Exp(1) draws (no log(0) edge case)."""
    e = torch.empty(2, n, dtype=torch.float64).exponential_(1.0, generator=generator)
    return scale * (e[0] - e[1])


def _at_most(value: float, dtype: torch.dtype) -> float:
    """The largest number representable in ``dtype`` that is <= ``value``."""
    t = torch.tensor(value, dtype=dtype)
    if float(t) > value:
        t = torch.nextafter(t, torch.zeros_like(t))
    return float(t)


@register
class SVTPrivacy(PrivacyFilter):
    """Sparse vector technique (after NVFlare's SVTPrivacy): share a noisy selection of clipped, Laplace-noised values."""

    name = "svt"
    columns = ("shared_fraction",)
    Params = SVTParams

    def validate(self) -> None:
        p = self.params
        if not 0 < p.fraction <= 1:
            raise UserError(f"svt filter: fraction must be in (0, 1], got {p.fraction}")
        for field in ("epsilon", "noise_var", "gamma"):
            value = getattr(p, field)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"svt filter: {field} must be > 0, got {value}")
        if not (math.isfinite(p.tau) and p.tau >= 0):
            raise UserError(f"svt filter: tau must be >= 0, got {p.tau}")

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        p = self.params
        gen = ctx.generator
        keys = float_keys(update)
        if not keys:
            return update, {"shared_fraction": 0.0, "threshold": p.tau, "selection_rounds": 0.0}
        flat = torch.cat([update[k].detach().flatten().cpu().double() for k in keys])
        n = flat.numel()
        if n == 0:
            return update, {"shared_fraction": 0.0, "threshold": p.tau, "selection_rounds": 0.0}
        n_upload = min(n, math.ceil(round(p.fraction * n, 6)))

        # eps_1: a noisy threshold
        threshold = p.tau + float(_laplace(1, 2.0 * p.gamma / p.epsilon, gen)[0])
        # eps_2: noisy queries |clip(w, gamma)| + Laplace(lambda_nu) >= threshold. NVFlare repeats the query on the
        # entries not yet accepted, with fresh noise each pass, until at least n_upload are accepted. Entry i then
        # is first accepted in pass G_i ~ Geometric(p_i), independently, p_i = P(m_i + nu >= threshold), and the
        # loop stops at R = the n_upload-th smallest G_i, accepting {i: G_i <= R}. We draw the G_i directly
        # (inverse CDF): the same distribution in one vectorised pass, and no endless loop for a high tau.
        eps_2 = p.epsilon * (2.0 * n_upload) ** (2.0 / 3.0)
        lambda_nu = 4.0 * p.gamma * n_upload / eps_2
        gap = (threshold - flat.abs().clamp(max=p.gamma)) / lambda_nu  # nu must be >= gap * lambda_nu
        half = math.log(0.5)
        log_reject = torch.where(gap < 0, half + gap, torch.log1p(-0.5 * torch.exp(-gap.clamp(min=0))))  # log(1 - p_i)
        log_u = torch.log1p(-torch.rand(n, generator=gen, dtype=torch.float64))  # log U, U uniform in (0, 1]
        first_pass = (log_u / log_reject).ceil().clamp(min=1).nan_to_num(nan=math.inf, posinf=math.inf)  # p_i == 0 -> never
        reachable = int(torch.isfinite(first_pass).sum())
        if reachable == 0:
            rounds, pool = math.inf, torch.zeros(0, dtype=torch.long)
        else:
            rounds = float(first_pass.kthvalue(min(n_upload, reachable)).values)
            pool = torch.nonzero(first_pass <= rounds).flatten()
        n_accepted = pool.numel()
        if pool.numel() == 0:
            chosen = pool
        elif p.replace:
            chosen = pool[torch.randint(pool.numel(), (min(n_upload, n_accepted),), generator=gen)].unique()
        else:
            chosen = pool[torch.randperm(pool.numel(), generator=gen)[:n_upload]]

        # eps_3: Laplace noise on the released values, clipped to [-gamma, gamma]; everything else is sent as 0
        out = torch.zeros_like(flat)
        noise = _laplace(chosen.numel(), 2.0 * p.gamma / p.noise_var, gen)
        out[chosen] = (flat[chosen] + noise).clamp(-p.gamma, p.gamma)

        start = 0
        for k in keys:
            v = update[k]
            part = out[start:start + v.numel()].reshape(v.shape).to(v.dtype)
            bound = _at_most(p.gamma, v.dtype)  # float32(1e-3) > 1e-3: keep the cast values inside [-gamma, gamma]
            update[k] = part.clamp(-bound, bound).to(v.device)
            start += v.numel()
        return update, {"shared_fraction": chosen.numel() / n, "threshold": threshold, "selection_rounds": float(rounds)}
