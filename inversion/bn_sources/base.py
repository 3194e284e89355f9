"""Where the BN-statistics prior takes its targets from: the interface, the shared maths and the factory.

Every source compares the dummy batch statistics with targets in the same convention: the mean,
and the *unbiased* variance (what running_var accumulates), so biased never meets unbiased.
PyTorch's update is r_new = (1 - m) r_old + m s, applied once per local step.

A source is one small class in its own file of this folder, registered under the name that
``objective.bn_statistics.source`` uses; it builds itself from :class:`SourceInputs`, which holds
only what the threat model lets the attacker see.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Literal, get_args

import torch

from common.errors import UserError
from common.registry import Registry
from inversion.functional import BNStat

Targets = list[tuple[torch.Tensor, torch.Tensor]]  # per BN layer: (mean, unbiased var)


def layer_distance(stat: BNStat, mean: torch.Tensor, var: torch.Tensor, scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """DeepInversion's per-layer term: ||mu(x) - mu*||_2 + ||var(x) - var*||_2, each times its scale."""
    return scale[0] * torch.linalg.vector_norm(stat.mean - mean) + scale[1] * torch.linalg.vector_norm(stat.var_unbiased - var)


#: the choices of objective.bn_statistics (its Params use these types; the functions below are callable on their own
#: and check against the same values, read off the types)
Normalize = Literal["layer", "none"]
UpdateScale = Literal["known", "fit"]


def _check_choice(value: str, choices: Any, key: str) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise UserError(f"objective.bn_statistics.{key} must be one of {', '.join(allowed)}, got {value}")


def layer_scales(variances: list[torch.Tensor], normalize: str) -> list[tuple[float, float]]:
    """Per BN layer, the factors that make its two distances scale-free: 1 / (s sqrt(C)) for the mean
    and 1 / (s^2 sqrt(C)) for the variance, s^2 the layer's mean target variance (C channels).

    Why: BN output does not change when its input is rescaled, so neither does the network, but raw
    distances do. At random initialisation the stem BN's input is ~100x smaller than the deep
    layers', and the layer closest to the pixels then weighs nothing in the sum. The scaled
    distances are RMS relative errors, comparable between layers and between early and trained
    models. ``variances``: each layer's target variance per channel (any source; averaging over the
    channels keeps noisy targets usable; the floor only avoids a division by zero).
    """
    _check_choice(normalize, Normalize, "normalize")
    if normalize == "none":
        return [(1.0, 1.0)] * len(variances)
    out = []
    for var in variances:
        s2 = max(float(var.double().mean()), 1e-12)
        root = math.sqrt(var.numel())
        out.append((1.0 / (math.sqrt(s2) * root), 1.0 / (s2 * root)))
    return out


def one_step_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float) -> torch.Tensor:
    """The paper's formula, exact for one local step: s = (r_new - (1 - m) r_old) / m."""
    return (r_new.double() - (1 - m) * r_old.double()) / m


def weighted_mean_inference(r_old: torch.Tensor, r_new: torch.Tensor, m: float, steps: int) -> torch.Tensor:
    """For T steps, the momentum-weighted mean of the T batch statistics: (r_T - (1-m)^T r_0) / (1 - (1-m)^T)."""
    decay = (1 - m) ** steps
    return (r_new.double() - decay * r_old.double()) / (1 - decay)


@dataclasses.dataclass
class SourceInputs:
    """What a source may be built from. ``observed`` is None when the update withholds the running buffers."""

    initial: Targets  # the global model's running buffers, float64
    observed: Targets | None  # initial + the update's buffer changes, float64
    momentum: float
    steps: int
    normalize: str = "none"
    update_scale: str = "known"
    oracle_stats: list[Targets] | None = None  # true per-step statistics: only with threat.oracle_bn_statistics


class BNSource(abc.ABC):
    name: ClassVar[str]
    fits_update_scale: ClassVar[bool] = False  # can fit an unknown update scale (a clipped update)
    reads_global_buffers: ClassVar[bool] = False  # takes the global model's running statistics as the clients' (refused under FedBN)
    layers: int = 0  # BN layers with targets (channel groups when split: see ChannelGroups)
    channel_groups: int = 1  # each BN layer's channels split into this many groups, one loss each

    @abc.abstractmethod
    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """[L]: the prior's value per BN layer for the dummy statistics of every step."""

    def loss(self, stats: list[list[BNStat]]) -> torch.Tensor:
        """Scalar prior: the sum over BN layers."""
        return self.layer_losses(stats).sum()

    @classmethod
    @abc.abstractmethod
    def build(cls, inputs: SourceInputs) -> "BNSource":
        """The source from what the attacker holds (a one-line UserError when that is not enough)."""


REGISTRY: Registry[type[BNSource]] = Registry("BN-statistics source", "objective.bn_statistics.source")
register = REGISTRY.register


