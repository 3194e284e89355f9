"""The leakage auditor: attack the outgoing update with attack.py's attack and score it against the
client's own images (which the client legitimately holds). The attack half sees only attacker
knowledge. Entry points hand it to the federation (``Federation(cfg, auditor=...)``).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from common.config_loader import overrides_list
from federation.audit import AuditConfig, AuditRecord, audit_due, withholds
from inversion.attack_config import AttackConfig
from inversion.threat_model import AttackerKnowledge, ThreatConfig
from leakage.scoring import score_as_configured
from leakage.verdict import server_verdict, verdict_record
from model.factory import ModelSpec
from pipelines.attack_setup import build_attack, run_attack
from pipelines.attack_plan import attack_config, needs_update_matching, withholds_buffers
from pipelines.escalation_runner import attack_until_converged


class AttackAudit:
    def __init__(self, cfg: AuditConfig, num_clients: int):
        self.cfg = cfg  # checked by the federation (check_audit_config), which builds the auditor
        self.overrides = overrides_list(cfg.attack) + ["logging.wandb=false", "logging.progress=false", "scoring.lpips=false"]
        self._configs: dict[bool, AttackConfig] = {}  # by "needs update matching": the only thing the choice depends on
        self.attack_config(1)  # a bad attack config or override fails when the federation is built, not in its first audit

    def attack_config(self, num_images: int, buffers_withheld: bool = False) -> AttackConfig:
        """attack.py's config for an update of a client with ``num_images`` images (pipelines.attack_plan): the same
        configuration, batch.yaml for a multi-image client or an update without BN buffers included, unless
        audit.attack_config names a file."""
        key = needs_update_matching(num_images, buffers_withheld)
        if key not in self._configs:
            self._configs[key] = attack_config(self.cfg.attack_config, self.overrides, num_images=num_images,
                                               buffers_withheld=buffers_withheld)
        return self._configs[key]

    def due(self, rnd: int, client: int) -> bool:
        return audit_due(self.cfg, rnd, client)

    def run(self, rnd: int, client: int, spec: ModelSpec, global_state: dict[str, torch.Tensor], update: dict[str, torch.Tensor],
            meta: dict[str, Any], prior: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
            population: torch.Tensor | None = None) -> AuditRecord:
        """``population``: the reference pool for the re-identification test (the client's images among the others the
        federation holds); None = judged by SSIM (and RDLV) alone."""
        started = time.perf_counter()
        cfg = self.attack_config(int(meta.get("num_images", 1)), withholds_buffers(meta))
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
