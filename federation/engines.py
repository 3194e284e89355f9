"""FL engines: what runs the rounds of a federation. One small registered function each.

``simulation``: the in-process FedAvg loop (federation.in_process; fast, resumable). ``nvflare``: NVIDIA
FLARE's simulator, one process per site (federation.flare). Both train the same clients with the same seeds and send
every update through the same outbox; both leave the same run layout (docs/update-format.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from common.errors import UserError
from common.registry import Registry
from federation.federation import Federation, RoundRecord

Engine = Callable[[Federation, Path, bool], list[RoundRecord]]
REGISTRY: Registry[Engine] = Registry("FL engine", "fl.engine")
RESUMABLE: set[str] = set()


def register(name: str, resumable: bool = False) -> Callable[[Engine], Engine]:
    def add(fn: Engine) -> Engine:
        REGISTRY.register(fn, name=name)
        if resumable:
            RESUMABLE.add(name)
        return fn
    return add


def engine(name: str, resume: bool = False) -> Engine:
    """The engine called ``name``; refused before any work when it cannot do what is asked (resume)."""
    fn = REGISTRY.get(name)
    if resume and name not in RESUMABLE:
        raise UserError(f"--resume is for {', '.join(sorted(RESUMABLE))}, not fl.engine={name}: an interrupted {name} run starts over")
    return fn


@register("simulation", resumable=True)
def in_process(federation: Federation, run_dir: Path, resume: bool) -> list[RoundRecord]:
    from federation.in_process import InProcessEngine

    return InProcessEngine(federation).run(run_dir, resume=resume)


@register("nvflare")
def nvflare(federation: Federation, run_dir: Path, resume: bool) -> list[RoundRecord]:
    from federation.flare.job import run_simulator

    return run_simulator(federation, run_dir)
