"""Every path of a training run and of an update in it, in one place (documented in docs/update-format.md).

    RUN/config.yaml, split.json, prior.safetensors        the run's setup (written before round 0)
    RUN/metrics.csv, audit.csv, accuracy.png              per round
    RUN/run.json                                          written last: a run with it is complete
    RUN/global/round_<r>.safetensors                      global model sent to clients in round r
    RUN/updates/round_<r>/client_<c>/update.safetensors   what left the client (state-dict deltas)
    RUN/updates/round_<r>/client_<c>/meta.json            what the attacker is told
    RUN/ground_truth/round_<r>/client_<c>/                scoring only; never read by the attack
        images.safetensors, batches.json
    RUN/attacks/round_<r>_client_<c>/                     attack.py's default output folder
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import yaml

UPDATE_TENSORS = "update.safetensors"  # what left the client
UPDATE_META = "meta.json"  # written last: an update folder with it is complete


def update_tensors(update_dir: str | Path) -> Path:
    return Path(update_dir) / UPDATE_TENSORS


def update_meta(update_dir: str | Path) -> Path:
    return Path(update_dir) / UPDATE_META


def is_update_folder(path: str | Path) -> bool:
    """A folder holding an update (a captured or converted one): its tensors and its metadata."""
    return update_meta(path).is_file() and update_tensors(path).is_file()


@dataclasses.dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # the run's own files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def prior(self) -> Path:
        return self.root / "prior.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def audit(self) -> Path:
        return self.root / "audit.csv"

    @property
    def accuracy_figure(self) -> Path:
        return self.root / "accuracy.png"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def is_complete(self) -> bool:
        """A training run train.py finished: run.json is written last, with state complete."""
        return (self.read_run() or {}).get("state") == "complete"

    # ...and their readers: every stop that needs the run's facts asks here, none parses the files itself
    def read_run(self) -> dict[str, Any] | None:
        """run.json (state, accuracy, versions, provenance), or None when it is missing or unreadable."""
        try:
            data = json.loads(self.run_json.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def read_config(self) -> dict[str, Any] | None:
        """The resolved config the run was trained with (config.yaml, as a tree), or None without one."""
        if not self.config.is_file():
            return None
        data = yaml.safe_load(self.config.read_text())
        return data if isinstance(data, dict) else {}

    def read_split(self) -> dict[str, Any] | None:
        """split.json (client and test indices, class names, the prior's images), or None without one."""
        if not self.split.is_file():
            return None
        return json.loads(self.split.read_text())

    # per round and client
    def global_model(self, rnd: int) -> Path:
        return self.root / "global" / f"round_{rnd}.safetensors"

    def update(self, rnd: int, client: int) -> Path:
        return self.root / "updates" / f"round_{rnd}" / f"client_{client}"

    def ground_truth(self, rnd: int, client: int) -> Path:
        return self.root / "ground_truth" / f"round_{rnd}" / f"client_{client}"

    def batches(self, rnd: int, client: int) -> Path:
        """Which pool images each local step used, and the privacy filters' effects (scoring only)."""
        return self.ground_truth(rnd, client) / "batches.json"

    def ground_truth_images(self, rnd: int, client: int) -> Path:
        return self.ground_truth(rnd, client) / "images.safetensors"

    @property
    def server_privacy(self) -> Path:
        """One JSON line per round: the privacy filters' server half (effects, and the state a resume takes up)."""
        return self.root / "server_privacy.jsonl"

    def local_state(self, rnd: int, client: int) -> Path:
        """The entries the client keeps (fl.bn_buffers/bn_affine local) after its training in round ``rnd``: site-local."""
        return self.root / "client_state" / f"round_{rnd}" / f"client_{client}.safetensors"

    def attack(self, rnd: int, client: int) -> Path:
        return self.root / "attacks" / f"round_{rnd}_client_{client}"

    def updates(self) -> list[tuple[int, int, Path]]:
        """(round, client, folder) for every complete update (one with meta.json), sorted."""
        found = []
        for meta in (self.root / "updates").glob(f"round_*/client_*/{UPDATE_META}"):
            try:
                rnd = int(meta.parent.parent.name.split("_")[1])
                client = int(meta.parent.name.split("_")[1])
            except (IndexError, ValueError):
                continue
            found.append((rnd, client, meta.parent))
        return sorted(found)

    @classmethod
    def of_update(cls, update_directory: str | Path) -> "UpdateLocation | None":
        """Where an update folder laid out as RUN/updates/round_<r>/client_<c> sits (its run, round and
        client), else None."""
        d = Path(update_directory).resolve()
        try:
            rnd = int(d.parent.name.removeprefix("round_"))
            client = int(d.name.removeprefix("client_"))
        except ValueError:
            return None
        if d.parent.parent.name != "updates":
            return None
        return UpdateLocation(cls(d.parent.parent.parent), rnd, client)


class UpdateLocation(NamedTuple):
    """An update's run, round and client, resolved once from its folder (``RunLayout.of_update``)."""

    run: RunLayout
    round: int
    client: int

