"""In this process, one cell after another: the default, and what every other executor must reproduce."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from common import interrupt
from common.errors import UserError
from studies.executors.base import CellRunner, Executor, ExecutorOptions, register



@register
class LocalExecutor(Executor):
    name = "local"

    def __init__(self, options: ExecutorOptions):
        if options.address or options.workers:
            raise UserError("--address and --workers are for --executor ray; the local executor runs one cell at a time")
        super().__init__(options)

    def run(self, runner: CellRunner, on_cell: Callable[[Path], None] | None = None) -> None:
        spec = runner.spec
        bar = tqdm(total=len(runner.cells), desc=spec.name, unit="cell", disable=not runner.progress, dynamic_ncols=True)
        try:
            for cell in runner.cells:
                interrupt.check()  # a Ctrl-C something swallowed (common/interrupt.py) stops the study between cells too
                label = " ".join(f"{k}={v}" for k, v in cell.axes.items()) or "base"
                bar.set_description(f"{spec.name}: {label} seed {cell.seed}")
                run = runner.ensure_trained(cell)
                for rnd, client in runner.targets(run):
                    cell_dir = runner.ensure_attacked(cell, run, rnd, client)
                    if on_cell is not None:
                        on_cell(cell_dir)
                bar.update(1)
        finally:
            bar.close()
