"""Objective terms: one small class each, registered by name, each with its weight in the config.

``objective: {update_matching: {weight: 1}, total_variation: {weight: 1e-4, norm: l2}}``: a new
term is a new class with ``@register``; nothing else changes. A term gets a :class:`TermInput`
for one restart (``per_restart``) or all restarts at once (``across_restarts``).
"""
from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, ClassVar, Literal

import torch

from common.config_loader import build, option
from common.errors import UserError
from common.registry import Registry
from inversion.bn_sources import BNSource, source_names
from inversion.bn_sources.base import Normalize, UpdateScale
from inversion.replay import ReplayOutput


@dataclasses.dataclass
class TermInput:
    images: torch.Tensor  # one restart: [N, C, H, W] in [0, 1]
    replay: ReplayOutput


@dataclasses.dataclass
class AttackSetting:
    """What terms may be built from: only attacker knowledge (see inversion.threat_model)."""

    observed_delta: dict[str, torch.Tensor]  # parameter entries of the update
    param_names: list[str]
    params0: dict[str, torch.Tensor]  # global model parameters
    bn_source_factory: Any  # callable(name, normalize, update_scale) -> BNSource
    prior: torch.Tensor  # [C, H, W]
    norm_mean: torch.Tensor
    norm_std: torch.Tensor


class ObjectiveTerm(abc.ABC):
    name: ClassVar[str]
    Params: ClassVar[type]
    needs_replay: ClassVar[bool] = False
    across_restarts: ClassVar[bool] = False

    def __init__(self, params: Any, setting: AttackSetting):
        self.params = params
        self.weight = float(params.weight)

    @property
    def diagnostics(self) -> list[str]:
        """Names of values this term computes beside its own but never adds to the objective."""
        return []

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        raise NotImplementedError

    def values(self, inp: TermInput) -> list[torch.Tensor]:
        """The term's value followed by its diagnostics (one pass for both)."""
        return [self.per_restart(inp)]

    def all_restarts(self, images: torch.Tensor) -> torch.Tensor:
        """[R] values from all restarts' images [R, N, C, H, W] (for terms that couple restarts)."""
        raise NotImplementedError


REGISTRY: Registry[type[ObjectiveTerm]] = Registry("objective term", "objective")
register = REGISTRY.register


def make_terms(spec: dict[str, dict[str, Any]], setting: AttackSetting) -> list[ObjectiveTerm]:
    terms = []
    for name, params in (spec or {}).items():
        cls = REGISTRY.get(name)  # an unknown name: one line listing the known ones
        built = build(cls.Params, params or {}, f"objective.{name}")
        if built.weight < 0:
            raise UserError(f"objective.{name}.weight must be >= 0")
        if built.weight > 0:
            terms.append(cls(built, setting))
    if not terms:
        raise UserError("the objective has no term with a positive weight")
    return terms


# ----------------------------------------------------------------------------- update matching


@dataclasses.dataclass
class UpdateMatchingParams:
    weight: float = option(1.0, "weight (0 = off: no replay, no double backward)")
    metric: Literal["cosine", "l2"] = option("cosine", "cosine (1 - cos) or l2 (squared error relative to the observed norm)")
    per_layer: bool = option(True, "average the metric over parameter tensors instead of one flat vector")
    layer_weights: dict[str, float] = option(help="regex -> weight for matching parameter names (first match wins)", factory=dict)
    relu_grad: Literal["exact", "smooth"] = option("smooth", "exact, or smooth: exact ReLU values and derivative with a sigmoid slope for the outer gradient")
    relu_beta: float = option(10.0, "slope of the smooth ReLU derivative")
    ignore_zeros: bool = option(False, "match only entries the client sent as non-zero (for sparsifying filters)")
    min_snr: float = option(10.0, "skip tensors whose observed delta is below this multiple of float32 rounding noise (|theta| * 2^-24)")


