"""One attack job: attacker knowledge -> Trainer.fit of the attack -> scoring -> files and W&B.

The attack half sees only :class:`AttackerKnowledge`; the scoring half (after the fit) reads the
ground truth. Outputs are staged and appear complete or not at all.
"""
from __future__ import annotations

import csv
import datetime
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

from common.config_loader import build, to_dict
from common.errors import UserError
from common.files import StagedDir, load_tensors, load_weights_only, save_tensors, write_json
from common.interrupt import fit
from common.tracking import wandb_mode
from datamodules.sources import DataConfig, load_pool
from common.quiet import quiet_lightning
from federation.run_layout import RunLayout, UpdateLocation
from pipelines.attack_output import AttackOutput, is_attack_output
from federation.update_store import high_risk_update
from inversion.attack_config import AttackConfig, check_attack_config
from inversion.threat_model import AttackerKnowledge, at_input_resolution, load_knowledge, load_prior, prior_description
from leakage.figures import reconstruction_figure
from leakage.ground_truth import GroundTruth, ground_truth_for_update, load_image_file, oracle_knowledge
from leakage.image_metrics import metric_names
from leakage.record import LeakageScores
from leakage.scoring import score_as_configured
from leakage.verdict import server_record, verdict_record
from inversion.attack_module import AttackResult, GradientInversionAttack, iteration_loader
from inversion.convergence import Convergence
from inversion.escalation import Rung
from pipelines.escalation_runner import Escalated, attack_until_converged
from model.factory import batch_norm_layers, build_model


def resolve_update(cfg: AttackConfig) -> Path:
    if cfg.update:
        return Path(cfg.update)
    return high_risk_update(cfg.run)


def resolve_prior(cfg: AttackConfig, where: UpdateLocation | None) -> tuple[torch.Tensor | None, str]:
    """The attacker's prior: the configured file, else the prior of the run the update sits in (``where``)."""
    if cfg.prior.path:
        return load_prior(cfg.prior.path, cfg.prior.key), f"{cfg.prior.path}:{cfg.prior.key}"
    if where is not None and where.run.prior.is_file():
        population = prior_description(where.run.prior)
        if population.endswith("training pool"):  # runs made before issue 23: the pool held the clients' images
            population = f"mean of the {population}, the clients' images included"
        return load_prior(where.run.prior, cfg.prior.key), f"run prior '{cfg.prior.key}' ({population or 'population mean'})"
    return None, ""


def attacker_knowledge(cfg: AttackConfig, update_dir: Path, where: UpdateLocation | None = None) -> AttackerKnowledge:
    """``where``: the update's run, round and client when the caller has resolved them (else resolved here)."""
    prior, prior_source = resolve_prior(cfg, where if where is not None else RunLayout.of_update(update_dir))
    knowledge = load_knowledge(update_dir, cfg.threat, cfg.global_model or None, prior, prior_source, cfg.trusted_models, cfg.force)
    threat = cfg.threat
    if threat.oracle_labels or threat.oracle_bn_statistics or threat.oracle_batch_order:
        gt = ground_truth_for_update(update_dir)
        if gt is None:
            raise UserError(f"oracle knowledge was asked for, but {update_dir} has no ground truth beside it")
        bn_names = [n for n, _ in batch_norm_layers(build_model(knowledge.spec))]
        knowledge.oracle = oracle_knowledge(gt, threat, bn_names)
    if threat.reconstruct_at_input:
        knowledge = at_input_resolution(knowledge)
    return knowledge


def make_trainer(cfg: AttackConfig, logger: Any = False, callbacks: list[pl.Callback] | None = None, **kwargs: Any) -> pl.Trainer:
    accelerator = cfg.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("accelerator gpu requested but no CUDA device is available")
    check_attack_config(cfg)
    strategy: Any = "auto"
    if cfg.devices > 1:
        from pytorch_lightning.strategies import DDPStrategy

        # every rank keeps its own best iterates: buffers must not be overwritten by rank 0's
        strategy = DDPStrategy(broadcast_buffers=False, process_group_backend="nccl" if accelerator in ("gpu", "cuda") else "gloo")
    callbacks = list(callbacks or [])
    options: dict[str, Any] = dict(
        accelerator=accelerator, devices=cfg.devices, strategy=strategy, max_epochs=1, max_steps=cfg.optim.iterations, logger=logger,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks), enable_model_summary=False,
        enable_progress_bar=cfg.logging.progress, num_sanity_val_steps=0, callbacks=callbacks, log_every_n_steps=max(1, cfg.logging.log_every),
        use_distributed_sampler=False,  # the "data" are step numbers: every rank takes every step
    )
    if cfg.optim.max_seconds > 0:
        options["max_time"] = datetime.timedelta(seconds=cfg.optim.max_seconds)
    options.update(kwargs)
    return pl.Trainer(**options)


