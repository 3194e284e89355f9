"""Leakage audit inside FL: the client attacks its own outgoing update before sending it.

Like the official RDLV filter, it runs last (after the privacy filters, on exactly what would leave
the client) every N rounds on chosen clients. Unlike it, its answer has three values
(``leakage.verdict``): an update that ``leaks`` is withheld; one on which the attack did not
converge is ``inconclusive``, and follows ``audit.inconclusive`` (withheld by default: a stalled
attack is no evidence of safety); ``no leak found`` (converged, nothing close) is sent. This module
holds what the FL layer needs (the config, the record, the :class:`Auditor` interface); the auditor
that attacks and scores is ``pipelines.attack_audit.AttackAudit``, handed to the federation by the entry
point, so that the FL layer never imports the attack.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from common.config_loader import option
from common.errors import UserError
from model.factory import ModelSpec


@dataclasses.dataclass
class AuditConfig:
    every: int = option(0, "audit every this many rounds (0 = no audit); rounds 0, every, 2*every, ...")
    clients: list[int] = option(help="clients to audit (empty = all)", factory=list)
    threshold: float | None = option(None, "an update whose RDLV exceeds this also counts as leaking (null = judged by audit.leak_ssim alone); "
                                           "the official filter uses 1.0")
    leak_ssim: float = option(0.75, "an update leaks when a reconstructed image reaches this SSIM with the client's image")
    reid_alpha: float = option(0.01, "an update also leaks when the attack picks the client's images out of the federation's image pool "
                                     "more often than chance (exact one-sided binomial p below this)")
    inconclusive: Literal["withhold", "send"] = option("withhold", "what happens to an update on which the attack did not converge (verdict "
                                                                   "inconclusive): withhold (a stalled attack is no evidence of safety) or send")
    enforce: bool = option(True, "withhold as the verdicts say; false = only measure (every update is sent, verdicts recorded)")
    attack_config: str = option("", "attack config file on top of the attack defaults ('' = what attack.py chooses: "
                                    "configs/attack/batch.yaml for a client with more than one image, the defaults otherwise)")
    attack: dict[str, Any] = option(help="attack config overrides, e.g. {optim.iterations: 200}", factory=dict)


@dataclasses.dataclass
class AuditRecord:
    round: int
    client: int
    rdlv: float
    ssim: float
    ssim_gain: float
    label_accuracy: float | None
    threshold: float | None
    withheld: bool
    seconds: float
    verdict: str = ""  # leaks, no leak found, inconclusive (leakage.verdict)
    converged: bool | None = None
    heldout_error: float | None = None  # the convergence signal (inversion.convergence)
    rungs: int = 1  # attack rungs run (1 = no escalation)
    leak_tests: str = ""  # the tests that found the leak (leakage.verdict.TESTS), space-separated
    identified: int | None = None  # the client's images re-identified in the federation's pool (leakage.reidentification)
    identification_p: float | None = None  # the re-identification test's p-value
    server_verdict: str = ""  # from the update alone: reconstructed or inconclusive (leakage.verdict.server_verdict)
    metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)  # the registered image metrics (PSNR, ...)

    def row(self) -> dict[str, Any]:
        """audit.csv's row: the image metrics right after SSIM."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "metrics"}
        out = {k: fields.pop(k) for k in ("round", "client", "rdlv", "ssim")}
        return {**out, **self.metrics, **fields}


class Auditor(Protocol):
    cfg: AuditConfig

    def due(self, rnd: int, client: int) -> bool: ...

    def run(self, rnd: int, client: int, spec: ModelSpec, global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
            meta: dict[str, Any], prior: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
            population: torch.Tensor | None = None) -> AuditRecord: ...


def check_audit_config(cfg: AuditConfig, num_clients: int) -> None:
    if cfg.every < 0:
        raise UserError(f"audit.every must be >= 0, got {cfg.every}")
    if not 0 < cfg.reid_alpha < 1:
        raise UserError(f"audit.reid_alpha must be between 0 and 1, got {cfg.reid_alpha}")
    bad = [c for c in cfg.clients if not 0 <= c < num_clients]
    if bad:
        raise UserError(f"audit.clients {bad} out of range: there are {num_clients} clients")


def withholds(cfg: AuditConfig, verdict: str) -> bool:
    """Whether the audit keeps an update with this verdict from leaving the client."""
    if not cfg.enforce:
        return False
    return verdict == "leaks" or (verdict == "inconclusive" and cfg.inconclusive == "withhold")


def audit_due(cfg: AuditConfig, rnd: int, client: int) -> bool:
    return cfg.every > 0 and rnd % cfg.every == 0 and (not cfg.clients or client in cfg.clients)


class NoAudit:
    """The federation without an auditor: nothing is due; a config that asks for audits is refused."""

    def __init__(self, cfg: AuditConfig):
        if cfg.every:
            raise ValueError("audit.every > 0 needs an auditor: pass pipelines.attack_audit.AttackAudit to the federation")
        self.cfg = cfg

    def due(self, rnd: int, client: int) -> bool:
        return False

    def run(self, *args: Any, **kwargs: Any) -> AuditRecord:
        raise RuntimeError("no audit is configured")


def append_audit_csv(path: Path, record: AuditRecord) -> None:
    row = record.row()
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != list(row):
            raise ValueError(f"{path} has columns {header}, this audit record has {list(row)}")
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
