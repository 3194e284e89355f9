"""Leakage audit inside FL: the client attacks its own outgoing update before sending it.

Like the official RDLV filter, it runs last (after the privacy filters, on exactly what would leave
the client) every N rounds on chosen clients, and with a threshold it withholds an update whose
RDLV exceeds it. The attack half sees only attacker knowledge; the client then scores the
reconstruction against its own images, which it legitimately holds.
"""
from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from common.config import load, option, overrides_list
from common.errors import UserError
from inversion.config import AttackConfig
from inversion.threat_model import AttackerKnowledge, ThreatConfig
from lightning_modules.models import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
AUDIT_FIELDS = ["round", "client", "rdlv", "ssim", "psnr", "ssim_gain", "label_accuracy", "threshold", "withheld", "seconds"]


@dataclasses.dataclass
class AuditConfig:
    every: int = option(0, "audit every this many rounds (0 = no audit); rounds 0, every, 2*every, ...")
    clients: list[int] = option(help="clients to audit (empty = all)", factory=list)
    threshold: float | None = option(None, "withhold an update whose RDLV exceeds this (null = only measure); the official filter uses 1.0")
    attack_config: str = option("configs/attack/default.yaml", "attack config file")
    attack: dict[str, Any] = option(help="attack config overrides, e.g. {optim.iterations: 200}", factory=dict)


@dataclasses.dataclass
class AuditRecord:
    round: int
    client: int
    rdlv: float
    ssim: float
    psnr: float
    ssim_gain: float
    label_accuracy: float | None
    threshold: float | None
    withheld: bool
    seconds: float


class LeakageAudit:
    def __init__(self, cfg: AuditConfig, num_clients: int):
        self.cfg = cfg
        if cfg.every < 0:
            raise UserError(f"audit.every must be >= 0, got {cfg.every}")
        bad = [c for c in cfg.clients if not 0 <= c < num_clients]
        if bad:
            raise UserError(f"audit.clients {bad} out of range: there are {num_clients} clients")
        from common.cli import config_files

        path = Path(cfg.attack_config)
        if not path.is_absolute() and not path.exists():
            path = ROOT / path
        over = overrides_list(cfg.attack) + ["logging.wandb=false", "logging.progress=false", "scoring.lpips=false"]
        files = config_files(ROOT / "configs" / "attack" / "default.yaml", [path])
        self.attack_cfg: AttackConfig = load(AttackConfig, files, over) if cfg.every else AttackConfig()
        self.records: list[AuditRecord] = []

    @property
    def enabled(self) -> bool:
        return self.cfg.every > 0

    def due(self, rnd: int, client: int) -> bool:
        return self.enabled and rnd % self.cfg.every == 0 and (not self.cfg.clients or client in self.cfg.clients)

    def run(self, rnd: int, client: int, spec: ModelSpec, global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
            meta: dict[str, Any], prior: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> AuditRecord:
        from leakage.metrics import SSIMSettings
        from leakage.scoring import score
        from pipelines.attack_job import run_attack

        started = time.perf_counter()
        cfg = self.attack_cfg
        knowledge = AttackerKnowledge(ThreatConfig(), spec, global_state, update, meta, prior, "population mean of the training pool")
        result, _ = run_attack(knowledge, cfg)
        settings = SSIMSettings.for_size(spec.image_size, cfg.scoring.ssim_kernel, cfg.scoring.ssim_sigma)
        s = score(result.images, result.labels, images, labels, prior, spec.num_classes, settings)
        threshold = self.cfg.threshold
        record = AuditRecord(rnd, client, s["rdlv"], s["ssim"], s["psnr"], s["ssim_gain"], s["label_accuracy"], threshold,
                             threshold is not None and s["rdlv"] > threshold, round(time.perf_counter() - started, 2))
        self.records.append(record)
        return record


def append_audit_csv(path: Path, record: AuditRecord) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=AUDIT_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(dataclasses.asdict(record))
