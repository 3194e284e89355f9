"""Build the NVFlare FedAvg job from a train.py config; run it in NVFlare's simulator, or export it.

The server is NVFlare's own FedAvg (weighted by each result's NUM_STEPS_CURRENT_ROUND, i.e. local
steps: the paper's weighting; ``fl.weighting`` samples / uniform set per-site aggregation weights
that turn it into those). Sites run ``flare_site.py`` and send their update through the
``SiteOutbox`` task-result filter. After a simulation, the run folder gets the same layout as the
in-process engine's (docs/update-format.md): the sites wrote ``updates/``, ``ground_truth/`` and the
global model of every round they received; the final model comes from the server's persistor,
and each round's test accuracy is measured here on the held-out split.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from common.config_loader import to_dict
from common.errors import UserError
from common.files import load_tensors, load_weights_only, save_tensors
from federation.flare.outbox_filter import PREFIX, SITE_LOG, strip_prefix
from federation.run_files import append_metrics_csv
from federation.federation import Federation, RoundRecord
from federation.run_layout import RunLayout
from federation.client import evaluate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "flare_site.py"
JOB_NAME = "fl_leakage"
INITIAL = "initial_model.pt"


def encode_config(tree: dict) -> str:
    """The train config as one shell-safe word for the site script's --config-b64."""
    return base64.b64encode(json.dumps(tree).encode()).decode()


def check_supported(sim: Federation) -> None:
    fl = sim.cfg.fl
    if fl.client_fraction < 1:
        raise UserError("fl.engine=nvflare trains every client each round: fl.client_fraction must be 1 "
                        "(NVFlare's FedAvg samples clients its own way)")
    if fl.workers:
        raise UserError("fl.workers is for the in-process engine; NVFlare runs each site in its own process")


def site_names(sim: Federation) -> list[str]:
    return [f"site-{c + 1}" for c in range(sim.num_clients)]


def aggregation_weights(sim: Federation) -> dict[str, float] | None:
    """NVFlare weighs each result by aggregation_weight x local steps; these weights make that our fl.weighting."""
    weighting = sim.cfg.fl.weighting
    if weighting == "steps":
        return None
    steps = [sim.expected_steps(c) for c in range(sim.num_clients)]
    sizes = [int(idx.numel()) for idx in sim.split.client_indices]
    values = [n / t for n, t in zip(sizes, steps)] if weighting == "samples" else [1.0 / t for t in steps]
    return dict(zip(site_names(sim), values))


