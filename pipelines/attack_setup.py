"""The attacker's side of an attack: what it knows (the update, the global model, the prior) and the Lightning Trainer
that optimises the dummy images. Nothing here reads a training image or writes a file; the attack job
(``pipelines.attack_job``) runs it, and the audit and the benchmarks call it directly.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from common.errors import UserError
from common.files import load_weights_only
from common.interrupt import fit
from common.quiet import quiet_lightning
from federation.run_layout import RunLayout, UpdateLocation
from federation.update_store import high_risk_update
from inversion.attack_config import AttackConfig, check_attack_config
from inversion.attack_module import AttackResult, GradientInversionAttack, iteration_loader
from inversion.threat_model import AttackerKnowledge, at_input_resolution, load_knowledge, load_prior, prior_description
from leakage.ground_truth import ground_truth_for_update, oracle_knowledge
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
