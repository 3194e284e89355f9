"""FedBN's accuracy per client: the final global weights with each client's own kept BN entries, on the test set.

The federation's FedBN accuracy (metrics.csv) is the mean over the clients; this splits it, to see whose model pays
for keeping the statistics local (a client's BN statistics come from its own images only).

    python -m bench.fedbn_per_client 'runs/studies/fedbn/train/*'     # -> bench/results/fedbn_per_client.json
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
import yaml

from bench.common import save
from common.config_loader import build
from common.files import load_tensors
from federation.federation import Federation
from federation.run_files import read_metrics
from federation.run_layout import RunLayout
from federation.train_config import TrainConfig


def per_client(run: Path) -> tuple[int, list[float], float] | None:
    """(seed, each client's test accuracy, the federation's reported one) of a finished FedBN run; None for another run."""
    layout = RunLayout(run)
    if not layout.is_complete():
        return None
    cfg = build(TrainConfig, yaml.safe_load(layout.config.read_text()))
    if cfg.fl.bn_buffers != "local" and cfg.fl.bn_affine != "local":
        return None
    fed = Federation(cfg)
    fed.states.load(layout, cfg.fl.rounds, range(fed.num_clients))
    scores = fed.client_scores(load_tensors(layout.global_model(cfg.fl.rounds), "final global model"))
    return cfg.seed, [scores[c][0] for c in sorted(scores)], read_metrics(layout.metrics)[-1].test_accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", help="glob of run folders (quote it); runs without local BN entries are skipped")
    args = parser.parse_args(argv)
    rows = [r for r in (per_client(Path(p)) for p in sorted(glob.glob(args.runs))) if r is not None]
    if not rows:
        print(f"error: no finished FedBN run matches {args.runs}", file=sys.stderr)
        return 2
    for seed, accs, reported in sorted(rows):
        print(f"seed {seed}: " + " ".join(f"{a:.3f}" for a in accs) + f" (mean {np.mean(accs):.3f}, metrics.csv {reported:.3f})")
    means = np.mean([accs for _, accs, _ in rows], axis=0)
    print("mean per client over the seeds: " + " ".join(f"{m:.3f}" for m in means))
    save("fedbn_per_client", {"runs": args.runs, "per_seed": {s: a for s, a, _ in sorted(rows)}, "mean_per_client": means.tolist()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
