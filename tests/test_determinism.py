"""An attack's numbers depend on its inputs, its seed, its thread count and its iteration counts, never on how fast
the machine ran (issue 38: a quick study gave other later-rung numbers in-process than on Ray, with the same
iteration counts, because the escalation's time left was fed to the rungs' lr schedule)."""
from __future__ import annotations

import time
import types

import torch

from common.config_loader import build
from common.files import load_tensors
from federation.run_layout import RunLayout
from inversion.attack_config import AttackConfig
from inversion.threat_model import ThreatConfig, load_knowledge
from pipelines.attack_job import run_attack_job
from pipelines.attack_setup import build_attack, run_attack
from pipelines.escalation_runner import attack_until_converged

# every rung runs (nothing meets a held-out error of 1e-12), on a budget no rung comes near
CLIMB = {"optim": {"iterations": 6, "warmup": 1, "restarts": 2, "grid": {"total_variation": [0.003, 0.03]}},
         "convergence": {"heldout_error": 1e-12}, "escalation": {"max_seconds": 10_000.0},
         "logging": {"progress": False, "wandb": False}, "scoring": {"lpips": False}}


def _climb(tiny_run, clock_speed: float, monkeypatch) -> list[torch.Tensor]:
    """Every rung's reconstruction, with the attack module's clock running ``clock_speed`` times real time."""
    import inversion.attack_module as module

    fake = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() * clock_speed)
    monkeypatch.setattr(module, "time", fake)
    knowledge = load_knowledge(RunLayout(tiny_run).update(1, 2), ThreatConfig())
    out = attack_until_converged(knowledge, build(AttackConfig, CLIMB), run_attack, build_attack)
    assert [r["name"] for r in out.records] == ["configured", "larger_step", "longer", "update_matching"]
    return [r.images for r in out.results]


def test_a_rungs_numbers_do_not_depend_on_the_machines_speed(tiny_run, monkeypatch):
    normal = _climb(tiny_run, 1.0, monkeypatch)
    slow = _climb(tiny_run, 1e7, monkeypatch)  # a machine whose every step takes "days": same iterations, same numbers
    for rung, (a, b) in enumerate(zip(normal, slow)):
        assert torch.equal(a, b), f"rung {rung} differs"


def test_the_same_attack_twice_writes_identical_tensors(tiny_run, tmp_path):
    tree = {**CLIMB, "update": str(RunLayout(tiny_run).update(1, 2))}
    for name in ("a", "b"):
        run_attack_job(build(AttackConfig, {**tree, "out": str(tmp_path / name)}))
    a, b = (load_tensors(tmp_path / name / "reconstruction.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
