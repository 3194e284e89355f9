"""The escalation ladder: what the attack tries next when it did not converge.

A stalled attack is not a safe update, so instead of reporting it the attack climbs a ladder of
stronger (and dearer) settings until one converges (``inversion.convergence``), the ladder ends, or
the user's time budget is spent. Each rung is the attack's own config with the rung's overrides
(dotted keys, as on the command line; a value "xF" multiplies the configured number by F, so that
a ladder scales with the attack it escalates); rungs do not accumulate, so every rung reads on its own.
Which rung's reconstruction is returned is decided like the restart inside a rung: by the held-out
BN layers, never by the client's images.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from common.config_loader import build, set_path, to_dict
from common.config_loader import option
from common.errors import UserError


def default_ladder() -> list[dict[str, Any]]:
    """The default ladder (docs/attack.md, "Convergence and escalation").

    1. ``larger_step``: the default's TV grid at Adam lr 0.3. On the per-round updates where the
       default's lr-0.1 restarts stall, lr-0.3 restarts converge (held-out mismatch 0.01-0.03 vs 1.5-2.8).
    2. ``longer``: both step sizes side by side (6 restarts) for 2.5x the configured iterations
       (2,000 for the default 800).
    3. ``update_matching``: the weight update itself matched (a replay of the client's local
       training), the strongest and slowest signal, for whatever budget is left.
    """
    return [
        {"name": "larger_step", "overrides": {"optim.lr": 0.3}},
        {"name": "longer", "overrides": {"optim.iterations": "x2.5", "optim.restarts": 6,
                                         "optim.grid": {"total_variation": [0.01, 0.03, 0.1], "lr": [0.1, 0.3]}}},
        {"name": "update_matching", "overrides": {"objective.update_matching.weight": 1.0}},
    ]


@dataclasses.dataclass
class EscalationConfig:
    enabled: bool = option(True, "escalate along the ladder when the attack did not converge (attack.py --no-escalation turns it off)")
    max_seconds: float = option(300.0, "wall-clock time of all rungs together, counted from the start of the configured attack (which "
                                       "always runs in full, under its own optim.max_seconds); each later rung is stopped when it is spent (a "
                                       "stop, not an input of its lr schedule, so that a rung's numbers do not depend on the machine's speed; "
                                       "an attack with an optim.max_seconds of its own gets at most what is left as that budget), "
                                       "and none starts once it is spent (0 = no limit)")
    ladder: list[dict[str, Any]] = option(help="rungs tried in order after the configured attack: {name: ..., overrides: {dotted.key: value}}, "
                                               "each applied to the attack's own config (rungs do not accumulate; 'xF' multiplies the configured number)", factory=default_ladder)


@dataclasses.dataclass
class Rung:
    index: int  # 0 = the configured attack
    name: str
    overrides: dict[str, Any]


def rungs(cfg: EscalationConfig) -> list[Rung]:
    """The configured attack, then the ladder (just the attack when escalation is off)."""
    out = [Rung(0, "configured", {})]
    if not cfg.enabled:
        return out
    for i, step in enumerate(cfg.ladder, start=1):
        if not isinstance(step, dict) or not isinstance(step.get("overrides", {}), dict) or set(step) - {"name", "overrides"}:
            raise UserError(f"escalation.ladder[{i - 1}] must be {{name: ..., overrides: {{key: value}}}}, got {step}")
        out.append(Rung(i, str(step.get("name", f"rung_{i}")), dict(step.get("overrides") or {})))
    return out


def check_escalation_config(cfg: EscalationConfig) -> None:
    if not (math.isfinite(cfg.max_seconds) and cfg.max_seconds >= 0):
        raise UserError(f"escalation.max_seconds must be >= 0, got {cfg.max_seconds}")
    rungs(cfg)


def rung_config(cfg: Any, rung: Rung, seconds_left: float | None) -> Any:
    """The attack config of one rung: the configured one with the rung's overrides and, when the attack has a time
    budget of its own (optim.max_seconds > 0, which its lr schedule follows), at most the time left.

    An attack without one keeps an lr schedule that follows its iterations alone: the escalation's time left is
    then a hard stop (``rung_stop``), never a schedule input, so that a rung's numbers depend on its inputs, seed,
    thread count and iteration count, not on how fast the machine ran the rungs before it (issue 38: the same
    study gave other later-rung numbers in-process than on Ray)."""
    if rung.index == 0 and seconds_left is None:
        return cfg
    tree = to_dict(cfg)
    for key, value in rung.overrides.items():
        path = str(key).split(".")
        if path[0] in ("escalation", "convergence"):
            raise UserError(f"escalation.ladder rung '{rung.name}' may not change {key}")
        set_path(tree, path, _scaled(tree, path, value, rung.name))
    if seconds_left is not None:
        own = float(tree["optim"].get("max_seconds", 0.0) or 0.0)
        if own > 0:
            tree["optim"]["max_seconds"] = min(own, seconds_left)
    return build(type(cfg), tree)


def rung_stop(cfg: Any, seconds_left: float | None) -> dict[str, Any]:
    """Trainer arguments that stop a rung when the escalation's time is spent (a stop only: see ``rung_config``)."""
    if seconds_left is None or float(cfg.optim.max_seconds) > 0:
        return {}
    import datetime

    return {"max_time": datetime.timedelta(seconds=seconds_left)}


def _scaled(tree: dict[str, Any], path: list[str], value: Any, rung: str) -> Any:
    """``"x2.5"`` -> 2.5 times the configured value (rounded for an integer); anything else as given."""
    if not (isinstance(value, str) and value.startswith("x")):
        return value
    try:
        factor = float(value[1:])
    except ValueError:
        raise UserError(f"escalation.ladder rung '{rung}': {'.'.join(path)}={value} is neither a value nor xFACTOR") from None
    node: Any = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise UserError(f"escalation.ladder rung '{rung}': {'.'.join(path)}={value} scales a number, but the config has {node!r}")
    return max(1, round(node * factor)) if isinstance(node, int) else node * factor


def better(candidate: float | None, incumbent: float | None) -> bool:
    """Whether a rung's held-out mismatch per layer beats the best so far (a non-finite one never does)."""
    if candidate is None or not math.isfinite(candidate):
        return False
    return incumbent is None or not math.isfinite(incumbent) or candidate < incumbent
