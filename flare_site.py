"""Each NVFlare site's training script (an entry point, like train.py; federation.flare builds the job): the project's client LightningModule, trained by a Lightning
Trainer under ``flare.patch``, one fresh Trainer per round (so that neither the step count nor the
optimizer state carries over between rounds, as in the in-process engine).

    python flare_site.py --config-b64 <train config, base64 JSON> --run <site folder>

NVFlare copies this file into the job; the project must be importable on the site (PYTHONPATH).
Site ``site-<k>`` is client ``k - 1`` of the config's split. The delta leaves through the
task-result filter :class:`federation.flare.outbox_filter.SiteOutbox`.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path


def site_client(site: str, num_clients: int) -> int:
    """``site-<k>`` -> client k - 1."""
    from common.errors import UserError

    try:
        k = int(site.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise UserError(f"site name '{site}' is not site-<k>") from None
    if not 1 <= k <= num_clients:
        raise UserError(f"site {site} has no client in a split of {num_clients} clients")
    return k - 1


def decode_config(text: str) -> dict:
    from common.errors import UserError

    try:
        data = json.loads(base64.b64decode(text.encode(), validate=True).decode())
    except (ValueError, UnicodeDecodeError) as err:  # binascii.Error and JSONDecodeError are ValueErrors
        raise UserError(f"--config-b64 is not a base64-encoded JSON train config ({err})") from None
    if not isinstance(data, dict):
        raise UserError("--config-b64 is not a train config (a JSON object)")
    return data


def write_global(run_dir: Path, rnd: int, state: dict) -> None:
    """The global model this round started from, as the site received it (the first site to write wins)."""
    from common.files import save_tensors
    from federation.run_layout import RunLayout

    path = RunLayout(run_dir).global_model(rnd)
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_tensors(tmp, state)
    try:
        os.link(tmp, path)  # atomic, and never replaces another site's file
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-b64", required=True)
    p.add_argument("--run", required=True, help="where this site writes its updates and ground truth")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    from common.config_loader import build
    from federation.train_config import TrainConfig

    cfg = build(TrainConfig, decode_config(args.config_b64))  # a bad config is one line before NVFlare is touched

    import torch
    import nvflare.client.lightning as flare

    from federation.flare import state
    from federation.federation import Federation
    from pipelines.attack_audit import AttackAudit

    if args.threads:
        torch.set_num_threads(args.threads)
    sim = Federation(cfg, auditor=AttackAudit)  # the same data, split, model spec, filters and audit as the in-process engine
    run_dir = Path(args.run)
    flare.init()
    site = flare.get_site_name()
    client = site_client(site, sim.num_clients)
    while flare.is_running():
        incoming = flare.receive()
        if incoming is None:
            break
        rnd = int(incoming.current_round)
        sim.client.load_state_dict(incoming.params)  # keys model.<...>: FLClient holds the model as .model
        global_state = {k: v.detach().clone() for k, v in sim.client.model.state_dict().items()}
        write_global(run_dir, rnd, global_state)

        def hand_over(job, local, recorder, global_state=global_state):
            state.put(site, state.LocalRound(sim, job, local, recorder, global_state, run_dir))
            return None

        sim.local_training(rnd, client, global_state, sim.round_lr(rnd), run_dir, hand_over=hand_over,
                           patch=lambda trainer: flare.patch(trainer, restore_state=False))


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
