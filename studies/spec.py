"""A study is a grid of train.py + attack.py cells, described in YAML (configs/studies/*.yaml).

    name: sigma0
    out: runs/studies/sigma0
    seeds: [0, 1, 2]
    train: {config: configs/default.yaml, overrides: {fl.rounds: 3}}
    attack: {config: configs/attack/default.yaml, overrides: {optim.iterations: 300}}
    targets: [{round: -1, client: 3}]          # captured updates attacked in every training run
    grid:                                     # axes; each value overrides train and/or attack keys
      sigma0:
        "0": {train: {privacy.filters: [{name: gaussian, sigma0: 0}]}}
        "5": {train: {privacy.filters: [{name: gaussian, sigma0: 5}]}}

Cells are the product of the axes, the seeds and the targets. Training runs are shared by every
cell whose train overrides and seed agree.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from common.config_loader import option
from common.errors import UserError


@dataclasses.dataclass
class Stage:
    config: str = option("", "YAML config file of the stage on top of the script's defaults ('' = none; for the attack, '' = what "
                             "attack.py chooses: configs/attack/batch.yaml for a client with more than one image)")
    overrides: dict[str, Any] = option(help="key: value overrides (dotted keys)", factory=dict)


@dataclasses.dataclass
class Target:
    round: int = option(-1, "round of the captured update (negative counts from the end)")
    client: int = option(0, "client index")


@dataclasses.dataclass
class Resources:
    cpus: float = option(1.0, "CPUs per cell: a Ray task's num_cpus and the cell's torch threads (study.py --executor ray)")
    gpus: float = option(0.0, "GPUs per cell: a Ray task's num_gpus (fractions share a GPU); set accelerator=gpu in the stages too")


@dataclasses.dataclass
class StudySpec:
    name: str = option("study", "study name")
    out: str = option("runs/studies/study", "output folder")
    seeds: list[int] = option(help="seeds: each gives its own training run (split, model init, shuffling) and, without attack_seeds, "
                                   "the attack's seed", factory=lambda: [0])
    attack_seeds: list[int] = option(help="attack seeds (optim.seed), each run on every attacked update: the attack's luck apart "
                                          "from the training's ([] = the training seed, one attack per update)", factory=list)
    train: Stage = option(help="train.py stage", factory=Stage)
    attack: Stage = option(help="attack.py stage", factory=Stage)
    targets: list[Target] = option(help="which captured updates of each run are attacked", factory=lambda: [Target()])
    all_clients: bool = option(False, "attack every captured client of the target rounds (targets' client ignored)")
    grid: dict[str, dict[str, dict[str, dict[str, Any]]]] = option(help="axis -> value label -> {train: {...}, attack: {...}}", factory=dict)
    report: dict[str, Any] = option(help="hints for plots and the report (x axis, reference table)", factory=dict)
    resources: Resources = option(help="what each cell asks of a cluster (the ray executor; the local one runs cells in this process)",
                                  factory=Resources)


@dataclasses.dataclass
class Cell:
    axes: dict[str, str]  # axis -> value label
    seed: int
    train_overrides: dict[str, Any]
    attack_overrides: dict[str, Any]
    # fingerprints of the stages' config files: editing configs/default.yaml must not reuse runs made before
    base: dict[str, str] = dataclasses.field(default_factory=dict)
    attack_seed: int | None = None  # a StudySpec.attack_seeds entry; None: the training seed (optim.seed unless overridden)

    @property
    def train_key(self) -> str:
        blob = json.dumps({"seed": self.seed, "train": self.train_overrides, **_base(self.base, "train")}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def attack_key(self, rnd: int, client: int) -> str:
        blob = json.dumps({"train": self.train_key, "attack": self.attack_overrides, "round": rnd, "client": client,
                           **_base(self.base, "attack")}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]




def _base(base: dict[str, str], stage: str) -> dict[str, str]:
    return {"base": base[stage]} if stage in base else {}


def config_fingerprint(files: list[str | Path]) -> str:
    """Hash of the parsed contents of the config files a stage layers, in order (comments do not count).

    A file whose contents repeat the layer under it changes nothing and is not hashed: a study run from
    another checkout layers that checkout's copy of the default config on the script's own, and must find
    the runs it made before."""
    import yaml

    digest = hashlib.sha1()
    below = None
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"config file not found: {f}")
        layer = json.dumps(yaml.safe_load(Path(f).read_text()), sort_keys=True, default=str)
        if layer != below:
            digest.update(layer.encode())
        below = layer
    return digest.hexdigest()[:12]


def cells(spec: StudySpec, base: dict[str, str] | None = None) -> list[Cell]:
    """``base``: stage -> config fingerprint (``config_fingerprint``), part of every cell's cache keys."""
    axes = list(spec.grid.items())
    for name, values in axes:
        if not values:
            raise UserError(f"study axis '{name}' has no values")
        for label, stages in values.items():
            unknown = set(stages or {}) - {"train", "attack"}
            if unknown:
                raise UserError(f"study axis '{name}' value '{label}' has unknown stage(s) {sorted(unknown)} (train, attack)")
    negative = [s for s in [*spec.seeds, *spec.attack_seeds] if s < 0]
    if negative:
        raise UserError(f"study seeds and attack_seeds must be >= 0, got {negative}")
    if len(set(spec.attack_seeds)) != len(spec.attack_seeds):
        raise UserError(f"study attack_seeds {spec.attack_seeds} repeat a seed: each is an attack of its own")
    if spec.attack_seeds and ("optim.seed" in spec.attack.overrides or any(
            "optim.seed" in ((stages or {}).get("attack") or {}) for values in spec.grid.values() for stages in values.values())):
        raise UserError("study attack_seeds set optim.seed themselves: drop optim.seed from the attack stage and the grid")
    out = []
    labels = [list(values.items()) for _, values in axes]
    for seed in spec.seeds:
        for combo in itertools.product(*labels) if labels else [()]:
            train = dict(spec.train.overrides)
            attack = dict(spec.attack.overrides)
            for (_, stages) in combo:
                train.update((stages or {}).get("train", {}) or {})
                attack.update((stages or {}).get("attack", {}) or {})
            train["seed"] = seed
            labelled = {name: str(label) for (name, _), (label, _) in zip(axes, combo)}
            if not spec.attack_seeds:
                attack.setdefault("optim.seed", seed)
                out.append(Cell(labelled, seed, train, attack, dict(base or {})))
            for attack_seed in spec.attack_seeds:
                out.append(Cell(labelled, seed, train, {**attack, "optim.seed": attack_seed}, dict(base or {}), attack_seed))
    return out