@register
class UpdateMatching(ObjectiveTerm):
    """Compare the replayed update with the observed one."""

    name = "update_matching"
    Params = UpdateMatchingParams
    needs_replay = True

    def __init__(self, params: UpdateMatchingParams, setting: AttackSetting):
        super().__init__(params, setting)
        patterns = [(re.compile(k), float(v)) for k, v in params.layer_weights.items()]
        self.keys, self.weights, self.masks = [], [], []
        self.skipped_noise: list[str] = []
        for key in setting.param_names:
            if key not in setting.observed_delta:
                continue  # withheld by a filter: nothing to match
            # a delta stored as after - before in float32 carries rounding noise of order |theta| 2^-24;
            # tensors that barely moved are that noise, and their cosine/relative error only adds spikes
            noise = float(setting.params0[key].norm()) * 2.0**-24
            if float(setting.observed_delta[key].norm()) < params.min_snr * noise:
                self.skipped_noise.append(key)
                continue
            w = next((v for p, v in patterns if p.search(key)), 1.0)
            if w > 0:
                self.keys.append(key)
                self.weights.append(w)
                self.masks.append(setting.observed_delta[key] != 0 if params.ignore_zeros else None)
        if not self.keys:
            withheld = sum(key not in setting.observed_delta for key in setting.param_names)
            if self.skipped_noise:
                raise UserError(f"update matching has nothing to match: {len(self.skipped_noise)} parameter entries moved by zero or by less than "
                                f"float32 rounding noise ({withheld} withheld; a confident global model sends zero weight deltas, and then "
                                "only the BN statistics carry information): set objective.update_matching.weight=0")
            raise UserError("update matching has no parameter entries to match (all withheld or weighted 0)")
        self.observed = [setting.observed_delta[k].float() for k in self.keys]
        self.observed_sq = [float(o.pow(2).sum()) for o in self.observed]
        self.total_weight = sum(self.weights)

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        assert inp.replay.delta is not None
        preds = [inp.replay.delta[k] for k in self.keys]
        if self.params.ignore_zeros:
            preds = [p * m if m is not None else p for p, m in zip(preds, self.masks)]
        if self.params.per_layer:
            total = preds[0].new_zeros(())
            for p, o, o2, w in zip(preds, self.observed, self.observed_sq, self.weights):
                total = total + w * self._distance(p, o, o2)
            return total / self.total_weight
        # one flat vector over all tensors, layer-weighted: accumulated tensor by tensor, never concatenated
        dot = preds[0].new_zeros(())
        p2 = preds[0].new_zeros(())
        for p, o, w in zip(preds, self.observed, self.weights):
            dot = dot + w * (p * o).sum()
            p2 = p2 + w * (p * p).sum()
        o2 = sum(w * o2 for w, o2 in zip(self.weights, self.observed_sq))
        if self.params.metric == "cosine":
            return 1 - dot / (torch.sqrt(p2) * o2**0.5 + 1e-20)
        return (p2 - 2 * dot + o2) / (o2 + 1e-20)

    def _distance(self, p: torch.Tensor, o: torch.Tensor, o2: float) -> torch.Tensor:
        if self.params.metric == "cosine":
            dot = (p * o).sum()
            return 1 - dot / (torch.linalg.vector_norm(p) * (o2**0.5) + 1e-20)
        return (p - o).pow(2).sum() / (o2 + 1e-20)


# ----------------------------------------------------------------------------- BN statistics


@dataclasses.dataclass
class BNStatisticsParams:
    weight: float = option(1.0, "weight")
    source: str = option("auto", f"where targets come from: {', '.join(source_names())} (auto = multi_step if running stats were sent, else none)")
    weights_per_step: Literal["interpolate", "global"] = option("interpolate", "without update matching, the weights each dummy step uses: interpolate (theta0 + k/T delta) or global")
    normalize: Normalize = option("layer", "layer: each BN layer's distances divided by its target scale (RMS relative errors; "
                                     "BN is blind to its input's scale, so the prior is too), or none: raw DeepInversion distances")
    update_scale: UpdateScale = option("known", "known, or fit: the update was clipped (scaled by an unknown factor, e.g. dp_gaussian's "
                                        "clip_norm / ||update||); multi_step fits the factor jointly with the images")
    holdout: int = option(0, "hold every k-th BN layer (k >= 2) out of the prior: their mismatch is computed but never optimised, "
                             "and scores the restarts (optim.select); 0 = use every layer")
    holdout_unit: Literal["layer", "channel"] = option("layer", "what holdout holds out: layer (every k-th BN layer), or channel (every k-th channel of "
                                        "every BN layer, so that each layer keeps (k-1)/k of its signal; for models with few BN layers): "
                                        "channel groups choose among restarts but do not judge convergence, since a group is matched "
                                        "along with its layer's fitted channels even when the images are wrong (bench.few_bn_holdout)")


