"""The in-process engine: the FedAvg round loop over a ``Federation``'s parts, in this process (or its workers).

Fast and resumable: it writes the run's setup, every round's global model and metrics row, the audits,
and the W&B log; a worker pool (``fl.workers``) trains the clients of a round in parallel processes.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from common import interrupt
from common.config_loader import build, to_dict
from common.files import save_tensors
from common.tracking import start_run
from federation.audit import AuditConfig, AuditRecord
from federation.capture import ClientResult
from federation.train_config import TrainConfig
from federation.federation import Federation, RoundRecord
from federation.run_files import append_metrics_csv, append_server_privacy, finished_rounds, server_privacy_state
from federation.run_layout import RunLayout


class InProcessEngine:
    """Runs a federation's rounds; ``run`` returns the records of the rounds it ran."""

    def __init__(self, federation: Federation):
        self.federation = federation

    def resume_point(self, run_dir: Path) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(first round to run, global model) of an interrupted run in ``run_dir``; None if nothing to resume.

        Rounds are the unit of resumption: a round counts as done once its metrics row is written, which
        happens after the aggregated model is saved. Everything a round does is seeded from (seed, round,
        client), so the resumed run ends exactly where an uninterrupted one would; stateful filters
        (the DP accountants) replay the applications of the finished rounds.
        """
        point = finished_rounds(RunLayout(run_dir))
        if point is None:
            return None
        nxt, state = point
        self.federation.replay_filters(nxt)
        self.federation.states.load(RunLayout(run_dir), nxt, range(self.federation.num_clients))
        server = server_privacy_state(RunLayout(run_dir).server_privacy, nxt)
        if server is not None:
            self.federation.filters.load_server_state(server)
        return nxt, state

    def run(self, run_dir: Path | None, resume: bool = False) -> list[RoundRecord]:
        """Run the remaining rounds; returns the records of the rounds run now."""
        fed = self.federation
        cfg = fed.cfg
        wandb_run = None
        point = self.resume_point(run_dir) if resume and run_dir is not None else None
        first = point[0] if point else 0
        if run_dir is not None:
            fed.write_setup(run_dir)
            wandb_run = start_run(cfg.logging.wandb, cfg.logging.project, f"train-{Path(cfg.out).name}", to_dict(cfg), run_dir, "train")
        global_state = point[1] if point else {k: v.detach().clone() for k, v in fed.global_model.state_dict().items()}
        records: list[RoundRecord] = []
        total = sum(len(fed.sample_clients(r)) for r in range(first, cfg.fl.rounds))
        bar = tqdm(total=total, desc="FL", unit="client", disable=not cfg.logging.progress, dynamic_ncols=True)
        layout = RunLayout(run_dir) if run_dir is not None else None
        pool = None
        try:
            if cfg.fl.workers > 0:
                from federation.workers import ClientWorkers

                bar.set_description(f"starting {cfg.fl.workers} FL workers")
                pool = ClientWorkers(worker_federation, to_dict(cfg), cfg.fl.workers, fed.accelerator in ("gpu", "cuda"), first)
            if layout is not None and first == 0:
                save_tensors(layout.global_model(0), global_state)
            for rnd in range(first, cfg.fl.rounds):
                start = time.perf_counter()
                lr = fed.round_lr(rnd)
                results: dict[int, ClientResult] = {}
                audits: list[AuditRecord] = []
                if pool is not None:
                    bar.set_description(f"round {rnd + 1}/{cfg.fl.rounds} ({cfg.fl.workers} workers)")
                    results = pool.train(rnd, fed.sample_clients(rnd), global_state, lr, run_dir, on_client=lambda _c: bar.update(1),
                                         kept=fed.states.kept)
                    for client, result in results.items():  # what a worker's client keeps comes back for evaluation
                        if result.kept:
                            fed.states.kept[client] = result.kept
                for client in fed.sample_clients(rnd):
                    if pool is None:
                        bar.set_description(f"round {rnd + 1}/{cfg.fl.rounds} client {client}")
                        results[client] = fed.train_client(rnd, client, global_state, lr, run_dir)
                        interrupt.check()  # a Ctrl-C swallowed by a Trainer's destructor still stops the run
                        bar.update(1)
                    if fed.audit.due(rnd, client):
                        bar.set_description(f"round {rnd + 1}/{cfg.fl.rounds} client {client} (audit)")
                        audits.append(fed.run_audit(rnd, client, global_state, results[client], run_dir, wandb_run))
                withheld = [a.client for a in audits if a.withheld]
                received = {c: r for c, r in results.items() if c not in withheld}
                global_state, server_effects = fed.aggregate_round(rnd, received, global_state)
                if layout is not None:  # the model sent out in the next round (after the last: the final model)
                    append_server_privacy(layout.server_privacy, rnd, server_effects, fed.filters.server_state())
                    fed.states.save(layout, rnd, results)
                    save_tensors(layout.global_model(rnd + 1), global_state)
                acc, loss = fed.evaluate(global_state)
                invalid = fed.model_check(rnd, global_state, loss)
                train_loss = float(np.mean([r.train_loss for r in results.values()]))
                # the record keeps each client's metadata and filter effects, not its update tensors: a 12-round
                # ResNet-18 run kept 4.3 GB of them (8 GB with dp_gaussian's noised copies) until the end
                light = {c: dataclasses.replace(r, outgoing={}, raw={}) for c, r in results.items()}
                record = RoundRecord(rnd, lr, sorted(results), acc, loss, train_loss, time.perf_counter() - start, light, withheld, audits,
                                     invalid)
                records.append(record)
                bar.set_postfix(acc=f"{acc:.3f}", loss=f"{loss:.3f}")
                if layout is not None:
                    append_metrics_csv(layout.metrics, record)
                if wandb_run is not None:
                    wandb_run.log({"round": rnd, "test/accuracy": acc, "test/loss": loss, "train/loss": train_loss, "lr": lr,
                                   "model_invalid": int(bool(invalid))}, step=rnd)
                fed.stop_if_invalid(rnd, invalid)
                # each client round leaves a Trainer <-> callbacks reference cycle holding model-sized tensors;
                # Python's collector runs on object counts, not bytes, so it is run here (ms per round)
                del results, received
                gc.collect()
        finally:
            bar.close()
            if pool is not None:
                pool.close()
            if wandb_run is not None:
                wandb_run.finish()
        return records


def worker_federation(cfg_tree: dict[str, Any], index: int, first_round: int) -> Federation:
    """A worker process's copy of the federation: it only trains (the parent process runs the audits)."""
    cfg = build(TrainConfig, cfg_tree)
    cfg.audit = AuditConfig()
    federation = Federation(cfg, device_index=index)
    federation.replay_filters(first_round)
    return federation
