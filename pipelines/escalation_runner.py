"""Run the attack, judge its convergence, and climb the escalation ladder until it converges.

Used by the attack job and by the FL audit alike, so that both answer with the same evidence.
Every rung is recorded (what it changed, how long it ran, its held-out mismatch, converged or
not); the reconstruction returned is the converged rung's, or else the rung that matched the
held-out BN layers best. Nothing here reads a training image.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import pytorch_lightning as pl

from common.errors import UserError
from inversion.attack_module import AttackResult, GradientInversionAttack
from inversion.attack_config import AttackConfig
from inversion.convergence import Convergence, judge
from inversion.escalation import Rung, better, rung_config, rung_stop, rungs
from inversion.threat_model import AttackerKnowledge


@dataclasses.dataclass
class Escalated:
    result: AttackResult  # the returned reconstruction
    attack: GradientInversionAttack  # the attack module of the returned rung
    convergence: Convergence  # of the returned rung
    rung: int  # index of the returned rung (0 = the configured attack)
    records: list[dict[str, Any]]  # one per rung run, in order
    results: list[AttackResult | None]  # each rung's result (None where it failed), for scoring afterwards
    stopped: str  # converged, ladder exhausted, budget spent, escalation off, convergence not judged
    seconds: float  # optimisation seconds of all rungs

    def record(self, cfg: AttackConfig) -> dict[str, Any]:
        """metrics.json's ``escalation`` entry."""
        return {"enabled": cfg.escalation.enabled and cfg.devices == 1, "max_seconds": cfg.escalation.max_seconds,
                "stopped": self.stopped, "returned_rung": self.rung, "seconds": round(self.seconds, 3), "rungs": self.records}


def attack_until_converged(knowledge: AttackerKnowledge, cfg: AttackConfig, run: Callable[..., tuple[AttackResult, GradientInversionAttack]],
                           build: Callable[[AttackerKnowledge, AttackConfig], GradientInversionAttack],
                           first: GradientInversionAttack | None = None, logger: Any = False,
                           callbacks: list[pl.Callback] | None = None, ckpt_path: str | None = None,
                           on_rung: Callable[[Rung, Convergence | None], None] | None = None) -> Escalated:
    """``run`` and ``build`` are the attack job's ``run_attack`` and ``build_attack`` (passed in, so that this
    module sits beside the job instead of importing it). The first rung gets the logger, callbacks and
    checkpoint; later rungs run without them (a resumed attack starts its escalation over)."""
    escalating = cfg.escalation.enabled and cfg.devices == 1  # DDP workers cannot follow a rank's decision
    ladder = rungs(dataclasses.replace(cfg.escalation, enabled=escalating))
    configs = {r.index: rung_config(cfg, r, None) for r in ladder}  # a typo in the ladder fails before any work
    budget = cfg.escalation.max_seconds if escalating else 0.0
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    results: list[AttackResult | None] = []
    best: tuple[int, AttackResult, GradientInversionAttack, Convergence] | None = None
    last_error: UserError | None = None
    optimising = 0.0
    stopped = "ladder exhausted" if escalating else "escalation off"
    for rung in ladder:
        left = None
        if rung.index > 0 and budget > 0:
            left = budget - (time.perf_counter() - started)
            if left < 1.0:
                stopped = "budget spent"
                break
        rcfg = configs[rung.index] if left is None else rung_config(cfg, rung, left)
        entry: dict[str, Any] = {"rung": rung.index, "name": rung.name, "overrides": rung.overrides}
        try:
            attack = first if rung.index == 0 and first is not None else build(knowledge, rcfg)
            first_rung = rung.index == 0
            result, attack = run(knowledge, rcfg, logger=logger if first_rung else False, callbacks=callbacks if first_rung else None,
                                 ckpt_path=ckpt_path if first_rung else None, attack=attack, **rung_stop(rcfg, left))
        except UserError as err:
            if not escalating:
                raise
            last_error = err
            records.append({**entry, "error": str(err), "converged": False})
            results.append(None)
            if on_rung is not None:
                on_rung(rung, None)
            continue
        conv = judge(result.restart_heldout.get(result.restart), attack.objective.heldout_layers, result.objective, cfg.convergence,
                     attack.objective.bn_normalized, result.restart_heldout_start.get(result.restart), attack.objective.heldout_unit)
        optimising += result.seconds
        records.append({**entry, "iterations": result.iterations, "seconds": round(result.seconds, 3), "restart": result.restart,
                        "setting": result.restart_settings.get(result.restart, {}), **conv.to_dict()})
        results.append(result)
        if on_rung is not None and escalating:  # progress of a ladder; a single attack has nothing to announce
            on_rung(rung, conv)
        if best is None or better(conv.heldout_error, best[3].heldout_error):
            best = (rung.index, result, attack, conv)
        if conv.converged:
            stopped = "converged"
            break
        if conv.converged is None:
            stopped = "convergence not judged"  # nothing to climb towards
            break
    if best is None:
        assert last_error is not None
        raise UserError(f"every rung of the escalation failed; the last: {last_error}")
    index, result, attack, conv = best
    return Escalated(result, attack, conv, index, records, results, stopped, optimising)
