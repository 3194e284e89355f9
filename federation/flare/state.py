"""Hand-over between a site's training script and its task-result filter (same process).

NVFlare runs the script in the client's job process (``launch_external_process`` false, the default)
and the task-result filters there too; the script leaves each round's local context here (the
job, the exact local delta, the recorder, the global model it started from) and the filter takes
it when the result passes through.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import torch

_PENDING: dict[str, "LocalRound"] = {}
_LOCK = threading.Lock()


@dataclasses.dataclass
class LocalRound:
    federation: Any  # the site's Federation (data, split, model spec, filters, audit)
    job: Any  # ClientRound
    local: Any  # LocalResult
    recorder: Any  # BatchStatisticsRecorder or None
    global_state: dict[str, torch.Tensor]
    run_dir: Path


def put(site: str, item: LocalRound) -> None:
    with _LOCK:
        _PENDING[site] = item


def take(site: str) -> LocalRound:
    with _LOCK:
        item = _PENDING.pop(site, None)
    if item is None:
        raise RuntimeError(f"no local round of site {site} is waiting: the site script must run in the client's process "
                           "(launch_external_process false) and train before the result is filtered")
    return item
