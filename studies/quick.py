"""A reduced version of a study: the same question on fewer seeds, grid points, rounds and iterations.

It answers "does the whole pipeline of this study run, and which way do the numbers point" in minutes
instead of an hour; its numbers carry no confidence interval (one seed) and are not the published ones.
"""
from __future__ import annotations

import copy
from typing import Any

from studies.spec import StudySpec

#: what --quick keeps; documented in docs/results.md
QUICK = {"seeds": 1, "grid_points": 3, "rounds": 2, "iterations": 60}


def _keep(values: dict[str, Any], points: int) -> dict[str, Any]:
    """The first, last and evenly spaced middle values of an axis, in their original order."""
    labels = list(values)
    if len(labels) <= points:
        return dict(values)
    if points == 1:
        picks = [0]
    else:
        picks = sorted({round(i * (len(labels) - 1) / (points - 1)) for i in range(points)})
    return {labels[i]: values[labels[i]] for i in picks}


def reduce(spec: StudySpec, seeds: int = QUICK["seeds"], grid_points: int = QUICK["grid_points"], rounds: int = QUICK["rounds"],
           iterations: int = QUICK["iterations"], out_suffix: str = "_quick") -> StudySpec:
    """A copy of ``spec`` scaled down; its output goes to a separate folder so the full study is untouched."""
    quick = copy.deepcopy(spec)
    quick.name = f"{spec.name}{out_suffix}"
    quick.out = f"{spec.out.rstrip('/')}{out_suffix}"
    quick.seeds = list(spec.seeds[:seeds])
    quick.grid = {axis: _keep(values, grid_points) for axis, values in spec.grid.items()}
    train = dict(spec.train.overrides)
    train["fl.rounds"] = min(int(train.get("fl.rounds", rounds)), rounds)
    quick.train.overrides = train
    attack = dict(spec.attack.overrides)
    attack["optim.iterations"] = min(int(attack.get("optim.iterations", iterations)), iterations)
    attack["optim.max_seconds"] = 0.0  # bounded by iterations, so the quick numbers do not depend on machine speed
    attack["optim.compile"] = False  # a cold compile costs more than a quick attack
    quick.attack.overrides = attack
    # targets past the reduced number of rounds fold onto the rounds that exist (duplicates are dropped)
    return quick