class PerStepTargets(BNSource):
    """Match every step's statistics to per-step targets; averaged over steps, summed over layers."""

    def __init__(self, targets: list[Targets], normalize: str = "none"):
        self.targets = targets  # per step
        self.layers = len(targets[0])
        self.scales = layer_scales([torch.stack([step[i][1] for step in targets]).mean(0) for i in range(len(targets[0]))], normalize)

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        per_step = [torch.stack([layer_distance(stat, mean, var, scale) for stat, (mean, var), scale in zip(step_stats, step_targets, self.scales)])
                    for step_stats, step_targets in zip(stats, self.targets)]
        return torch.stack(per_step).mean(0)


def needs_buffers(name: str, inputs: SourceInputs) -> Targets:
    """The observed running buffers, or a one-line error naming the source that needs them."""
    if inputs.observed is None:
        raise UserError(f"bn.source={name} infers statistics from the running-statistics update, which this update withholds")
    return inputs.observed


def source_names() -> tuple[str, ...]:
    """``auto`` and every registered source."""
    return ("auto", *REGISTRY.names())


class ChannelGroups(BNSource):
    """A source whose BN layers are split into ``groups`` interleaved channel groups (channel j goes to
    group j mod groups), each scored as a layer of its own: ``layer_losses`` returns [L * groups],
    layer-major.

    Why: a model with few BN layers has few BN signals, and holding a whole layer out of the prior
    (for selection and the convergence verdict) removes one of them. Holding one channel group of
    every layer out keeps (groups-1)/groups of every layer's signal in the objective and still leaves
    statistics that no restart was fitted to. The inner source is built on the split targets, so
    every source works unchanged (``normalize: layer`` then scales each group by its own channels).
    """

    name = "channel_groups"

    def __init__(self, inner: BNSource, groups: int):
        self.inner = inner
        self.channel_groups = groups
        self.layers = inner.layers
        self.fits_update_scale = inner.fits_update_scale  # type: ignore[misc]

    def layer_losses(self, stats: list[list[BNStat]]) -> torch.Tensor:
        g = self.channel_groups
        split = [[BNStat(s.mean[j::g], s.var[j::g], s.count) for s in step for j in range(g)] for step in stats]
        return self.inner.layer_losses(split)

    @classmethod
    def build(cls, inputs: SourceInputs) -> "ChannelGroups":
        raise TypeError("ChannelGroups wraps a source: make_bn_source(..., channel_groups=k) builds it")


def split_channels(targets: Targets, groups: int) -> Targets:
    """Per layer (mean, var) -> per layer and channel group, layer-major (as ChannelGroups splits the statistics)."""
    return [(mean[j::groups], var[j::groups]) for mean, var in targets for j in range(groups)]


def make_bn_source(name: str, bn_names: list[str], global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
                   momentum: float, steps: int, oracle_stats: list[Targets] | None = None, normalize: str = "none",
                   update_scale: str = "known", channel_groups: int = 1, local_keys: list[str] | tuple[str, ...] = ()) -> BNSource:
    """Build the named source from what the attacker holds; ``auto`` = multi_step if buffers were sent.

    ``channel_groups`` > 1 splits every BN layer into that many channel groups (:class:`ChannelGroups`);
    when a layer has fewer channels than groups, the source is returned unsplit. ``local_keys``: entries the
    client keeps (the update metadata's, FedBN): the global model's running statistics are then not the client's."""
    if name != "auto" and name not in REGISTRY:
        raise UserError(f"unknown bn.source '{name}' ({', '.join(source_names())})")
    keys = [(f"{n}.running_mean", f"{n}.running_var") for n in bn_names]
    have_buffers = all(km in update and kv in update for km, kv in keys)
    if name == "auto":
        name = "multi_step" if have_buffers else "none"
    _check_choice(update_scale, UpdateScale, "update_scale")
    cls = REGISTRY.get(name)
    kept = sorted({k for pair in keys for k in pair} & set(local_keys))
    if kept and cls.reads_global_buffers:
        raise UserError(f"bn.source={name} takes the global model's running statistics as the client's, but the client keeps its own "
                        f"(FedBN: '{kept[0]}' is never sent, the server's are its initial values); use none, or auto")
    if update_scale != "known" and not cls.fits_update_scale:
        raise UserError(f"objective.bn_statistics.update_scale={update_scale} needs source multi_step (or auto), not {name}")
    initial = [(global_state[km].double(), global_state[kv].double()) for km, kv in keys]
    observed = ([(initial[i][0] + update[km].double(), initial[i][1] + update[kv].double()) for i, (km, kv) in enumerate(keys)]
                if have_buffers else None)
    g = channel_groups
    if g > 1 and initial and min(mean.numel() for mean, _ in initial) >= g:
        observed = split_channels(observed, g) if observed is not None else None
        oracle = [split_channels(step, g) for step in oracle_stats] if oracle_stats is not None else None
        inner = cls.build(SourceInputs(split_channels(initial, g), observed, momentum, steps, normalize, update_scale, oracle))
        return ChannelGroups(inner, g)
    return cls.build(SourceInputs(initial, observed, momentum, steps, normalize, update_scale, oracle_stats))


def as_float32(targets: Targets) -> Targets:
    """Inference runs in float64 (it divides by m); matching runs in the images' float32."""
    return [(m.float(), v.float()) for m, v in targets]