@register
class BNStatistics(ObjectiveTerm):
    """DeepInversion's BN prior with a selectable source of targets (inversion.bn_sources)."""

    name = "bn_statistics"
    Params = BNStatisticsParams

    def __init__(self, params: BNStatisticsParams, setting: AttackSetting):
        super().__init__(params, setting)
        if params.holdout == 1 or params.holdout < 0:
            raise UserError(f"objective.bn_statistics.holdout must be 0 or at least 2, got {params.holdout}")
        self.source: BNSource = setting.bn_source_factory(params.source, params.normalize, params.update_scale)
        k = params.holdout
        if k and self.source.layers and params.holdout_unit == "channel":
            # one group of every layer's channels held out (the source is rebuilt on the groups; unsplit
            # when a layer has fewer than k channels, and then whole layers are held out)
            self.source = setting.bn_source_factory(params.source, params.normalize, params.update_scale, k)

        # the held-out units: every k-th layer (or channel group: the k-th of every layer) counted from the
        # input, at least one; none without targets (source none) or with a single unit, where nothing could
        # be both held out and optimised
        layers = self.source.layers
        held = [k > 0 and i % k == k - 1 for i in range(layers)]
        if k and layers >= 2 and not any(held):
            held[-1] = True
        self.held_out = torch.tensor(held, dtype=torch.bool)
        self.holding_out = any(held)

    @property
    def diagnostics(self) -> list[str]:
        return ["bn_holdout"] if self.holding_out else []

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        return self.values(inp)[0]

    def values(self, inp: TermInput) -> list[torch.Tensor]:
        losses = self.source.layer_losses(inp.replay.stats)
        if not self.diagnostics:
            return [losses.sum()]
        out = self.held_out.to(losses.device)
        return [torch.where(out, torch.zeros_like(losses), losses).sum(), torch.where(out, losses, torch.zeros_like(losses)).sum()]


# ----------------------------------------------------------------------------- image priors


@dataclasses.dataclass
class TVParams:
    weight: float = option(1e-4, "weight")
    norm: Literal["l1", "l2"] = option("l2", "l1 (anisotropic absolute differences) or l2 (squared differences)")


@register
class TotalVariation(ObjectiveTerm):
    name = "total_variation"
    Params = TVParams

    def __init__(self, params: TVParams, setting: AttackSetting):
        super().__init__(params, setting)

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        x = inp.images
        dx = x[..., :, 1:] - x[..., :, :-1]
        dy = x[..., 1:, :] - x[..., :-1, :]
        if self.params.norm == "l1":
            return dx.abs().mean() + dy.abs().mean()
        return dx.pow(2).mean() + dy.pow(2).mean()


@dataclasses.dataclass
class WeightOnly:
    weight: float = option(0.0, "weight")


@register
class ImageL2(ObjectiveTerm):
    """Mean squared value of the normalised image (what the client's model sees)."""

    name = "image_l2"
    Params = WeightOnly

    def __init__(self, params: WeightOnly, setting: AttackSetting):
        super().__init__(params, setting)
        self.mean, self.std = setting.norm_mean, setting.norm_std

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        return ((inp.images - self.mean) / self.std).pow(2).mean()


@register
class PriorDistance(ObjectiveTerm):
    """Mean squared distance to the population prior image."""

    name = "prior_distance"
    Params = WeightOnly

    def __init__(self, params: WeightOnly, setting: AttackSetting):
        super().__init__(params, setting)
        self.prior = setting.prior

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        return (inp.images - self.prior).pow(2).mean()


@register
class GrayscaleChannels(ObjectiveTerm):
    """Mean squared deviation of each channel from the channels' mean: for clients that feed one
    grayscale image repeated to every channel (as the paper did for chest X-rays), which the
    attacker may know; 0 for a grayscale image."""

    name = "grayscale_channels"
    Params = WeightOnly

    def per_restart(self, inp: TermInput) -> torch.Tensor:
        x = inp.images
        return (x - x.mean(-3, keepdim=True)).pow(2).mean()


def register_restarts(images: torch.Tensor) -> torch.Tensor:
    """For images [R, N, ...], the permutation [R, N] that lines every restart's dummies up with the first
    restart's: ``images[r, perm[r]]`` has the image closest to ``images[0, i]`` at position i (a Hungarian
    assignment on squared distances). Restarts reconstruct a batch in any order; averaging them unaligned
    blends different images."""
    from scipy.optimize import linear_sum_assignment

    flat = images.detach().flatten(2).double().cpu()
    perms = [torch.arange(images.shape[1])]
    for r in range(1, images.shape[0]):
        cost = torch.cdist(flat[0], flat[r]).pow(2)  # [N, N]: reference image i vs restart r's image j
        rows, cols = linear_sum_assignment(cost.numpy())
        perm = torch.empty(images.shape[1], dtype=torch.long)
        perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
        perms.append(perm)
    return torch.stack(perms).to(images.device)


@register
class GroupConsistency(ObjectiveTerm):
    """Pull each restart towards the restarts' consensus (Yin et al. 2021); needs restarts > 1. The restarts
    are registered first (:func:`register_restarts`), so that the consensus of image i averages the
    restarts' versions of the same image."""

    name = "group_consistency"
    Params = WeightOnly
    across_restarts = True

    def all_restarts(self, images: torch.Tensor) -> torch.Tensor:
        perm = register_restarts(images)
        aligned = torch.stack([images[r, perm[r]] for r in range(images.shape[0])])
        consensus = aligned.mean(0, keepdim=True).detach()
        return (aligned - consensus).pow(2).flatten(1).mean(1)
