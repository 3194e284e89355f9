"""How much the attacker's prior image decides: the 1-image client attacked from three priors.

- ``grey``: uniform 0.5, what an attacker with no population data has;
- ``public``: the run's prior.safetensors, the mean of the images no client holds (test split and
  undealt training images), the default since issue 23;
- ``pool``: the mean of the whole training pool, the old default. It holds every client's images,
  the attacked one included, so it is built here from the split for this comparison only.

The client is the default federation's 1-image client (client 3, round 11), a face (the default)
or a non-face (``fl.split.clients[3].classes: [non_face]``). Attacks use the default attack
without escalation (the configured 800 iterations). SSIM and RDLV are scored afterwards, against
each attack's own prior.

    python -m bench.prior_sensitivity --seeds 0 1 2 --classes face non_face
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import ROOT, attack_once, ensure_run, final_accuracy, save

CLIENTS = [{"images": 64, "batch_size": 8}, {"images": 40, "batch_size": 8}, {"images": 8, "batch_size": 4}]


def priors(run: Path) -> dict[str, Path]:
    """The three prior files of a run (grey and pool written beside it, once)."""
    from common.files import load_tensors, save_tensors
    from common.config_loader import load
    from datamodules.sources import load_pool
    from federation.train_config import TrainConfig

    out = {"public": run / "prior.safetensors", "grey": run / "bench_prior_grey.safetensors", "pool": run / "bench_prior_pool.safetensors"}
    mean = load_tensors(out["public"])["mean"]
    if not out["grey"].is_file():
        save_tensors(out["grey"], {"mean": torch.full_like(mean, 0.5)})
    if not out["pool"].is_file():
        cfg = load(TrainConfig, [run / "config.yaml"], [])
        pool = load_pool(cfg.data)
        split = json.loads((run / "split.json").read_text())
        test = set(split["test_indices"])
        train = torch.tensor([i for i in range(len(pool)) if i not in test])
        save_tensors(out["pool"], {"mean": pool.images[train].mean(0)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--classes", nargs="+", default=["face", "non_face"])
    p.add_argument("--priors", nargs="+", default=["grey", "public", "pool"])
    args = p.parse_args()

    from federation.run_layout import RunLayout

    rows = []
    for cls in args.classes:
        for seed in args.seeds:
            clients = CLIENTS + [{"images": 1, "batch_size": 1, "classes": [cls]}]
            run = ensure_run(ROOT / "bench" / "runs" / "prior_sensitivity" / f"{cls}_seed{seed}",
                             [f"seed={seed}", f"fl.split.clients={json.dumps(clients)}"])
            accuracy = final_accuracy(run)
            update = RunLayout(run).update(11, 3)
            files = priors(run)
            for name in args.priors:
                out = run / "bench_attacks" / f"prior_{name}"
                m = attack_once(out, ["escalation.enabled=false", f"update={update}", f"prior.path={files[name]}"])
                per = (m.get("per_image") or [{}])[0]
                rows.append({"client": cls, "seed": seed, "prior": name, "test_accuracy": accuracy, "ssim": round(m["ssim"], 4),
                             "prior_ssim": per.get("prior_ssim"), "rdlv": round(m["rdlv"], 3), "verdict": m["verdict"],
                             "converged": m["converged"], "heldout_error": (m.get("convergence") or {}).get("heldout_error")})
                print(rows[-1], flush=True)
    save("prior_sensitivity", {"rows": rows})


if __name__ == "__main__":
    main()
