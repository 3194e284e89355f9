"""Lightning's per-run banners and warnings, silenced: a federation or an attack runs hundreds of Trainers."""
from __future__ import annotations

import logging
import warnings


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*is deprecated.*", module="pytorch_lightning")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
