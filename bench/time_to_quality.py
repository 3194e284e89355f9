"""(b) Time and iterations until the default high-risk client (1 image, batch 1, in the first and the
last round of the default run: an early and a trained model) is reconstructed with SSIM >= 0.8
and RDLV >= 0.5, on this machine.

The attack snapshots its current best-by-objective image every few steps (cheap clones); snapshots
are scored after the attack, so scoring never counts as attack time.

The attack's outcome varies with its seed (the initial noise), so the benchmark runs several
seeds and reports each, how many reached the targets, and the median time of those that did.

    python -m bench.time_to_quality --run runs/default --rounds 0 -1 --seeds 0 1 2 3 4 5 --tag default_run
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.common import ROOT, device_name, ensure_run, save


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(ROOT / "bench" / "runs" / "default"))
    p.add_argument("--config", default=str(ROOT / "configs" / "attack" / "default.yaml"))
    p.add_argument("--every", type=int, default=5, help="snapshot every this many steps")
    p.add_argument("--ssim", type=float, default=0.8)
    p.add_argument("--rdlv", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="attack seeds (optim.seed), one attack each")
    p.add_argument("--rounds", type=int, nargs="+", default=[-1], help="rounds whose high-risk update is attacked (-1 = the last)")
    p.add_argument("--tag", default="", help="results go to bench/results/time_to_quality_TAG.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from federation.run_layout import RunLayout
    from federation.update_store import high_risk_update
    from pipelines.attack_plan import attack_config
    from leakage.ground_truth import ground_truth_for_update
    from leakage.metrics import SSIMSettings
    from leakage.scoring import score
    from pipelines.attack_setup import attacker_knowledge, run_attack

    run = ensure_run(Path(args.run))
    last_update = high_risk_update(run)
    client = next(c for _, c, path in RunLayout(run).updates() if path == last_update)
    folders = {r: path for r, c, path in RunLayout(run).updates() if c == client}  # round -> this client's update
    saved = sorted(folders)
    runs = []
    for rnd, seed in ((rnd, seed) for rnd in args.rounds for seed in args.seeds):
        rnd = saved[rnd] if rnd < 0 else rnd
        if rnd not in saved:
            raise SystemExit(f"error: round {rnd} of client {client} was not saved in {run} (saved: {saved})")
        update = folders[rnd]
        cfg = attack_config(args.config, ["logging.progress=false", "logging.wandb=false"] + args.overrides + [f"optim.seed={seed}"])
        knowledge = attacker_knowledge(cfg, update)
        result, attack = run_attack(knowledge, cfg, trace_every=args.every)
        gt = ground_truth_for_update(update)  # only after the attack, for scoring its snapshots
        settings = SSIMSettings.for_size(knowledge.spec.image_size)
        curve, reached = [], None
        for snap in result.trace:
            s = score(snap["images"], None, gt.images, gt.labels, knowledge.prior, knowledge.spec.num_classes, settings)
            curve.append({"step": snap["step"], "seconds": round(snap["seconds"], 2), "objective": round(snap["objective"], 5),
                          "ssim": round(s.ssim, 4), "rdlv": round(s.rdlv, 4)})
            if reached is None and s.ssim >= args.ssim and s.rdlv >= args.rdlv:
                reached = curve[-1]
        runs.append({"round": rnd, "seed": seed, "setting": result.restart_settings.get(result.restart, {}), "reached": reached, "final": curve[-1] if curve else None, "attack_seconds_total": round(result.seconds, 2),
                     "iterations_total": result.iterations, "seconds_per_iteration": round(result.seconds / max(1, result.iterations), 4),
                     "curve": curve[:: max(1, len(curve) // 40)]})
        print(f"round {rnd} seed {seed}: reached {reached}, final {runs[-1]['final']} ({result.seconds:.0f}s)", flush=True)
    per_round = {}
    for rnd in sorted({r["round"] for r in runs}):
        mine = [r for r in runs if r["round"] == rnd]
        hits = [r["reached"]["seconds"] for r in mine if r["reached"]]
        per_round[str(rnd)] = {"reached": f"{len(hits)}/{len(mine)}", "median_seconds_of_reached": statistics.median(hits) if hits else None,
                               "within_30s": sum(h <= 30 for h in hits), "max_attack_seconds": max(r["attack_seconds_total"] for r in mine),
                               "final_ssim": [r["final"]["ssim"] for r in mine], "final_rdlv": [r["final"]["rdlv"] for r in mine]}
        print(f"round {rnd}: {per_round[str(rnd)]}", flush=True)
    save("time_to_quality" + (f"_{args.tag}" if args.tag else ""), {
        "device": device_name(cfg.accelerator), "run": str(run), "client": client, "targets": {"ssim": args.ssim, "rdlv": args.rdlv},
        "per_round": per_round, "ssim_settings": settings.describe(), "runs": runs,
    })


if __name__ == "__main__":
    main()
