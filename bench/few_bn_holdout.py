"""Holding out whole BN layers or one channel group of every layer, on models with few BN layers.

The held-out BN statistics choose among restarts and decide the verdict (docs/attack.md). On
ResNet-18 every 4th layer is 5 of 20; on a model with 3 or 4 BN layers it is one of the few
signals the attack has. ``objective.bn_statistics.holdout_unit`` holds out every 4th channel of
every layer instead (``auto`` does so below 8 BN layers). This compares, on the same updates and
attack seeds: ``layer``, ``channel`` and no holdout (``holdout: 0``, which cannot judge
convergence). SSIM is scored after the attack, for this comparison only.

    python -m bench.few_bn_holdout --depth 3 --seeds 0 1      # bn_convnet with 3 BN layers
    python -m bench.few_bn_holdout --depth 4 --seeds 0 1      # configs/convnet.yaml as it is
"""
from __future__ import annotations

import argparse

from bench.common import ROOT, attack_once, ensure_run, final_accuracy, save

SETTINGS = {"layer": ["objective.bn_statistics.holdout_unit=layer"],
            "channel": ["objective.bn_statistics.holdout_unit=channel"],
            "none": ["objective.bn_statistics.holdout=0", "optim.select=objective", "optim.grid={}", "optim.restarts=1"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=3, help="bn_convnet blocks = BN layers")
    p.add_argument("--client", type=int, default=2, help="the 1-image client of the default split")
    p.add_argument("--rounds", type=int, nargs="+", default=[0, 11], help="rounds whose update is attacked (early and trained)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="attack seeds")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()

    from federation.run_layout import RunLayout

    run = ensure_run(ROOT / "bench" / "runs" / f"convnet_depth{args.depth}",
                     ["model.name=bn_convnet", "model.resize_to=0", "model.width=32", f"model.depth={args.depth}"])
    accuracy = final_accuracy(run)
    rows = []
    for rnd in args.rounds:
        update = RunLayout(run).update(rnd, args.client)
        for setting in args.settings:
            for seed in args.seeds:
                out = ROOT / "bench" / "runs" / "few_bn_holdout" / f"depth{args.depth}_r{rnd}_{setting}_s{seed}"
                m = attack_once(out, ["escalation.enabled=false", f"update={update}", f"optim.seed={seed}"] + SETTINGS[setting])
                conv = m.get("convergence") or {}
                rows.append({"round": rnd, "setting": setting, "seed": seed, "ssim": round(m["ssim"], 4), "verdict": m["verdict"],
                             "converged": m["converged"], "heldout_error": conv.get("heldout_error"), "unit": conv.get("heldout_unit"),
                             # what the 5% rule would say of this held-out error, whether or not the unit may judge
                             "within_5pct": None if conv.get("heldout_error") is None else conv["heldout_error"] <= 0.05,
                             "held_out": conv.get("heldout_layers"), "seconds": round(m["seconds"], 1)})
                print(rows[-1], flush=True)
    save(f"few_bn_holdout_depth{args.depth}", {
        "run": str(run), "test_accuracy": accuracy, "client": args.client, "rows": rows,
        "note": "within_5pct: what the 5% rule says of the held-out error. Attacks cached from before channel groups stopped "
                "judging convergence carry converged=true for the channel rows where today they carry null"})


if __name__ == "__main__":
    main()
