"""One attack job: attacker knowledge -> Trainer.fit of the attack -> scoring -> files and W&B.

The attack half (``pipelines.attack_setup``) sees only :class:`AttackerKnowledge`; the scoring half (after the
fit) reads the ground truth; ``pipelines.attack_wandb`` logs. Outputs are staged and appear complete or not at all.
"""
from __future__ import annotations

import csv
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from common.config_loader import build, to_dict
from common.errors import UserError
from common.files import StagedDir, load_tensors, save_tensors, write_json
from common.tracking import wandb_mode
from datamodules.sources import DataConfig, load_pool
from federation.run_layout import RunLayout, UpdateLocation
from inversion.attack_config import AttackConfig
from inversion.attack_module import AttackResult
from inversion.convergence import Convergence
from inversion.escalation import Rung
from inversion.threat_model import AttackerKnowledge
from leakage.figures import reconstruction_figure
from leakage.ground_truth import GroundTruth, ground_truth_for_update, load_image_file
from leakage.image_metrics import metric_names
from leakage.record import LeakageScores
from leakage.scoring import score_as_configured
from leakage.verdict import server_record, verdict_record
from pipelines.attack_output import AttackOutput, is_attack_output
from pipelines.attack_setup import (attacker_knowledge, build_attack, checkpoint_callback, process_rank, resolve_update,
                                    run_attack)
from pipelines import attack_wandb
from pipelines.escalation_runner import Escalated, attack_until_converged


def score_result(result: AttackResult, knowledge: AttackerKnowledge, gt: GroundTruth | None, cfg: AttackConfig,
                 where: UpdateLocation | None, population: bool = True) -> tuple[dict[str, Any], LeakageScores | None]:
    """(metrics.json's content, the leakage record); without ground truth only the attack's own facts are reported."""
    base: dict[str, Any] = {"iterations": result.iterations, "seconds": round(result.seconds, 3), "objective": result.objective,
                            "restart": result.restart, "label_strategy": result.label_strategy, "label_warning": result.label_warning,
                            "selection": result.selection,
                            "setting": result.restart_settings.get(result.restart, {}),
                            "restarts": [{"restart": r, "objective": result.restart_objectives[r], "score": result.restart_scores[r],
                                          "setting": result.restart_settings[r]} for r in result.restart_objectives]}
    if gt is None:
        return {**LeakageScores.unscored_headline(metric_names()), **base, "per_image": [],
                "note": "no ground truth beside this update: nothing to score"}, None
    pop, class_priors = (None, None)
    if where is not None and population:
        pop, class_priors = _population(where.run, knowledge)
    scores, _ = score_as_configured(cfg.scoring, at_size(result.images, gt.images), result.labels, gt.images, gt.labels,
                                    knowledge.scoring_prior, knowledge.spec.num_classes, pop, class_priors)
    return scores.to_json(after_headline=base), scores


