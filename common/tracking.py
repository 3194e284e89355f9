"""Weights & Biases: offline unless the user configured otherwise; a CSV is always written too."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def wandb_mode() -> str:
    """WANDB_MODE if set (online/offline/disabled), else offline: online with no network hangs."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ["WANDB_MODE"]


def start_run(enabled: bool, project: str, name: str, config: dict[str, Any], directory: Path, job_type: str):
    """A wandb run, or None when disabled or wandb is not installed (logging then goes to CSV only)."""
    if not enabled or wandb_mode() == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        print("note: wandb is not installed; logging to CSV only")
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project, name=name, config=config, dir=str(directory), job_type=job_type, reinit="finish_previous")
