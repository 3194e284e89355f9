"""The client's outbox: what happens to a local update before it leaves the site, for every engine.

Privacy filters in order, then the writer (the update exactly as it leaves, and the site-local
ground truth). The in-process simulation calls :meth:`ClientOutbox.send` from the capture callback;
under NVFlare the same method runs inside a task-result filter on the DIFF that NVFlare sends.
The leakage audit runs after it (``Federation.run_audit``), on what would leave.
"""
from __future__ import annotations

from pathlib import Path

import torch

from federation.batch_statistics import BatchStatisticsRecorder
from federation.capture import ClientResult, ClientRound, LocalResult, save_round
from privacy.base import FilterChain, FilterContext


class ClientOutbox:
    """``run_dir``: where the update and the ground truth are written; None = this update is not captured."""

    def __init__(self, filters: FilterChain, run_dir: Path | None, recorder: BatchStatisticsRecorder | None = None,
                 local_keys: list[str] | tuple[str, ...] = ()):
        """``local_keys``: entries the client keeps (FedBN); they never reach the filters or the server."""
        self.filters = filters
        self.run_dir = run_dir
        self.recorder = recorder
        self.local_keys = sorted(local_keys)

    def send(self, job: ClientRound, local: LocalResult) -> ClientResult:
        """Filter ``local.raw`` (seeded by the client's round seed), record what was withheld, write if captured."""
        gen = torch.Generator().manual_seed(job.seed + 7919)
        n = int(job.indices.numel())
        shared = {k: v for k, v in local.raw.items() if k not in self.local_keys}
        outgoing, effects = self.filters.apply(shared, FilterContext(gen, job.round, job.client, n, local.steps, local.running_var_min_delta))
        meta = dict(local.meta, withheld_keys=sorted(set(local.raw) - set(outgoing)))
        if self.local_keys:  # the attacker is told which entries of the client's model are not the server's
            meta["local_keys"] = list(self.local_keys)
        result = ClientResult(outgoing, local.raw, meta, n, local.steps, effects, local.train_loss)
        if self.run_dir is not None:
            save_round(self.run_dir, job, result, bool(len(self.filters)), self.recorder)
        return result
