"""Does the attacker's selection rule pick good restarts? One grid attack per (update, seed); every
restart's final image is scored *after* the attack (ground truth for the analysis only), next to
the score the attack chose it by (held-out BN mismatch) and its objective.

For each attack it reports the SSIM of the restart the rule picked, of the best restart in
hindsight (an oracle no attacker has), and of each grid setting, so that one can see whether the
rule tracks quality across settings, seeds and training states.

    python -m bench.selection_rule --updates runs/default/updates/round_0/client_3 runs/default/updates/round_11/client_3 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.common import ROOT, device_name, save


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", nargs="+", required=True, help="update folders (with ground truth beside them, for the analysis)")
    p.add_argument("--config", default=str(ROOT / "configs" / "attack" / "default.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tag", default="", help="results go to bench/results/selection_rule_TAG.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from pipelines.attack_plan import attack_config
    from leakage.ground_truth import ground_truth_for_update
    from leakage.metrics import SSIMSettings
    from leakage.scoring import score
    from pipelines.attack_setup import attacker_knowledge, run_attack

    attacks = []
    for update in args.updates:
        for seed in args.seeds:
            cfg = attack_config(args.config, ["logging.progress=false", "logging.wandb=false"] + args.overrides + [f"optim.seed={seed}"])
            knowledge = attacker_knowledge(cfg, Path(update))
            result, _ = run_attack(knowledge, cfg)
            gt = ground_truth_for_update(Path(update))  # after the attack: analysis only
            settings = SSIMSettings.for_size(knowledge.spec.image_size)
            restarts = []
            for i, r in enumerate(result.restart_objectives):
                s = score(result.restart_images[i], None, gt.images, gt.labels, knowledge.prior, knowledge.spec.num_classes, settings)
                restarts.append({"restart": r, "setting": result.restart_settings[r], "objective": round(result.restart_objectives[r], 5),
                                 "score": round(result.restart_scores[r], 5), "ssim": round(s.ssim, 4), "rdlv": round(s.rdlv, 4)})
            chosen = next(x for x in restarts if x["restart"] == result.restart)
            best = max(restarts, key=lambda x: x["ssim"])
            attacks.append({"update": update, "seed": seed, "seconds": round(result.seconds, 2), "chosen": chosen, "best": best,
                            "restarts": restarts})
            print(f"{update} seed {seed}: chosen {chosen['setting']} SSIM {chosen['ssim']:.3f} RDLV {chosen['rdlv']:.2f}; "
                  f"best in hindsight {best['setting']} {best['ssim']:.3f} ({result.seconds:.0f}s)", flush=True)
            for x in restarts:
                print(f"    {x['setting']} score {x['score']:.4g} objective {x['objective']:.4g} SSIM {x['ssim']:.3f}", flush=True)
    ok = [a for a in attacks if a["chosen"]["ssim"] >= 0.75 and a["chosen"]["rdlv"] >= 0.5]
    save("selection_rule" + (f"_{args.tag}" if args.tag else ""), {
        "device": device_name(cfg.accelerator), "reached_ssim_0.75_rdlv_0.5": f"{len(ok)}/{len(attacks)}",
        "median_chosen_ssim": statistics.median(a["chosen"]["ssim"] for a in attacks),
        "median_regret_ssim": statistics.median(a["best"]["ssim"] - a["chosen"]["ssim"] for a in attacks),
        "attacks": attacks,
    })


if __name__ == "__main__":
    main()
