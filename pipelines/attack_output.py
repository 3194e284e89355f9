"""The files of one attack's output folder (attack.py's ``out``; a study's cell), in one place.

    OUT/metrics.json                written last: the scores, the verdict and the threat model
    OUT/reconstruction.safetensors  the reconstructed images and labels (written first: a scoring failure keeps it)
    OUT/reconstruction.png          the reconstruction beside the ground truth
    OUT/config.yaml, objective.csv  the resolved attack config and the objective per iteration
    OUT/checkpoints/                only while an attack runs (to resume it)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from federation.run_layout import RunLayout, is_update_folder


@dataclasses.dataclass(frozen=True)
class AttackOutput:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def reconstruction(self) -> Path:
        return self.root / "reconstruction.safetensors"

    @property
    def figure(self) -> Path:
        return self.root / "reconstruction.png"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def objective_trace(self) -> Path:
        return self.root / "objective.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def is_finished(self) -> bool:
        """The attack's record is written (also for an attack a study recorded as failed: no reconstruction)."""
        return self.metrics.is_file()


def is_attack_output(path: str | Path) -> bool:
    """A folder attack.py wrote (metrics and a reconstruction), and neither an update nor a run inside it: the only
    kind of folder ``--overwrite`` may replace."""
    out = AttackOutput(path)
    return (out.metrics.is_file() and out.reconstruction.is_file() and not is_update_folder(path)
            and not RunLayout(path).run_json.exists())
