"""The attack's W&B run: the config and threat model when it starts; the figure, the verdicts, the escalation's rungs
and the per-image table when it ends. Optional: without wandb installed the results are in metrics.json only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.config_loader import to_dict
from inversion.attack_config import AttackConfig
from inversion.threat_model import AttackerKnowledge
from leakage.image_metrics import metric_names
from leakage.record import LeakageScores
from pipelines.attack_output import AttackOutput


def start(cfg: AttackConfig, work: Path, update_dir: Path, knowledge: AttackerKnowledge):
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        print("note: wandb is not installed; results are in metrics.json only")
        return None
    meta = knowledge.meta
    logger = WandbLogger(project=cfg.logging.project, name=f"attack-r{meta['round']}-c{meta['client']}", save_dir=str(work),
                         job_type="attack", config={"attack": to_dict(cfg), "threat_model": knowledge.describe(), "update": str(update_dir)})
    return logger


def finish(logger: Any, work: Path, metrics: dict[str, Any]) -> None:
    import wandb

    run = logger.experiment
    run.log({"reconstruction": wandb.Image(str(AttackOutput(work).figure))})
    for key in (*LeakageScores.HEADLINE, *metric_names(), "iterations", "seconds", "objective", "converged", "verdict", "verdict_reason",
                "server_verdict", "risk_heldout_error", "identified", "identification_p"):
        if metrics.get(key) is not None:
            run.summary[key] = metrics[key]
    conv = metrics.get("convergence") or {}
    for key in ("heldout_error", "threshold", "reason"):
        if conv.get(key) is not None:
            run.summary[f"convergence/{key}"] = conv[key]
    rungs = (metrics.get("escalation") or {}).get("rungs", [])
    if rungs:
        columns = ["rung", "name", "iterations", "seconds", "heldout_error", "converged", "ssim", "error"]
        run.log({"escalation": wandb.Table(columns=columns, data=[[str(r.get(c)) if c in ("name", "error") else r.get(c) for c in columns]
                                                                    for r in rungs])})
    rows = metrics.get("per_image", [])
    extra = [name for name in metric_names() if any(name in r for r in rows)]
    table = wandb.Table(columns=["image", "label", "ssim", *extra, "rdlv", "prior_ssim"],
                        data=[[r["image"], r["label"], r["ssim"], *(r.get(k) for k in extra), r["rdlv"], r["prior_ssim"]] for r in rows])
    run.log({"per_image": table})
    close(logger)


def close(logger: Any) -> None:
    try:
        logger.experiment.finish()
    except Exception:  # closing a broken run must not hide the real error
        pass
