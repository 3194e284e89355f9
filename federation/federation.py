"""A federation's parts: data, split, model, filters, the client LightningModule, local training, FedAvg, audit.

Every engine uses these parts and nothing else: the in-process loop (``federation.in_process``) and
NVFlare (``federation.flare``; ``flare_site.py`` on each site) train the same clients with the same
seeds and send every update through the same outbox. Who runs the rounds is the engine's business.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch

from common.errors import UserError
from common.interrupt import fit
from common.interrupt_callback import StopOnInterrupt
from common.quiet import quiet_lightning
from datamodules.client import ClientDataModule, test_loader
from datamodules.federated import FederatedSplit, local_steps, make_split
from datamodules.sources import ImagePool, load_pool
from federation.audit import AuditConfig, Auditor, AuditRecord, NoAudit, append_audit_csv, check_audit_config
from federation.batch_statistics import BatchStatisticsRecorder
from federation.capture import ClientResult, ClientRound, LocalResult, UpdateCapture
from federation.client import FLClient, evaluate
from federation.train_config import TrainConfig, check_train_config
from federation.fedavg import apply_update, average_updates, client_weights
from federation.outbox import ClientOutbox
from federation.run_files import write_setup
from federation.run_layout import RunLayout
from federation.local_state import ClientStates, local_keys
from federation.model_health import model_problems
from model.factory import ClientModel, ModelSpec, build_model, check_batch_norm_viable
from privacy.base import FilterChain, FilterContext, ServerContext

# (job, local result, its BN-statistics recorder) -> the result as sent, or None when the engine sends it later
HandOver = Callable[[ClientRound, LocalResult, BatchStatisticsRecorder | None], ClientResult | None]

def client_seed(seed: int, rnd: int, client: int) -> int:
    return (seed * 1_000_003 + rnd * 10_007 + client * 101) % (2**31)


@dataclasses.dataclass
class RoundRecord:
    round: int
    lr: float
    clients: list[int]
    test_accuracy: float
    test_loss: float
    train_loss: float
    seconds: float
    results: dict[int, ClientResult]  # per client: metadata and filter effects (update tensors dropped after aggregation)
    withheld: list[int] = dataclasses.field(default_factory=list)
    audits: list[AuditRecord] = dataclasses.field(default_factory=list)
    invalid: str = ""  # what is wrong with the global model after this round ('' = nothing; federation.model_health)


class Federation:
    """Everything is validated in the constructor, before any file is written."""

    def __init__(self, cfg: TrainConfig, device_index: int = 0, auditor: Callable[[AuditConfig, int], Auditor] | None = None):
        """``auditor``: builds the leakage auditor (``pipelines.attack_audit.AttackAudit``) when ``cfg.audit`` asks for one."""
        quiet_lightning()
        self.cfg = cfg
        self.device_index = device_index
        check_train_config(cfg)
        self.pool: ImagePool = load_pool(cfg.data)
        self.split: FederatedSplit = make_split(self.pool, cfg.fl.split, cfg.data.test_fraction, cfg.seed)
        self.spec = ModelSpec.from_config(cfg.model, self.pool.channels, self.pool.num_classes, cfg.data.image_size)
        torch.manual_seed(cfg.seed)
        self.global_model: ClientModel = build_model(self.spec)
        for c, spec in enumerate(self.split.specs):
            smallest = spec.images % spec.batch_size or spec.batch_size
            check_batch_norm_viable(self.global_model, self.spec, smallest, f"client {c}")
        self.filters = FilterChain.from_config(cfg.privacy.filters)
        self.states = ClientStates(local_keys(self.global_model, cfg.fl.bn_buffers, cfg.fl.bn_affine))
        self.check_filters_fit_the_engine()
        self.client = FLClient(copy.deepcopy(self.global_model), cfg.optimizer)
        self.test_loader = test_loader(self.pool, self.split.test_indices)
        self.num_clients = len(self.split.specs)
        bad = [c for c in cfg.capture.clients if not 0 <= c < self.num_clients]
        if bad:
            raise UserError(f"capture.clients {bad} out of range: there are {self.num_clients} clients")
        bad = [r for r in cfg.capture.rounds if not -cfg.fl.rounds <= r < cfg.fl.rounds]
        if bad:
            raise UserError(f"capture.rounds {bad} out of range: there are {cfg.fl.rounds} rounds")
        self.capture_rounds = {r % cfg.fl.rounds for r in cfg.capture.rounds}
        check_audit_config(cfg.audit, self.num_clients)
        self.audit: Auditor = auditor(cfg.audit, self.num_clients) if auditor is not None and cfg.audit.every else NoAudit(cfg.audit)
        self.prior = self.pool.images[self.split.public_indices].mean(0)  # never a client's image (issue 23)
        self.accelerator = cfg.accelerator

    # ------------------------------------------------------------------ pieces

    def round_lr(self, rnd: int) -> float:
        fl = self.cfg.fl
        decays = rnd // fl.lr_decay_every if fl.lr_decay_every > 0 else 0
        return self.cfg.optimizer.lr * (fl.lr_decay ** decays)

    def sample_clients(self, rnd: int) -> list[int]:
        k = max(1, int(round(self.cfg.fl.client_fraction * self.num_clients)))
        if k >= self.num_clients:
            return list(range(self.num_clients))
        rng = np.random.default_rng(client_seed(self.cfg.seed, rnd, 99991))
        return sorted(int(c) for c in rng.choice(self.num_clients, size=k, replace=False))

    def captured(self, rnd: int, client: int, run_dir: Path | None) -> bool:
        """Whether this client's update of this round is written (never without a run folder)."""
        cap = self.cfg.capture
        return run_dir is not None and (not cap.clients or client in cap.clients) and (not cap.rounds or rnd in self.capture_rounds)

    def make_trainer(self, callbacks: list[pl.Callback]) -> pl.Trainer:
        steps = self.cfg.local.steps
        return pl.Trainer(
            accelerator=self.accelerator, devices=[self.device_index] if self.accelerator in ("gpu", "cuda") else 1, max_epochs=-1 if steps else self.cfg.local.epochs,
            max_steps=steps if steps else -1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        )

    def train_client(self, rnd: int, client: int, global_state: dict[str, torch.Tensor], lr: float,
                     run_dir: Path | None) -> ClientResult:
        capture = self.local_training(rnd, client, global_state, lr, run_dir)
        assert capture.result is not None
        return capture.result

    def local_training(self, rnd: int, client: int, global_state: dict[str, torch.Tensor], lr: float, run_dir: Path | None,
                       hand_over: HandOver | None = None, patch: Callable[[pl.Trainer], None] | None = None) -> UpdateCapture:
        """One client's local round with a fresh Trainer, seeded by (seed, round, client) for every engine.

        The delta goes through the outbox at once (the in-process engine), or to ``hand_over`` (NVFlare:
        its task-result filter runs the outbox on what NVFlare sends; ``patch`` hooks the Trainer)."""
        spec = self.split.specs[client]
        seed = client_seed(self.cfg.seed, rnd, client)
        torch.manual_seed(seed)
        self.client.model.load_state_dict(self.states.start(client, global_state))
        self.client.lr = lr
        job = ClientRound(rnd, client, self.pool, self.split.client_indices[client], spec.batch_size,
                          self.local_epochs(client), self.spec, self.cfg.optimizer, lr, seed)
        recorder = self.recorder(rnd, client, run_dir)
        if hand_over is None:
            send = self.outbox(rnd, client, run_dir, recorder).send
        else:
            def send(job: ClientRound, local: LocalResult) -> ClientResult | None:
                return hand_over(job, local, recorder)
        capture = UpdateCapture(job, self.filters, run_dir, send)
        callbacks: list[pl.Callback] = [capture, StopOnInterrupt()] + ([recorder] if recorder else [])
        datamodule = ClientDataModule(self.pool, self.split.client_indices[client], spec.batch_size, seed)
        trainer = self.make_trainer(callbacks)
        if patch is not None:
            patch(trainer)
        fit(trainer, self.client, datamodule=datamodule)
        if self.states and capture.result is not None:
            capture.result.kept = self.states.keep(client, self.client.model.state_dict())
        return capture

    def recorder(self, rnd: int, client: int, run_dir: Path | None) -> BatchStatisticsRecorder | None:
        return BatchStatisticsRecorder() if self.captured(rnd, client, run_dir) and self.cfg.capture.bn_statistics else None

    def outbox(self, rnd: int, client: int, run_dir: Path | None, recorder: BatchStatisticsRecorder | None) -> ClientOutbox:
        return ClientOutbox(self.filters, run_dir if self.captured(rnd, client, run_dir) else None, recorder, self.states.keys)

    def local_epochs(self, client: int) -> int:
        spec = self.split.specs[client]
        if self.cfg.local.steps:
            return math.ceil(self.cfg.local.steps / math.ceil(spec.images / spec.batch_size))
        return self.cfg.local.epochs

    def expected_steps(self, client: int) -> int:
        spec = self.split.specs[client]
        return local_steps(spec.images, spec.batch_size, self.cfg.local.epochs, self.cfg.local.steps)

    def check_filters_fit_the_engine(self) -> None:
        """A filter with a server half (central DP noise, adaptive clipping) runs where the server runs it: refused before
        any work where it would silently not run."""
        for f in self.filters.filters:
            if f.needs_server and self.cfg.fl.engine != "simulation":
                raise UserError(f"privacy filter {f.name}: its server half (central noise, adaptive clipping) runs on fl.engine=simulation "
                                f"only; on {self.cfg.fl.engine} use noise: local with a fixed clip_norm")
            if f.server_driven and self.cfg.fl.workers > 0:
                raise UserError(f"privacy filter {f.name}: adaptive clipping sets each round's clip norm on the server; fl.workers > 0 "
                                "would clip with a stale one (use fl.workers=0, or a fixed clip_norm)")

    def aggregate_round(self, rnd: int, results: dict[int, ClientResult], global_state: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        """FedAvg over the updates the server received (withheld ones are simply not in ``results``), then the filters'
        server half (central noise, the next clip norm); returns the new global model and the server half's effects.
        Its noise is seeded by (seed, round), as the clients' is by (seed, round, client)."""
        if not results:
            return {k: v.clone() for k, v in global_state.items()}, []
        order = sorted(results)
        weights = client_weights([results[c].num_samples for c in order], [results[c].local_steps for c in order], self.cfg.fl.weighting)
        delta = average_updates([results[c].outgoing for c in order], weights, global_state)
        effects: list[dict[str, Any]] = []
        if len(self.filters):
            ctx = ServerContext(torch.Generator().manual_seed(client_seed(self.cfg.seed, rnd, 7_777_777)), rnd, order, weights,
                                [results[c].filter_effects for c in order], {k for c in order for k in results[c].outgoing})
            delta, effects = self.filters.server_step(delta, ctx)
        return apply_update(global_state, delta), effects

    def evaluate(self, global_state: dict[str, torch.Tensor]) -> tuple[float, float]:
        """Test accuracy and loss of the global model; with local BN entries (FedBN) the global model has no trained
        statistics of its own, so each client's model (global weights, its kept entries) is evaluated and the
        accuracies and losses averaged over the clients that trained so far (FedBN's evaluation)."""
        scores = self.client_scores(global_state)
        if not scores:
            self.global_model.load_state_dict(global_state)
            return evaluate(self.global_model, self.test_loader)
        return float(np.mean([a for a, _ in scores.values()])), float(np.mean([loss for _, loss in scores.values()]))

    def client_scores(self, global_state: dict[str, torch.Tensor]) -> dict[int, tuple[float, float]]:
        """Per client with kept BN entries: (test accuracy, test loss) of its own model, the global weights with its
        entries ({} without local entries, or before any client trained)."""
        scores = {}
        for client in sorted(self.states.kept) if self.states else []:
            self.global_model.load_state_dict(self.states.start(client, global_state))
            scores[client] = evaluate(self.global_model, self.test_loader)
        if scores:
            self.global_model.load_state_dict(global_state)
        return scores

    def model_check(self, rnd: int, state: dict[str, torch.Tensor], test_loss: float) -> str:
        """What is wrong with the round's global model ('' = nothing), said on stderr when something is."""
        problems = model_problems(state, test_loss)
        if not problems:
            return ""
        text = "; ".join(problems)
        print(f"warning: round {rnd}: the global model is invalid ({text}; {self.filters_named()})", file=sys.stderr)
        return text

    def stop_if_invalid(self, rnd: int, invalid: str) -> None:
        """fl.on_invalid=stop: a broken model ends the run with one line, after the round's row is written."""
        if invalid and self.cfg.fl.on_invalid == "stop":
            raise UserError(f"round {rnd}: the global model is invalid ({invalid}; {self.filters_named()}): a defence that breaks the "
                            "model is a bug, not a privacy-utility trade-off; stopped (the rounds so far are in OUT.partial, "
                            "metrics.csv's 'invalid' column says what broke; fl.on_invalid=continue runs on)")

    def filters_named(self) -> str:
        named = [" ".join(f"{k}={v}" for k, v in f.items()) for f in self.filters.describe()]
        return f"privacy filters: {'; '.join(named)}" if named else "no privacy filter"

    def run_audit(self, rnd: int, client: int, global_state: dict[str, torch.Tensor], result: ClientResult,
                  run_dir: Path | None, wandb_run: Any) -> AuditRecord:
        idx = self.split.client_indices[client]
        record = self.audit.run(rnd, client, self.spec, global_state, result.outgoing, result.meta, self.prior,
                                self.pool.images[idx], self.pool.labels[idx], self.reference_pool())
        if run_dir is not None:
            append_audit_csv(RunLayout(run_dir).audit, record)
        if wandb_run is not None:
            wandb_run.log({f"audit/rdlv_client{client}": record.rdlv, f"audit/ssim_client{client}": record.ssim,
                           f"audit/withheld_client{client}": int(record.withheld),
                           f"audit/converged_client{client}": int(bool(record.converged)),
                           f"audit/reidentified_client{client}": record.identified or 0}, step=rnd)
        return record

    def reference_pool(self) -> torch.Tensor:
        """The images the audit's re-identification test picks among: every training-pool image (the client's, the
        other clients', the public ones dealt to no client), as attack.py's scoring uses (the test images left out)."""
        return self.pool.images[self.split.train_indices]

    def write_setup(self, run_dir: Path) -> None:
        """What a run holds before its first round: resolved config, population prior, client split."""
        write_setup(RunLayout(run_dir), self.cfg, self.pool, self.split, self.prior)

    def replay_filters(self, first_round: int) -> None:
        """Bring stateful filters (DP accountants) to where they stand after rounds < first_round (a resume)."""
        for rnd in range(first_round):
            for client in self.sample_clients(rnd):
                idx = self.split.client_indices[client]
                self.filters.replay(FilterContext(torch.Generator(), rnd, client, int(idx.numel()), self.expected_steps(client)))