def at_size(images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reconstructions at the ground truth's size, for scoring: unchanged when they already are; else resized
    with an antialiased bilinear filter (threat.reconstruct_at_input reconstructs at the model's input size)."""
    if images.shape[-2:] == like.shape[-2:]:
        return images
    import torch.nn.functional as F

    return F.interpolate(images.float(), size=tuple(like.shape[-2:]), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _population(run: RunLayout, knowledge: AttackerKnowledge) -> tuple[torch.Tensor | None, dict[int, torch.Tensor] | None]:
    """The run's training pool (for identification ranks) and per-class priors (scoring only)."""
    class_priors = None
    pool_images = None
    try:
        saved, split = run.read_config(), run.read_split()
        if saved is not None and split is not None:
            pool = load_pool(build(DataConfig, saved.get("data", {}), "data"))
            test = set(split["test_indices"])
            train = torch.tensor([i for i in range(len(pool)) if i not in test])
            pool_images = pool.images[train]
            if run.prior.is_file():
                tensors = load_tensors(run.prior)
                class_priors = {k: tensors[f"class/{name}"] for k, name in enumerate(split["class_names"]) if f"class/{name}" in tensors}
    except (UserError, OSError, KeyError, ValueError, yaml.YAMLError):
        pool_images = None  # the population is a bonus metric: a moved dataset must not fail the scoring
    if pool_images is not None and tuple(pool_images.shape[1:]) != tuple(knowledge.scoring_prior.shape):
        pool_images = None
    return pool_images, class_priors


def default_out(cfg: AttackConfig, update_dir: Path, where: UpdateLocation | None) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if where is None:
        return update_dir / "attack"
    return where.run.attack(where.round, where.client)


def check_out(out: Path, update_dir: Path) -> None:
    """An attack writes its own folder; it never replaces the update it attacks or the run around it."""
    target, update = out.resolve(), update_dir.resolve()
    if target == update or target in update.parents:
        raise UserError(f"--out {out} would replace the attacked update ({update_dir}) or the run that holds it: choose another folder")


def run_attack_job(cfg: AttackConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    started = time.time()
    update_dir = resolve_update(cfg)
    where = RunLayout.of_update(update_dir)  # its run, round and client: resolved once, for the prior, the output and the scoring
    knowledge = attacker_knowledge(cfg, update_dir, where)
    attack = build_attack(knowledge, cfg)  # validates everything before a file is written
    meta = knowledge.meta
    given_truth = load_image_file(cfg.ground_truth, meta["input_shape"], meta["num_images"]) if cfg.ground_truth else None
    out = default_out(cfg, update_dir, where)
    check_out(out, update_dir)
    if process_rank() > 0:  # a DDP worker launched by rank 0: optimise its restarts, write nothing
        run_attack(knowledge, cfg, attack=attack)
        return {"out": out, "metrics": {}, "result": None}
    staged = StagedDir(out, resume=resume, overwrite=overwrite, own=is_attack_output, what="an attack output")
    if resume and not staged.partial.is_dir() and staged.final.exists():
        raise UserError(f"{out} is complete: nothing to resume (--overwrite replaces it with a new attack)")
    wandb_logger = None

    def close_wandb() -> None:
        if wandb_logger is not None:
            attack_wandb.close(wandb_logger)

    with staged.staged(on_failure=close_wandb) as work:
        files = AttackOutput(work)
        ckpt = files.checkpoints / "last.ckpt"
        ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
        callbacks = [checkpoint_callback(work, cfg.optim.checkpoint_every)] if cfg.optim.checkpoint_every > 0 else []
        if cfg.logging.wandb and wandb_mode() != "disabled":
            wandb_logger = attack_wandb.start(cfg, work, update_dir, knowledge)
        if attack.label_warning:
            print(f"warning: {attack.label_warning}", file=sys.stderr)
        unsmoothed = attack.objective.fmodel.unsmoothed
        if unsmoothed:
            print(f"warning: update matching replays these activations with their exact (piecewise) derivative: "
                  f"{', '.join(unsmoothed[:4])}{' ...' if len(unsmoothed) > 4 else ''}", file=sys.stderr)
        if knowledge.unknown_client_weights:
            unknown = knowledge.unknown_client_weights
            print(f"warning: the client keeps {len(unknown)} BN weights of its own (FedBN: {', '.join(unknown[:2])}"
                  f"{' ...' if len(unknown) > 2 else ''}); the attack replays its steps with the server's values", file=sys.stderr)
        escalated = attack_until_converged(knowledge, cfg, run_attack, build_attack, first=attack, logger=wandb_logger or False,
                                           callbacks=callbacks, ckpt_path=ckpt_path, on_rung=_say_rung)
        result, attack = escalated.result, escalated.attack
        # the reconstruction first: a scoring failure must never lose it
        save_tensors(files.reconstruction, {"images": result.images, "labels": result.labels,
                                                           "restart_images": result.restart_images})
        reconstruction_figure(files.figure, result.images, knowledge.prior, None, None, "reconstruction (not scored yet)")
        try:
            gt = given_truth if given_truth is not None else ground_truth_for_update(update_dir)
            metrics, scores = score_result(result, knowledge, gt, cfg, where)
            add_verdict(metrics, scores, escalated, knowledge, gt, cfg)
        except UserError as err:
            raise UserError(f"scoring failed ({err}); the reconstruction is kept in {work}") from None
        metrics["threat_model"] = knowledge.describe()
        metrics["prior"] = knowledge.prior_source  # the attack's start and RDLV's reference image
        metrics["bn_source"] = attack.objective.bn_source
        metrics["activations_not_smoothed"] = unsmoothed
        metrics["update"] = str(update_dir)
        metrics["resumed"] = ckpt_path is not None
        metrics["devices"] = cfg.devices
        metrics["wall_seconds"] = round(time.time() - started, 2)
        files.config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        _write_trace(files.objective_trace, attack.objective_trace)
        title = (f"round {knowledge.meta['round']} client {knowledge.meta['client']}: {knowledge.meta['num_images']} image(s), batch {knowledge.meta['batch_size']}, "
                 f"{knowledge.meta['local_steps']} step(s)")
        if metrics.get("ssim") is not None:
            title += f" | SSIM {metrics['ssim']:.3f}, RDLV {metrics['rdlv']:.2f}"
        shown = at_size(result.images, gt.images) if gt else result.images
        reconstruction_figure(files.figure, shown, knowledge.scoring_prior if gt else knowledge.prior, gt.images if gt else None,
                              metrics if gt else None, title)
        write_json(files.metrics, metrics)
        if wandb_logger is not None:
            attack_wandb.finish(wandb_logger, work, metrics)
        shutil.rmtree(files.checkpoints, ignore_errors=True)  # only needed to resume an unfinished attack
    return {"out": staged.final, "metrics": metrics, "result": result}


def add_verdict(metrics: dict[str, Any], scores: LeakageScores | None, escalated: Escalated, knowledge: AttackerKnowledge,
                gt: GroundTruth | None, cfg: AttackConfig) -> None:
    """Convergence, the escalation's rungs and (with ground truth) the verdict, into ``metrics``. Each rung's SSIM is
    scored here, after the attack has chosen: it is for the record (how often the convergence rule was right), never
    for choosing."""
    conv = escalated.convergence
    metrics["seconds"] = round(escalated.seconds, 3)  # the optimisation time of every rung: what the answer cost
    metrics["converged"] = conv.converged
    metrics["convergence"] = conv.to_dict()
    metrics["escalation"] = escalated.record(cfg)
    metrics.update(server_record(conv.converged, conv.heldout_error))  # from the update alone: what a server can say
    if gt is None or scores is None:
        metrics["verdict"] = None  # without the client's images, leakage is not judged: server_verdict is the verdict
        return
    metrics.update(verdict_record(scores, conv.converged, cfg.scoring.leak_ssim, cfg.scoring.leak_rdlv, cfg.scoring.reid_alpha))
    for entry, rung_result in zip(metrics["escalation"]["rungs"], escalated.results):
        if rung_result is escalated.result:
            entry["ssim"] = scores.ssim  # the returned rung is scored already
        elif rung_result is not None:
            entry["ssim"] = score_as_configured(cfg.scoring, at_size(rung_result.images, gt.images), rung_result.labels, gt.images, gt.labels,
                                                knowledge.scoring_prior, knowledge.spec.num_classes, metrics=[])[0].ssim


def _say_rung(rung: Rung, conv: Convergence | None) -> None:
    """One line per rung on stderr, so that a long escalation is never silent."""
    if conv is None:
        print(f"attack rung {rung.index} ({rung.name}) failed; going on", file=sys.stderr)
    elif not conv.converged:
        print(f"attack rung {rung.index} ({rung.name}): {conv.reason}", file=sys.stderr)


def _write_trace(path: Path, trace: list[tuple[int, float, float]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "seconds", "best_objective"])
        writer.writerows(trace)


