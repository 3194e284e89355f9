"""The leakage auditor: attack the outgoing update with attack.py's attack and score it against the
client's own images (which the client legitimately holds). The attack half sees only attacker
knowledge. Entry points hand it to the federation (``Federation(cfg, auditor=...)``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from common.cli import config_files
from common.config import load, overrides_list
from federation.audit import AuditConfig, AuditRecord, audit_due, withholds
from inversion.config import AttackConfig
from inversion.threat_model import AttackerKnowledge, ThreatConfig
from leakage.scoring import score_as_configured
from leakage.verdict import server_verdict, verdict_record
from model.factory import ModelSpec
from pipelines.attack_job import build_attack, run_attack
from pipelines.escalation import attack_until_converged

ROOT = Path(__file__).resolve().parent.parent


class AttackAudit:
    def __init__(self, cfg: AuditConfig, num_clients: int):
        self.cfg = cfg  # checked by the federation (check_audit_config), which builds the auditor
        path = Path(cfg.attack_config)
        if not path.is_absolute() and not path.exists():
            path = ROOT / path
        over = overrides_list(cfg.attack) + ["logging.wandb=false", "logging.progress=false", "scoring.lpips=false"]
        files = config_files(AttackConfig.DEFAULT_FILE, [path])
        self.attack_cfg: AttackConfig = load(AttackConfig, files, over) if cfg.every else AttackConfig()

    def due(self, rnd: int, client: int) -> bool:
        return audit_due(self.cfg, rnd, client)

    def run(self, rnd: int, client: int, spec: ModelSpec, global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
            meta: dict[str, Any], prior: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
            population: torch.Tensor | None = None) -> AuditRecord:
        """``population``: the reference pool for the re-identification test (the client's images among the others the
        federation holds); None = judged by SSIM (and RDLV) alone."""
        started = time.perf_counter()
        cfg = self.attack_cfg
        knowledge = AttackerKnowledge(ThreatConfig(), spec, global_state, update, meta, prior, "mean of the images no client holds")
        escalated = attack_until_converged(knowledge, cfg, run_attack, build_attack)
        result = escalated.result
        s, metrics = score_as_configured(cfg.scoring, result.images, result.labels, images, labels, prior, spec.num_classes, population)
        threshold = self.cfg.threshold
        conv = escalated.convergence
        judged = verdict_record(s, conv.converged, self.cfg.leak_ssim, threshold, self.cfg.reid_alpha)
        verdict = judged["verdict"]
        return AuditRecord(rnd, client, s.rdlv, s.ssim, s.ssim_gain, s.label_accuracy, threshold,
                           withholds(self.cfg, verdict), round(time.perf_counter() - started, 2),
                           metrics={m.name: s.image_metrics[m.name] for m in metrics}, verdict=verdict, converged=conv.converged,
                           heldout_error=conv.heldout_error, rungs=len(escalated.records), leak_tests=" ".join(judged["leak_tests"]),
                           identified=s.identified, identification_p=s.identification_p, server_verdict=server_verdict(conv.converged))


def auditor_for(cfg: AuditConfig, num_clients: int) -> AttackAudit | None:
    """The auditor a train config asks for (None without audits)."""
    return AttackAudit(cfg, num_clients) if cfg.every else None