def site_threads(num_clients: int) -> int:
    """Torch threads per site: the sites train at the same time, so the cores are shared out.

    The thread count sets the order of float reductions: with the in-process engine at the same
    count the updates are bit-identical; at another count they drift by ~1e-7 per step, which
    momentum amplifies (1.5e-4 after 8 steps measured on configs/convnet.yaml's 8-step client).
    (Taking turns with all threads each is exact too, but 3x slower in NVFlare's simulator.)
    """
    return max(1, (os.cpu_count() or 1) // num_clients)


def save_initial_model(sim: Federation, path: Path) -> None:
    """The seeded initial model, with the client module's key prefix (what the server persistor loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({PREFIX + k: v.detach().clone() for k, v in sim.global_model.state_dict().items()}, path)


def build_recipe(sim: Federation, initial_ckpt: str, site_run: str, threads: int = 0, script: str = str(SCRIPT)) -> Any:
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.client.config import ExchangeFormat, TransferType

    from federation.flare.outbox_filter import SiteOutbox

    args = f"--config-b64 {encode_config(to_dict(sim.cfg))} --run {site_run}" + (f" --threads {threads}" if threads else "")
    recipe = FedAvgRecipe(
        name=JOB_NAME,
        model={"class_path": "federation.flare.model.GlobalModule", "args": {"spec": sim.spec.to_dict()}},
        initial_ckpt=initial_ckpt,
        min_clients=sim.num_clients,
        num_rounds=sim.cfg.fl.rounds,
        train_script=script,
        train_args=args,
        params_transfer_type=TransferType.DIFF,
        server_expected_format=ExchangeFormat.PYTORCH,
        aggregation_weights=aggregation_weights(sim),
    )
    recipe.add_client_output_filter(SiteOutbox(), tasks=["train"])
    return recipe


@contextlib.contextmanager
def _nvflare_process_env() -> Iterator[None]:
    """Sites import the project (PYTHONPATH), and NVFlare must not read our command line (it looks for --export)."""
    saved_argv, saved_path = sys.argv, os.environ.get("PYTHONPATH")
    sys.argv = [sys.argv[0]]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([saved_path] if saved_path else []))
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


def run_simulator(sim: Federation, run_dir: Path) -> list[RoundRecord]:
    """Run the whole federation in NVFlare's simulator (one process per site) and lay out ``run_dir``."""
    from nvflare.recipe.sim_env import SimEnv

    check_supported(sim)
    started = time.perf_counter()
    sim.write_setup(run_dir)
    save_tensors(RunLayout(run_dir).global_model(0), {k: v.detach().clone() for k, v in sim.global_model.state_dict().items()})
    workspace = run_dir / "nvflare"
    initial = workspace / INITIAL
    save_initial_model(sim, initial)
    recipe = build_recipe(sim, str(initial.resolve()), str(run_dir.resolve()), site_threads(sim.num_clients))
    env = SimEnv(clients=site_names(sim), num_threads=sim.num_clients, workspace_root=str(workspace.resolve()))
    with _nvflare_process_env():
        try:
            recipe.execute(env)
        except RuntimeError as err:
            raise UserError(f"the NVFlare simulation failed ({str(err).splitlines()[0][:200]}); logs: {workspace / JOB_NAME}") from None
    return collect(sim, run_dir, workspace / JOB_NAME, time.perf_counter() - started)


def final_model_file(job_workspace: Path) -> Path:
    found = sorted(job_workspace.glob("server/**/FL_global_model.pt"))
    if not found:
        raise UserError(f"NVFlare left no final global model under {job_workspace / 'server'}")
    return found[0]


def collect(sim: Federation, run_dir: Path, job_workspace: Path, seconds: float) -> list[RoundRecord]:
    """The run layout of the in-process engine from what the sites and the server left."""
    rounds = sim.cfg.fl.rounds
    saved = load_weights_only(final_model_file(job_workspace), "NVFlare's final global model")
    final = strip_prefix(saved.get("model", saved))
    reference = sim.global_model.state_dict()
    save_tensors(RunLayout(run_dir).global_model(rounds), {k: final[k].to(reference[k].dtype) for k in reference})
    with open(run_dir / SITE_LOG, newline="") as fh:
        site_rows = list(csv.DictReader(fh))
    records = []
    for rnd in range(rounds):
        path = RunLayout(run_dir).global_model(rnd + 1)
        if not path.is_file():
            raise UserError(f"NVFlare run incomplete: no global model of round {rnd + 1} in {run_dir / 'global'}")
        sim.global_model.load_state_dict(load_tensors(path, "global model"))
        acc, loss = evaluate(sim.global_model, sim.test_loader)
        invalid = sim.model_check(rnd, sim.global_model.state_dict(), loss)
        rows = [r for r in site_rows if int(r["round"]) == rnd]
        record = RoundRecord(rnd, sim.round_lr(rnd), sorted(int(r["client"]) for r in rows), acc, loss,
                             float(np.mean([float(r["train_loss"]) for r in rows])) if rows else float("nan"),
                             seconds / rounds, {}, sorted(int(r["client"]) for r in rows if int(r["withheld"])), invalid=invalid)
        append_metrics_csv(RunLayout(run_dir).metrics, record)
        records.append(record)
        sim.stop_if_invalid(rnd, invalid)  # NVFlare ran every round already: what stops here is the run being called complete
    return records


def export_job(sim: Federation, job_dir: Path, site_run: str = "fl_leakage_site") -> Path:
    """The NVFlare job folder for real sites (POC or provisioned): submit it with ``nvflare job submit``."""
    check_supported(sim)
    with tempfile.TemporaryDirectory() as tmp, _nvflare_process_env():
        save_initial_model(sim, Path(tmp) / INITIAL)
        shutil.copy2(SCRIPT, Path(tmp) / SCRIPT.name)
        staging = Path(tmp) / "export"
        with contextlib.chdir(tmp):  # relative paths: the initial model is bundled into the server app, the script into the client app
            build_recipe(sim, INITIAL, site_run, script=SCRIPT.name).export(str(staging))
        produced = staging / JOB_NAME if (staging / JOB_NAME).is_dir() else staging
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(produced, job_dir)
    return job_dir
