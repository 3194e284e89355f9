"""Formal differential-privacy filters: clipped Gaussian noise with an RDP accountant, and the sparse vector technique.

``dp_gaussian`` gives per-client (local) (epsilon, delta)-DP of the whole update at round granularity:
each application clips the float part of the update to L2 norm ``clip_norm`` and adds
N(0, (noise_multiplier * clip_norm)^2) to every float entry; Opacus' RDP accountant tracks epsilon
per client. ``svt`` follows NVFlare's ``SVTPrivacy`` filter (sparse vector technique with Laplace noise).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING

import torch

from common.config_loader import option
from common.errors import UserError
from privacy.base import FilterContext, PrivacyFilter, Update, float_keys, global_norm, register

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
    clip_norm: float = option(1.0, "C: the float part of the update is scaled to L2 norm at most C")
    noise_multiplier: float = option(1.0, "z: N(0, (z*C)^2) is added to every float entry (0 = clipping only, epsilon = inf)")
    delta: float = option(1e-5, "delta of the reported (epsilon, delta) guarantee")
    sample_rate: float = option(1.0, "q: probability that a client takes part in a round (amplification by subsampling; see docs)")


@register
class DPGaussian(PrivacyFilter):
    """Clip the whole update to L2 norm C, add N(0, (zC)^2); per-client epsilon from Opacus' RDP accountant."""

    name = "dp_gaussian"
    columns = ("epsilon", "noise_std")
    Params = DPGaussianParams

    def __init__(self, params: DPGaussianParams):
        super().__init__(params)
        self.accountants: dict[int, RDPAccountant] = {}

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

    @property
    def noise_std(self) -> float:
        return self.params.noise_multiplier * self.params.clip_norm

    def epsilon(self, client: int) -> float:
        """Epsilon spent so far by ``client`` (0 before its first update; inf with noise_multiplier 0)."""
        accountant = self.accountants.get(client)
        if accountant is None or not accountant.history:
            return 0.0
        if self.params.noise_multiplier == 0:
            return float("inf")
        return _epsilon(accountant, self.params.delta)

    def replay(self, ctx: FilterContext) -> None:
        """One accountant step for this client (also used to rebuild the accountants of a resumed run)."""
        if ctx.client not in self.accountants:
            self.accountants[ctx.client] = _new_accountant()
        self.accountants[ctx.client].step(noise_multiplier=self.params.noise_multiplier, sample_rate=self.params.sample_rate)

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        p = self.params
        keys = float_keys(update)
        norm_before = global_norm(update, keys)
        factor = min(1.0, p.clip_norm / norm_before) if norm_before > 0 else 1.0
        std = self.noise_std
        for k in keys:
            v = update[k] * factor if factor < 1.0 else update[k]
            if std > 0:
                dtype = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
                noise = torch.randn(v.shape, generator=ctx.generator, dtype=dtype)
                v = v + (std * noise).to(device=v.device, dtype=v.dtype)
            update[k] = v
        norm_clipped = norm_before * factor
        self.replay(ctx)
        return update, {
            "norm_before": norm_before,
            "norm_clipped": norm_clipped,
            "clip_factor": factor,
            "noise_std": std,
            "epsilon": self.epsilon(ctx.client),
        }


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
