"""The task-result filter that every update leaves a site through: the project's outbox inside NVFlare.

It receives the WEIGHT_DIFF that NVFlare's Lightning client computed (keys ``model.<entry>``), runs
the configured privacy filter chain on it, writes the update exactly as it will leave (and the
site-local ground truth), runs the leakage audit on it and, above the audit's threshold, withholds
it (an empty result, which NVFlare's FedAvg skips). Accountants keep their state in the filter
chain, which lives as long as the site's process.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from federation.capture import LocalResult
from federation.flare import state

PREFIX = "model."
SITE_LOG_FIELDS = ["round", "client", "site", "train_loss", "local_steps", "withheld", "seconds"]
SITE_LOG = "nvflare_sites.csv"


def strip_prefix(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    bad = [k for k in data if not k.startswith(PREFIX)]
    if bad:
        raise ValueError(f"update entries without the '{PREFIX}' prefix: {bad[:3]}")
    return {k[len(PREFIX):]: v for k, v in data.items()}


class SiteOutbox(DXOFilter):
    def __init__(self) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF])

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        started = time.perf_counter()
        site = fl_ctx.get_identity_name()
        pending = state.take(site)
        job, sim = pending.job, pending.federation
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND)
        if rnd is not None and int(rnd) != job.round:
            raise RuntimeError(f"site {site}: result of round {rnd} but local round {job.round} is waiting")
        raw = {k: torch.as_tensor(v) for k, v in strip_prefix(dxo.data).items()}
        exact = pending.local.raw
        if set(raw) != set(exact):
            raise RuntimeError(f"site {site}: NVFlare's DIFF has entries {sorted(set(raw) ^ set(exact))[:3]} the local delta has not")
        for key, value in raw.items():
            if not exact[key].is_floating_point():
                # counters: the global model's num_batches_tracked is a float mean after aggregation, so
                # NVFlare's DIFF of it is fractional; the client sent exactly its local step count
                raw[key] = exact[key].clone()
            elif float((value.float() - exact[key]).abs().max()) > 1e-5:
                raise RuntimeError(f"site {site}: NVFlare's DIFF of '{key}' differs from the local delta")
            else:
                raw[key] = value.to(exact[key].dtype)
        local = LocalResult(raw, pending.local.meta, pending.local.steps, pending.local.train_loss, pending.local.running_var_min_delta)
        result = sim.outbox(job.round, job.client, pending.run_dir, pending.recorder).send(job, local)
        withheld = False
        if sim.audit.due(job.round, job.client):
            withheld = sim.run_audit(job.round, job.client, pending.global_state, result, pending.run_dir, None).withheld
        _append_site_log(pending.run_dir / SITE_LOG, {
            "round": job.round, "client": job.client, "site": site, "train_loss": result.train_loss, "local_steps": result.local_steps,
            "withheld": int(withheld), "seconds": round(time.perf_counter() - started, 3)})
        data = {} if withheld else {PREFIX + k: v for k, v in result.outgoing.items()}
        return DXO(data_kind=dxo.data_kind, data=data, meta=dxo.meta)


def _append_site_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SITE_LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
