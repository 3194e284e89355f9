"""The executor interface: run every unfinished cell of a study; the runner collects the tables."""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Callable, ClassVar, Protocol

from common.errors import UserError
from common.files import read_json
from common.registry import Registry
from pipelines.attack_output import AttackOutput
from studies.spec import Cell, StudySpec


def cell_is_whole(cell_dir: Path) -> bool:
    """A finished study cell whose two records (the attack's metrics.json, the study's cell.json) read back as JSON
    objects; anything else is unfinished or damaged, and is (re)done."""
    try:
        return all(isinstance(read_json(path), dict) for path in (AttackOutput(cell_dir).metrics, cell_dir / "cell.json"))
    except UserError:
        return False


class CellRunner(Protocol):
    """What an executor needs of the study runner (``studies.runner.StudyRunner``): the cells, and the
    two calls that train and attack one of them wherever the executor runs it."""

    spec: StudySpec
    cells: list[Cell]
    progress: bool
    wandb: bool
    trainings_run: int
    attacks_run: int

    def ensure_trained(self, cell: Cell) -> Path: ...

    def targets(self, run: Path) -> list[tuple[int, int]]: ...

    def ensure_attacked(self, cell: Cell, run: Path, rnd: int, client: int) -> Path: ...


@dataclasses.dataclass
class ExecutorOptions:
    address: str = ""  # an existing cluster to join (ray); '' = start a local one
    workers: int = 0  # cells side by side on a local cluster (ray); 0 = as many as the CPUs allow


class Executor(abc.ABC):
    """Runs the cells; every finished cell lands in the study folder exactly as the local executor writes it."""

    name: ClassVar[str]

    def __init__(self, options: ExecutorOptions):
        self.options = options
        self.failed: list[dict[str, str]] = []  # cells recorded as failed (after their retry): cell, error

    @abc.abstractmethod
    def run(self, runner: CellRunner, on_cell: Callable[[Path], None] | None = None) -> None:
        """Train and attack every cell of ``runner`` that is not finished yet."""


REGISTRY: Registry[type[Executor]] = Registry("study executor", "study.py --executor")
register = REGISTRY.register
