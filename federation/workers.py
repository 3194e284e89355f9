"""A round's local training spread over worker processes: one per GPU, or a share of the CPU cores.

Worker i owns the clients c with c % workers == i for the whole run, so the per-client state that
lives in a client's filters (the DP accountants) stays in one process, and every client round is
seeded from (seed, round, client) exactly as in the single-process loop: the federation ends where a
sequential run would (up to float summation order across thread counts).

Tensors cross process boundaries as safetensors bytes, never pickled; metadata is plain JSON-able data.
"""
from __future__ import annotations

import dataclasses
import os
import queue
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from federation.capture import ClientResult
from common.errors import UserError


def _pack(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _pack_result(result: ClientResult) -> dict[str, Any]:
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}  # shallow: tensors are packed below
    fields["outgoing"] = _pack(result.outgoing)
    fields["raw"] = _pack(result.raw)
    fields["kept"] = _pack(result.kept)
    return fields


def _unpack_result(fields: dict[str, Any]) -> ClientResult:
    fields = dict(fields)
    fields["outgoing"] = st_load(fields["outgoing"])
    fields["raw"] = st_load(fields["raw"])
    fields["kept"] = st_load(fields["kept"])
    return ClientResult(**fields)


def _worker(factory: Callable[[dict[str, Any], int, int], Any], cfg_tree: dict[str, Any], index: int, threads: int,
            first_round: int, inbox: Any, outbox: Any) -> None:
    torch.set_num_threads(threads)
    try:
        sim = factory(cfg_tree, index, first_round)
        outbox.put((index, "ready", None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.put((index, "error", f"{type(err).__name__}: {err}"))
        return
    while True:
        job = inbox.get()
        if job is None:
            return
        rnd, clients, state, lr, run_dir, kept = job
        try:
            global_state = st_load(state)
            for c, tensors in kept.items():  # the parent holds what each client keeps (a resumed run reads it from disk)
                sim.states.kept[c] = st_load(tensors)
            out = {c: _pack_result(sim.train_client(rnd, c, global_state, lr, Path(run_dir) if run_dir else None)) for c in clients}
            outbox.put((index, "done", out))
        except BaseException as err:  # noqa: BLE001
            outbox.put((index, "error", f"{type(err).__name__}: {err}"))


class ClientWorkers:
    """``workers`` processes; with a GPU accelerator worker i trains on GPU i."""

    def __init__(self, factory: Callable[[dict[str, Any], int, int], Any], cfg_tree: dict[str, Any], workers: int, gpu: bool,
                 first_round: int = 0, timeout_s: float = 3600.0):
        """``factory(cfg_tree, worker_index, first_round)`` builds a worker's trainer (anything with ``train_client``);
        a module-level function, so that the spawned process can import it by name."""
        if gpu and workers > torch.cuda.device_count():
            raise UserError(f"fl.workers={workers} but only {torch.cuda.device_count()} GPU(s) are visible")
        self.workers = workers
        self.timeout_s = timeout_s
        threads = 1 if gpu else max(1, (os.cpu_count() or 1) // workers, torch.get_num_threads() // workers)
        ctx = mp.get_context("spawn")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(workers)]
        self.procs = [ctx.Process(target=_worker, args=(factory, cfg_tree, i, threads, first_round, self.inboxes[i], self.outbox), daemon=True)
                      for i in range(workers)]
        for p in self.procs:
            p.start()
        for _ in range(workers):
            self._receive()

    def owner(self, client: int) -> int:
        return client % self.workers

    def _receive(self) -> tuple[int, str, Any]:
        while True:
            try:
                index, kind, payload = self.outbox.get(timeout=5.0)
                break
            except queue.Empty:
                dead = [i for i, p in enumerate(self.procs) if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"FL worker process(es) {dead} died (exit codes {[self.procs[i].exitcode for i in dead]})")
        if kind == "error":
            self.close()
            raise UserError(f"FL worker {index}: {payload}")
        return index, kind, payload

    def train(self, rnd: int, clients: list[int], global_state: dict[str, torch.Tensor], lr: float,
              run_dir: Path | None, on_client: Any = None, kept: dict[int, dict[str, torch.Tensor]] | None = None) -> dict[int, ClientResult]:
        """``kept``: per client, the entries it keeps (FedBN), sent to its worker with the job."""
        state = _pack(global_state)
        kept = kept or {}
        jobs: dict[int, list[int]] = {}
        for c in clients:
            jobs.setdefault(self.owner(c), []).append(c)
        for w, cs in jobs.items():
            own = {c: _pack(kept[c]) for c in cs if c in kept}
            self.inboxes[w].put((rnd, cs, state, lr, str(run_dir) if run_dir is not None else None, own))
        results: dict[int, ClientResult] = {}
        for _ in jobs:
            _, _, out = self._receive()
            for c, fields in out.items():
                results[c] = _unpack_result(fields)
                if on_client is not None:
                    on_client(c)
        return {c: results[c] for c in clients}

    def close(self) -> None:
        for inbox, p in zip(self.inboxes, self.procs):
            if p.is_alive():
                inbox.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
