"""Privacy filters: transformations of an outgoing update, composed as an explicit chain.

A filter is a small class with a parameter dataclass; registering it makes it usable from YAML
(``privacy.filters: [{name: gaussian, sigma0: 5}]``) without touching any other filter.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

from common.config_loader import build, to_dict
from common.errors import UserError
from common.registry import Registry

Update = dict[str, torch.Tensor]


@dataclasses.dataclass
class FilterContext:
    """What a filter may use besides the update itself."""

    generator: torch.Generator
    round: int = 0
    client: int = 0
    num_samples: int = 1
    local_steps: int = 1
    #: per BN running variance, the smallest change honest local training can make to the one the client received
    #: ((1 - momentum)^steps of it kept, minus all of it), from the public global model and the client's own step count,
    #: so that the chain keeps the variances it sends valid (``FilterChain.apply``); empty = not known, nothing kept
    running_var_min_delta: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ServerContext:
    """What a filter's server half may use after FedAvg: who sent an update this round, with which weight, and what
    their filters reported with it (e.g. adaptive clipping's bit); never the updates' raw contents."""

    generator: torch.Generator
    round: int
    clients: list[int]
    weights: list[float]  # the normalised FedAvg weights of the received updates, in ``clients`` order
    effects: list[list[dict[str, Any]]]  # each received client's filter effects, in ``clients`` order
    keys: set[str] = dataclasses.field(default_factory=set)  # entries at least one client sent (the others average to 0)


class PrivacyFilter(abc.ABC):
    name: ClassVar[str]
    Params: ClassVar[type]
    columns: ClassVar[tuple[str, ...]] = ()  # effect numbers that become columns of a study's results.csv

    #: the mechanism has a server half (``server_step``): an engine whose server does not run it must refuse the filter
    needs_server: bool = False
    #: the server half changes what the clients' half does next round (adaptive clipping): the clients must share its state
    server_driven: bool = False

    def __init__(self, params: Any):
        self.params = params
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` for parameters that make no sense."""

    @abc.abstractmethod
    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, dict[str, float]]:
        """Return the filtered update and a few numbers describing the effect (logged)."""

    def replay(self, ctx: FilterContext) -> None:
        """Redo the state change of an application made before a resumed run (e.g. an accountant's step)."""

    def server_step(self, delta: Update, ctx: ServerContext) -> tuple[Update, dict[str, Any]]:
        """The server's half, on the FedAvg delta of the round (central noise, the next round's clip norm)."""
        return delta, {}

    def server_state(self) -> dict[str, Any]:
        """What the server half carries into the next round (saved each round; a resumed run loads it)."""
        return {}

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Take up ``server_state()`` as saved after the last finished round."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **to_dict(self.params)}


REGISTRY: Registry[type[PrivacyFilter]] = Registry("privacy filter", "privacy.filters")
register = REGISTRY.register


def keep_variances_valid(update: Update, min_delta: dict[str, torch.Tensor]) -> tuple[Update, int]:
    """The filtered update with no BN running variance changed by less than honest local training can change it
    (``min_delta``: (1 - momentum)^steps of the received variance kept, so it stays positive); returns the update
    and how many entries were raised.

    Additive noise on a running variance's change took variances below zero with every noise filter on the tiny
    federation (the per-tensor sigma0 filter from the first aggregation on), and a negative variance is not a
    model: eval-mode BN takes its square root. Raising only to 0 was not enough: a variance of 0 multiplies the
    layer's output by 1 / sqrt(eps), and a few such layers overflowed to a NaN test loss. The floor is
    post-processing of what the filters released, computed from the public global model and the client's own step
    count: it costs no privacy (a DP guarantee survives post-processing) and moves only values no honest client
    could have sent."""
    clamped = 0
    out = dict(update)
    for key, lowest in min_delta.items():
        delta = out.get(key)
        if delta is None or not delta.is_floating_point():
            continue
        floor = lowest.to(delta.dtype)
        low = delta < floor
        n = int(low.sum())
        if n:
            out[key] = torch.where(low, floor, delta)
            clamped += n
    return out, clamped


def float_keys(update: Update) -> list[str]:
    """Entries filters act on: floating-point tensors (integer counters such as num_batches_tracked pass)."""
    return [k for k, v in update.items() if v.is_floating_point()]


def flat_abs(update: Update, keys: list[str]) -> torch.Tensor:
    if not keys:
        return torch.zeros(0)
    return torch.cat([update[k].detach().abs().flatten().double() for k in keys])


def global_norm(update: Update, keys: list[str]) -> float:
    return float(torch.sqrt(sum((update[k].double() ** 2).sum() for k in keys))) if keys else 0.0


def make_filter(spec: dict[str, Any], where: str) -> PrivacyFilter:
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(f"{where} must be a mapping with a 'name' (one of {sorted(REGISTRY)})")
    cls = REGISTRY.get(spec["name"], where)  # an unknown name: one line naming where it was given and the known ones
    params = build(cls.Params, {k: v for k, v in spec.items() if k != "name"}, where)
    return cls(params)


class FilterChain:
    """Filters applied in the listed order; each one's effect is reported."""

    def __init__(self, filters: list[PrivacyFilter]):
        self.filters = filters

    @classmethod
    def from_config(cls, specs: list[dict[str, Any]], where: str = "privacy.filters") -> "FilterChain":
        return cls([make_filter(spec, f"{where}.{i}") for i, spec in enumerate(specs or [])])

    def apply(self, update: Update, ctx: FilterContext) -> tuple[Update, list[dict[str, Any]]]:
        effects = []
        for f in self.filters:
            update, effect = f.apply(dict(update), ctx)
            effects.append({"filter": f.name, **effect})
        if self.filters:
            update, clamped = keep_variances_valid(update, ctx.running_var_min_delta)
            if clamped:
                effects.append({"filter": "variance_floor", "clamped": clamped})
        return update, effects

    def replay(self, ctx: FilterContext) -> None:
        for f in self.filters:
            f.replay(ctx)

    def server_step(self, delta: Update, ctx: ServerContext) -> tuple[Update, list[dict[str, Any]]]:
        effects = []
        for f in self.filters:
            delta, effect = f.server_step(dict(delta), ctx)
            if effect:
                effects.append({"filter": f.name, **effect})
        return delta, effects

    def server_state(self) -> list[dict[str, Any]]:
        return [f.server_state() for f in self.filters]

    def load_server_state(self, states: list[dict[str, Any]]) -> None:
        for f, state in zip(self.filters, states):
            f.load_server_state(state)

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.filters]

    def __len__(self) -> int:
        return len(self.filters)