def build_attack(knowledge: AttackerKnowledge, cfg: AttackConfig,
                 trace_every: int = 0) -> GradientInversionAttack:
    """The attack module; building it validates the objective, labels and optimisation settings."""
    check_attack_config(cfg)
    attack = GradientInversionAttack(knowledge, cfg.objective, cfg.optim, cfg.labels, trace_every)
    attack.log_every = max(1, cfg.logging.log_every)
    return attack


def run_attack(knowledge: AttackerKnowledge, cfg: AttackConfig, logger: Any = False,
               trace_every: int = 0, callbacks: list[pl.Callback] | None = None, ckpt_path: str | None = None,
               attack: GradientInversionAttack | None = None, **trainer_kwargs: Any) -> tuple[AttackResult, GradientInversionAttack]:
    quiet_lightning()
    if attack is None:
        attack = build_attack(knowledge, cfg, trace_every)
    if ckpt_path:
        check_checkpoint(ckpt_path)
    trainer = make_trainer(cfg, logger, callbacks, **trainer_kwargs)
    # checkpoints hold tensors and plain containers only: load them without unpickling arbitrary objects
    fit(trainer, attack, train_dataloaders=iteration_loader(cfg.optim.iterations), ckpt_path=ckpt_path,
                weights_only=True if ckpt_path else None)
    return attack.result(), attack


def check_checkpoint(path: str | Path) -> None:
    """A checkpoint that does not load as plain tensors and containers is refused before Lightning sees it.

    It may be truncated by a crash, or crafted: ``weights_only`` stops the code in it from running,
    and this turns the resulting unpickling error into one line instead of a traceback.
    """
    load_weights_only(path, "checkpoint", ": delete it, or the .partial folder, to start the attack over")


def process_rank() -> int:
    """Rank of this process in a Lightning DDP launch (children get LOCAL_RANK; the launcher is rank 0)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def checkpoint_callback(work: Path, every: int) -> pl.callbacks.ModelCheckpoint:
    return pl.callbacks.ModelCheckpoint(dirpath=str(work / "checkpoints"), filename="last", every_n_train_steps=every,
                                        save_top_k=0, save_last=True, enable_version_counter=False)


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
            _wandb_close(wandb_logger)

    with staged.staged(on_failure=close_wandb) as work:
        files = AttackOutput(work)
        ckpt = files.checkpoints / "last.ckpt"
        ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
        callbacks = [checkpoint_callback(work, cfg.optim.checkpoint_every)] if cfg.optim.checkpoint_every > 0 else []
        if cfg.logging.wandb and wandb_mode() != "disabled":
            wandb_logger = _wandb_logger(cfg, work, update_dir, knowledge)
        if attack.label_warning:
            print(f"warning: {attack.label_warning}", file=sys.stderr)
        unsmoothed = attack.objective.fmodel.unsmoothed
        if unsmoothed:
            print(f"warning: update matching replays these activations with their exact (piecewise) derivative: "
                  f"{', '.join(unsmoothed[:4])}{' ...' if len(unsmoothed) > 4 else ''}", file=sys.stderr)
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
            _wandb_finish(wandb_logger, work, metrics)
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


def _wandb_logger(cfg: AttackConfig, work: Path, update_dir: Path, knowledge: AttackerKnowledge):
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


def _wandb_finish(logger: Any, work: Path, metrics: dict[str, Any]) -> None:
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
    _wandb_close(logger)


def _wandb_close(logger: Any) -> None:
    try:
        logger.experiment.finish()
    except Exception:  # closing a broken run must not hide the real error
        pass
