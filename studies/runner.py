"""Run a study grid: train once per (train overrides, seed), attack every target, collect one table.

Resumable: a training run with run.json and an attack cell with metrics.json are never redone, so
re-running after an interruption completes only the missing cells.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Callable

from common.config_loader import load, overrides_list
from common.errors import UserError
from common.files import StagedDir, read_json, write_json
from common.versions import provenance
from federation.train_config import TrainConfig, check_train_config
from federation.run_files import read_metrics
from federation.run_layout import RunLayout, update_meta
from inversion.attack_config import AttackConfig, check_attack_config
from leakage.image_metrics import metric_names
from leakage.record import LeakageScores
from pipelines.attack_output import AttackOutput
from privacy import REGISTRY as FILTERS
from studies.executors import REGISTRY as EXECUTORS, Executor, ExecutorOptions
from studies.executors.base import cell_is_whole
from studies.spec import Cell, StudySpec, cells, config_fingerprint

ROOT = Path(__file__).resolve().parent.parent
TRAIN_DEFAULT = TrainConfig.DEFAULT_FILE

# results.csv / per_image.csv columns; the registered image metrics (leakage/image_metrics/) follow "ssim"
# when any cell computed them
ROW_FIELDS = ["cell", "seed", "attack_seed", "round", "client", "num_images", "batch_size", "local_steps", *LeakageScores.COLUMNS,
              "verdict", "leak_tests", "server_verdict", "converged", "heldout_error", "leaked_images", "rungs", "test_accuracy", "final_test_accuracy",
              "epsilon", "noise_std", "attack_seconds", "train_key", "commit", "torch", "train_threads", "attack_threads"]
IMAGE_FIELDS = ["cell", "seed", "round", "client", "image", "label", "ssim", "rdlv", "ssim_gain", "prior_ssim",
                "nearest_ssim", "rdlv_class_prior", "identification_rank", "prior_identifies", "label_correct"]
SCORE_KEYS = list(LeakageScores.COLUMNS)
#: what makes a study folder this study's: another value of any of these is another study (StudyRunner.check_out)
STUDY_IDENTITY = ("name", "train", "attack", "grid", "all_clients")


def with_metrics(fields: list[str], metrics: list[str]) -> list[str]:
    at = fields.index("ssim") + 1
    return fields[:at] + metrics + fields[at:]


def _config_file(stage_config: str, default: Path) -> list[str]:
    """The stage's config on top of the script's default config, as the CLI does."""
    from common.cli import config_files

    if not stage_config:
        return config_files(default, [])
    path = Path(stage_config)
    if not path.is_absolute() and not path.exists():
        path = ROOT / path
    return config_files(default, [path])


class StudyRunner:
    def __init__(self, spec: StudySpec, progress: bool = True, wandb: bool = False):
        self.spec = spec
        self.out = Path(spec.out)
        self.progress = progress
        self.wandb = wandb
        from pipelines.attack_plan import chosen_files

        # the files a multi-image cell layers (batch.yaml too when no attack.config is named): editing any must not reuse cells
        attack_files = chosen_files(spec.attack.config, num_images=2)
        self.cells = cells(spec, {"train": config_fingerprint(_config_file(spec.train.config, TRAIN_DEFAULT)),
                                  "attack": config_fingerprint(attack_files)})
        self.attacks_run = 0
        self.trainings_run = 0

    # ------------------------------------------------------------------ stages

    def train_config(self, cell: Cell) -> TrainConfig:
        over = overrides_list(cell.train_overrides) + [f"out={self.out / 'train' / cell.train_key}",
                                                       "logging.progress=false", f"logging.wandb={str(self.wandb).lower()}"]
        return load(TrainConfig, _config_file(self.spec.train.config, TRAIN_DEFAULT), over)

    def attack_config(self, cell: Cell, update: Path, out: Path, num_images: int | None = None) -> AttackConfig:
        """attack.py's config for this cell's update (pipelines.attack_plan): with no attack.config named, batch.yaml for a
        client with more than one image or an update without BN buffers. ``num_images``: the client's, when the update
        is not on disk yet (checks)."""
        from pipelines.attack_plan import attack_config, update_facts

        over = overrides_list(cell.attack_overrides) + [f"out={out}", "logging.progress=false", f"logging.wandb={str(self.wandb).lower()}"]
        found, withheld = update_facts(update)
        images = num_images if num_images is not None else (found or 1)
        cfg = attack_config(self.spec.attack.config, over, num_images=images, buffers_withheld=withheld)
        cfg.update = str(update)
        return cfg

    def ensure_trained(self, cell: Cell) -> Path:
        cfg = self.train_config(cell)
        run = RunLayout(cfg.out)
        if run.is_complete():
            return run.root
        from pipelines.train_job import TrainJob

        result = TrainJob(cfg).run(record={"overrides": cell.train_overrides})
        self.trainings_run += 1
        self.prune_global_models(result.run.root)
        return result.run.root

    def prune_global_models(self, run: Path) -> list[Path]:
        """Keep only the global models a study reads: those of the attacked rounds (an attack starts from the
        model its round was sent) and the final one. A ResNet-18 global model is 45 MB, one per round."""
        rounds = int(read_json(RunLayout(run).run_json)["rounds"])
        keep = {RunLayout(run).global_model(r).name for r, _ in self.targets(run)} | {RunLayout(run).global_model(rounds).name}
        removed = [p for p in sorted(RunLayout(run).global_model(0).parent.glob("round_*.safetensors")) if p.name not in keep]
        for path in removed:
            path.unlink()
        return removed

    def targets(self, run: Path) -> list[tuple[int, int]]:
        rounds = int(read_json(RunLayout(run).run_json)["rounds"])
        out = []
        for t in self.spec.targets:
            rnd = t.round % rounds
            if self.spec.all_clients:
                found = sorted(c for r, c, _ in RunLayout(run).updates() if r == rnd)
                out.extend((rnd, c) for c in found)
            else:
                out.append((rnd, t.client))
        return list(dict.fromkeys(out))

    def ensure_attacked(self, cell: Cell, run: Path, rnd: int, client: int) -> Path:
        cell_dir = self.out / "cells" / cell.attack_key(rnd, client)
        if AttackOutput(cell_dir).is_finished():
            if cell_is_whole(cell_dir):
                return cell_dir
            # damaged (a torn metrics.json, or a crash before cell.json): redone, never an error on every re-run
            print(f"warning: {cell_dir} is damaged (unreadable metrics.json or no cell.json): redoing it", file=sys.stderr)
            import shutil

            shutil.rmtree(cell_dir)
        update = RunLayout(run).update(rnd, client)
        if not update_meta(update).is_file():
            raise UserError(f"study target round {rnd} client {client} was not captured in {run} (check capture.clients/rounds)")
        from pipelines.attack_job import run_attack_job

        try:
            run_attack_job(self.attack_config(cell, update, cell_dir))
        except UserError as err:
            # an attack that cannot run on this update (e.g. every restart diverges on an update a filter blew
            # up) is a result of the grid point, not a reason to stop the study: recorded, and not retried
            # staged like every result: the failed attack's own .partial is replaced, the record appears whole
            with StagedDir(cell_dir, what="a study cell").staged() as work:
                write_json(AttackOutput(work).metrics, {"ssim": None, "rdlv": None, "update": str(update), "per_image": [],
                                                   "attack_error": str(err)})
            print(f"warning: {cell_dir.name} (round {rnd}, client {client}): attack failed: {err}", file=sys.stderr)
        write_json(cell_dir / "cell.json", {"axes": cell.axes, "seed": cell.seed, "attack_seed": cell.attack_seed, "round": rnd, "client": client,
                                            "train_key": cell.train_key, "run": str(run), "provenance": provenance()})
        self.attacks_run += 1
        return cell_dir

    # ------------------------------------------------------------------ the checks

    def check(self) -> None:
        """Every cell's training and attack config and the report section, validated before any cell runs: a typo
        in a grid's override is an error now, never an attack failure recorded as a result hours later."""
        from studies.analyze import check_report

        check_report(self.spec.report or {})
        for cell in self.cells:
            train = self.train_config(cell)
            check_train_config(train)
            for images in (1, 2):  # the single- and the multi-image choice (the same config when attack.config names one)
                check_attack_config(self.attack_config(cell, self.out / "update", self.out / "cell", images))
            self.check_captured(train)

    def check_captured(self, train: TrainConfig) -> None:
        """Every target is an update the training captures (else the study would train, then fail)."""
        rounds, capture = train.fl.rounds, train.capture
        captured = {r % rounds for r in capture.rounds}
        for t in self.spec.targets:
            if not self.spec.all_clients and capture.clients and t.client not in capture.clients:
                raise UserError(f"study target client {t.client} is not captured (capture.clients {capture.clients}): add it to the "
                                "train overrides' capture.clients, or choose a captured client")
            if capture.rounds and t.round % rounds not in captured:
                raise UserError(f"study target round {t.round} is not captured (capture.rounds {capture.rounds} of {rounds} rounds): "
                                "add it to the train overrides' capture.rounds")

    def check_out(self) -> None:
        """A study writes only into a folder of its own: an empty or new one, or one holding this study (the same
        name, training, attack and grid; more seeds, targets or another report only add cells and tables)."""
        out = self.out
        if not out.exists():
            return
        if not out.is_dir():
            raise UserError(f"study out {out} is a file: choose a folder")
        if not any(out.iterdir()):
            return
        saved = out / "study.yaml"
        if not saved.is_file():
            raise UserError(f"study out {out} is not a study folder (it has no study.yaml): choose another out, nothing was written")
        import yaml
        from common.config_loader import dump_yaml

        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{saved} cannot be read ({err}): choose another out") from None
        new = yaml.safe_load(dump_yaml(self.spec))
        differ = [key for key in STUDY_IDENTITY if old.get(key) != new.get(key)]
        if differ:
            raise UserError(f"study out {out} holds the study '{old.get('name')}' with another {', '.join(differ)}: choose another out "
                            "(nothing was written; seeds, targets and the report may change, they only add cells and tables)")

    # ------------------------------------------------------------------ the loop

    def run(self, on_cell: Callable[[Path], None] | None = None, executor: Executor | None = None) -> Path:
        """Run every unfinished cell with ``executor`` (default: the local one), then collect the tables."""
        self.check_out()
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        from common.config_loader import dump_yaml

        (self.out / "study.yaml").write_text(dump_yaml(self.spec))
        self.executor = executor or EXECUTORS.get("local")(ExecutorOptions())
        self.executor.run(self, on_cell)
        return self.collect()

    def collect(self) -> Path:
        """results.csv (one row per cell and target) and per_image.csv, from every finished cell."""
        rows, images = [], []
        axes = list(self.spec.grid)
        wanted = {(c.attack_key(r, k)) for c in self.cells for r, k in self._known_targets(c)}
        for cell_dir in sorted((self.out / "cells").glob("*")):
            if cell_dir.name not in wanted or not cell_is_whole(cell_dir):
                continue  # unfinished or damaged: the next run redoes it
            info = read_json(cell_dir / "cell.json")
            metrics = read_json(AttackOutput(cell_dir).metrics)
            row = self._row(cell_dir.name, info, metrics)
            rows.append(row)
            for img in metrics.get("per_image", []):
                images.append({"cell": cell_dir.name, "seed": info["seed"], "round": info["round"], "client": info["client"],
                               **{k: info["axes"].get(k) for k in axes}, **{k: v for k, v in img.items() if k in IMAGE_FIELDS or k in metric_names()}})
        measured = [name for name in metric_names() if any(name in r for r in rows)]
        fields = with_metrics(ROW_FIELDS, measured)
        at = fields.index("noise_std") + 1  # filter columns beyond the two every study has
        errors = ["attack_error"] if any(r.get("attack_error") for r in rows) else []  # only when an attack failed
        known = set(axes) | set(fields) | {"attack_error"}
        effects = list(dict.fromkeys(k for r in rows for k in r if k not in known))  # filters' declared columns
        _write_csv(self.out / "results.csv", axes + fields[:at] + effects + fields[at:] + errors, rows)
        _write_csv(self.out / "per_image.csv", axes + with_metrics(IMAGE_FIELDS, measured), images)
        return self.out / "results.csv"

    def _known_targets(self, cell: Cell) -> list[tuple[int, int]]:
        run = RunLayout(self.out / "train" / cell.train_key)
        return self.targets(run.root) if run.is_complete() else []

    def _row(self, name: str, info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
        run = Path(info["run"])
        rnd, client = info["round"], info["client"]
        meta = read_json(update_meta(RunLayout(run).update(rnd, client)))
        acc = _accuracy(RunLayout(run).metrics)
        effects = _filter_effects(run, rnd, client)
        row = {"cell": name, "seed": info["seed"], "attack_seed": info.get("attack_seed"), "round": rnd, "client": client, "num_images": meta["num_images"],
               "batch_size": meta["batch_size"], "local_steps": meta["local_steps"], "test_accuracy": acc.get(rnd),
               "final_test_accuracy": acc.get(max(acc)) if acc else None, "attack_seconds": metrics.get("seconds"),
               "train_key": info["train_key"], "epsilon": None, "noise_std": None, **effects, **_provenance(run, info)}
        for key in SCORE_KEYS:
            row[key] = metrics.get(key)
        row.update(_verdict_columns(metrics))
        row.update({metric: metrics[metric] for metric in metric_names() if metric in metrics})
        if metrics.get("attack_error"):
            row["attack_error"] = metrics["attack_error"]
        row.update(info["axes"])
        return row


def _provenance(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    """commit and torch of the attack, and the thread counts of its training and of the attack (blank for
    cells made before they were recorded)."""
    attack = info.get("provenance") or {}
    train = (RunLayout(run).read_run() or {}).get("provenance") or {}
    return {"commit": attack.get("commit"), "torch": attack.get("torch"), "train_threads": train.get("threads"),
            "attack_threads": attack.get("threads")}


def _verdict_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """The verdict (leakage.verdict) and the convergence evidence behind it; an attack that could not run
    is inconclusive: it showed nothing either way."""
    conv = metrics.get("convergence") or {}
    return {"verdict": metrics.get("verdict") or ("inconclusive" if metrics.get("attack_error") else None),
            "leak_tests": " ".join(metrics.get("leak_tests") or []) or None,
            "server_verdict": metrics.get("server_verdict") or ("inconclusive" if metrics.get("attack_error") else None),
            "converged": metrics.get("converged"), "heldout_error": conv.get("heldout_error"),
            "leaked_images": metrics.get("leaked_images"), "rungs": len((metrics.get("escalation") or {}).get("rungs", [])) or None}


def _accuracy(path: Path) -> dict[int, float]:
    if not path.is_file():
        return {}
    return {row.round: row.test_accuracy for row in read_metrics(path)}


def _filter_effects(run: Path, rnd: int, client: int) -> dict[str, Any]:
    """The numbers the client's privacy filters declare as columns (``PrivacyFilter.columns``), last filter wins."""
    path = RunLayout(run).batches(rnd, client)
    if not path.is_file():
        return {}
    out: dict[str, Any] = {}
    for effect in json.loads(path.read_text()).get("filter_effects", []):
        declared = FILTERS[effect["filter"]].columns if effect.get("filter") in FILTERS else ()
        out.update({key: effect[key] for key in declared if key in effect})
    return out


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
