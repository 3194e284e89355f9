"""The one place an attack config is built: defaults, the user's files and overrides, the multi-image choice.

``attack.py``, the FL audit, study cells and the benchmarks all ask here, so that the same update with
the same user input is attacked with the same configuration wherever it is attacked (before this module,
the audit and the studies attacked an 8-image update with the 1-image configuration, and only attack.py
picked ``configs/attack/batch.yaml``). The rule:

- the defaults are :class:`inversion.attack_config.AttackConfig`'s (``configs/attack/default.yaml`` restates
  them, and ``tests/test_attack_plan.py`` fails if they ever differ);
- no config file named (``None``, ``""`` or ``[]``): the update of a client with more than one image, or an
  update that withholds the BN running statistics (FedBN, an ``exclude`` filter), gets
  ``configs/attack/batch.yaml`` on top of the defaults (update matching through the replayed steps: the default
  attack's only signal is the BN prior built from those buffers), any other the defaults alone;
- config file(s) named: exactly those, left to right on top of the defaults (naming
  ``configs/attack/default.yaml`` asks for the single-image attack on any update);
- then the overrides (``key=value`` strings, or a ``{dotted.key: value}`` mapping), then the checks.

From a notebook::

    from pipelines.attack_plan import plan_attack
    plan = plan_attack(update="runs/default/updates/round_11/client_3", overrides={"logging.wandb": False})
    report = plan.run()
    report.verdict, report.server_verdict, report.ssim, report.images.shape
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from common.cli import config_files
from common.config_loader import build, load, merged, overrides_list
from common.errors import UserError
from common.files import read_json
from federation.run_layout import update_meta
from federation.update_store import high_risk_update
from inversion.attack_config import AttackConfig, check_attack_config
from model.factory import BN_STATISTICS

DEFAULT_FILE = AttackConfig.DEFAULT_FILE
BATCH_FILE = AttackConfig.DEFAULT_FILE.parent / "batch.yaml"

ConfigFiles = str | Path | Sequence[str | Path] | None
Overrides = Sequence[str] | Mapping[str, Any]


def named_files(config: ConfigFiles) -> list[str]:
    """The config files the user named ([] = none: the automatic choice)."""
    if config is None or config == "":
        return []
    if isinstance(config, (str, Path)):
        return [str(config)]
    return [str(c) for c in config if str(c)]


def _override_strings(overrides: Overrides) -> list[str]:
    if isinstance(overrides, Mapping):
        return overrides_list(dict(overrides))
    return [str(o) for o in overrides]


def needs_update_matching(num_images: int, buffers_withheld: bool = False) -> bool:
    """Whether the automatic choice is batch.yaml: several images (one BN statistic per channel cannot tell them
    apart), or no BN running statistics in the update (nothing for the default attack's BN prior to read)."""
    return num_images > 1 or buffers_withheld


def chosen_files(config: ConfigFiles, num_images: int, buffers_withheld: bool = False) -> list[str]:
    """The files applied on top of the defaults, in order: the named ones, else batch.yaml where update matching is
    needed (:func:`needs_update_matching`)."""
    named = named_files(config)
    if named:
        return config_files(DEFAULT_FILE, [_resolved(f) for f in named])
    return config_files(DEFAULT_FILE, [BATCH_FILE] if needs_update_matching(num_images, buffers_withheld) else [])


def _resolved(path: str) -> str:
    """A relative config path that is not found from here is looked up from the project root (study specs and
    audit configs name ``configs/attack/...`` and may be run from elsewhere)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        root = DEFAULT_FILE.parent.parent.parent
        if (root / p).exists():
            return str(root / p)
    return str(p)


def attack_config(config: ConfigFiles = None, overrides: Overrides = (), *, num_images: int = 1,
                  buffers_withheld: bool = False) -> AttackConfig:
    """The complete, checked attack config for an update of a client with ``num_images`` images (``buffers_withheld``:
    the update carries no BN running statistics)."""
    cfg = load(AttackConfig, chosen_files(config, num_images, buffers_withheld), _override_strings(overrides))
    check_attack_config(cfg)
    return cfg


def withholds_buffers(meta: Mapping[str, Any]) -> bool:
    """Whether the update's metadata lists BN running statistics among the entries that were not sent."""
    return any(str(k).endswith(BN_STATISTICS) for k in meta.get("withheld_keys", []) or [])


def update_facts(update: Path) -> tuple[int | None, bool]:
    """(the attacked client's number of images, whether the update withholds the BN running statistics), from the
    update's metadata ((None, False) when it cannot be read: the attack job then says why, with the update's own error)."""
    try:
        meta = read_json(update_meta(update))
        return int(meta.get("num_images", 1)), withholds_buffers(meta)
    except (UserError, OSError, AttributeError, TypeError, ValueError):
        return None, False


@dataclasses.dataclass(frozen=True)
class AttackPlan:
    """What will be attacked and how: the update folder, its client's image count, and the complete config."""

    config: AttackConfig
    update: Path
    num_images: int | None
    files: tuple[str, ...]  # the config files applied on top of the defaults, in order
    buffers_withheld: bool = False  # the update carries no BN running statistics

    @property
    def batch(self) -> bool:
        """Whether the automatic choice picked configs/attack/batch.yaml."""
        return any(Path(f).resolve() == BATCH_FILE.resolve() for f in self.files)

    def describe(self) -> str:
        if not self.batch:
            return ""
        optim = self.config.optim
        limit = f" or {optim.max_seconds:g} s, whichever ends first" if optim.max_seconds > 0 else ""
        why = (f"the update's client had {self.num_images} images" if (self.num_images or 1) > 1 else
               "the update withholds the BN running statistics (nothing for the BN prior to read)")
        return (f"{why}: attacking with configs/attack/batch.yaml "
                f"({optim.iterations} iterations{limit}; --config configs/attack/default.yaml for the single-image attack)")

    def run(self, resume: bool = False, overwrite: bool = False) -> "AttackReport":
        from pipelines.attack_job import run_attack_job

        summary = run_attack_job(self.config, resume=resume, overwrite=overwrite)
        return AttackReport(Path(summary["out"]), summary["metrics"], summary["result"])


@dataclasses.dataclass(frozen=True)
class AttackReport:
    """A finished attack: where it was written, its metrics.json, and the reconstruction itself."""

    out: Path
    metrics: dict[str, Any]
    result: Any  # inversion.attack_module.AttackResult (None on a DDP worker process)

    @property
    def verdict(self) -> str | None:
        """leaks / no leak found / inconclusive (None without ground truth)."""
        return self.metrics.get("verdict")

    @property
    def server_verdict(self) -> str | None:
        """reconstructed / inconclusive: what the update alone says."""
        return self.metrics.get("server_verdict")

    @property
    def ssim(self) -> float | None:
        return self.metrics.get("ssim")

    @property
    def images(self) -> torch.Tensor | None:
        return None if self.result is None else self.result.images


def plan_attack(config: ConfigFiles = None, overrides: Overrides = (), *, update: str | Path | None = None,
                out: str | Path | None = None, run: str | Path | None = None, ground_truth: str | Path | None = None) -> AttackPlan:
    """The plan for one saved update (``update``; None = the high-risk client of ``run``'s latest round, as attack.py)."""
    extra = {"update": update, "out": out, "run": run, "ground_truth": ground_truth}
    given = _override_strings(overrides) + [f"{k}={v}" for k, v in extra.items() if v is not None]
    single = chosen_files(config, 1)
    tree = merged(single, given)  # the update and run the user named, before the choice
    defaults = AttackConfig()
    update, run_dir = tree.get("update") or defaults.update, tree.get("run") or defaults.run
    folder = Path(str(update)) if update else high_risk_update(str(run_dir))
    images, withheld = update_facts(folder)
    files = chosen_files(config, images or 1, withheld)
    cfg = build(AttackConfig, tree if files == single else merged(files, given))  # read again only when batch.yaml joins
    check_attack_config(cfg)
    cfg.update = str(folder)  # resolved once: the job attacks what the choice was made for
    return AttackPlan(cfg, folder, images, tuple(files[1:]), withheld)
