"""(d) The FL simulation's overhead per client-round beyond the compute of local training.

For every client-round of the default federation, the time of Federation.train_client
(Lightning Trainer, update capture, privacy filters) is compared with a plain PyTorch loop doing
the same local training (same model, batches in the same order, same optimiser), measured back to
back in the same process.

    python -m bench.fl_overhead                    # without writing updates (capture off)
    python -m bench.fl_overhead --capture          # with every update and its ground truth written
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import ROOT, device_name, save


def plain_local_training(sim, rnd: int, client: int, global_state, lr: float) -> float:
    from datamodules.client import ClientDataModule
    from federation.federation import client_seed

    spec = sim.split.specs[client]
    seed = client_seed(sim.cfg.seed, rnd, client)
    torch.manual_seed(seed)
    model = copy.deepcopy(sim.client.model)
    model.load_state_dict(global_state)
    model.train()
    cfg = sim.cfg.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loader = ClientDataModule(sim.pool, sim.split.client_indices[client], spec.batch_size, seed).train_dataloader()
    start = time.perf_counter()
    for _ in range(sim.cfg.local.epochs):
        for images, labels, _ in loader:
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--capture", action="store_true", help="write every update and its ground truth (disk I/O counted)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from common.config_loader import load
    from federation.train_config import TrainConfig
    from federation.federation import Federation

    cfg = load(TrainConfig, [args.config], [f"fl.rounds={args.rounds}", "logging.wandb=false", "logging.progress=false",
                                            "capture.clients=[]", "capture.rounds=[]"] + args.overrides)
    sim = Federation(cfg)
    state = {k: v.clone() for k, v in sim.global_model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix="bench_fl_")) if args.capture else None
    rows = []
    sim.train_client(0, 0, state, cfg.optimizer.lr, None)  # warm-up
    for rnd in range(args.rounds):
        if tmp is not None:
            from common.files import save_tensors
            from federation.run_layout import RunLayout

            save_tensors(RunLayout(tmp).global_model(rnd), state)
        results = {}
        for client in sim.sample_clients(rnd):
            plain = plain_local_training(sim, rnd, client, state, cfg.optimizer.lr)
            t = time.perf_counter()
            results[client] = sim.train_client(rnd, client, state, cfg.optimizer.lr, tmp)
            full = time.perf_counter() - t
            rows.append({"round": rnd, "client": client, "steps": results[client].local_steps, "plain_s": round(plain, 4),
                         "fl_s": round(full, 4), "overhead_s": round(full - plain, 4)})
        state, _ = sim.aggregate_round(rnd, results, state)
    overheads = [r["overhead_s"] for r in rows]
    save("fl_overhead" + ("_capture" if args.capture else ""), {
        "device": device_name(cfg.accelerator), "model": cfg.model.name, "client_rounds": len(rows), "capture": args.capture,
        "overhead_s_per_client_round_median": round(statistics.median(overheads), 4),
        "overhead_s_per_client_round_mean": round(statistics.mean(overheads), 4),
        "plain_s_mean": round(statistics.mean(r["plain_s"] for r in rows), 4), "fl_s_mean": round(statistics.mean(r["fl_s"] for r in rows), 4),
        "rows": rows,
    })


if __name__ == "__main__":
    main()
