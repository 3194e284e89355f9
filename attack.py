"""Gradient inversion against a saved client update, then scoring against the ground truth.

    python attack.py                                   # high-risk client of the latest runs/default round
    python attack.py --update runs/default/updates/round_0/client_2 optim.iterations=800
    python attack.py --update runs/default/updates/round_11/client_2       # 8 images: configs/attack/batch.yaml, chosen automatically
    python attack.py --config configs/attack/multistep.yaml --update ... --out runs/x/attack

The attack reads only the update folder, the global model and the prior image; scoring (a separate
step, leakage/scoring.py) reads the ground truth when the run has one.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")

from common.cli import parser  # noqa: E402
from common.errors import run_cli  # noqa: E402
from inversion.attack_config import AttackConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = parser("attack.py", "Gradient inversion of a captured FL update, scored against the ground truth. Without --config, an update "
               "of a client with more than one image is attacked with configs/attack/batch.yaml on top of configs/attack/default.yaml.",
               AttackConfig, "configs/attack/default.yaml")
    p.add_argument("--update", default=None, metavar="DIR", help="update folder (same as update=DIR)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (same as out=DIR)")
    p.add_argument("--run", default=None, metavar="RUN", help="run directory (same as run=RUN)")
    p.add_argument("--ground-truth", default=None, metavar="FILE", help="score against these images (same as ground_truth=FILE)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted attack from OUT.partial/checkpoints/last.ckpt "
                   "(written every optim.checkpoint_every steps)")
    p.add_argument("--no-escalation", action="store_true", help="run the configured attack only, even if it does not converge "
                   "(same as escalation.enabled=false; docs/attack.md, 'Convergence, escalation and the verdict')")
    p.add_argument("--force", action="store_true", help="attack an update whose entries no training step produces (refused otherwise; "
                   "same as force=true)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier output of attack.py (anything else is never replaced)")
    args = p.parse_intermixed_args(argv)
    flags = [*(["escalation.enabled=false"] if args.no_escalation else []), *(["force=true"] if args.force else [])]
    from pipelines.attack_plan import plan_attack

    plan = plan_attack(args.config, [*args.overrides, *flags], update=args.update, out=args.out, run=args.run,
                       ground_truth=args.ground_truth)
    if plan.batch:
        print(plan.describe())
    cfg = plan.config
    report = plan.run(resume=args.resume, overwrite=args.overwrite)
    m = report.metrics
    if not m:  # a DDP worker process: rank 0 reports
        return
    budget_warning(cfg, m)
    if m.get("ssim") is not None:
        from leakage.image_metrics import REGISTRY

        extra = "".join(f"{cls.format(m[name])}  " for name, cls in REGISTRY.items() if m.get(name) is not None)
        # SSIM and the per-image metrics are matched means; RDLV is the paper's maximum over images (leakage-metrics.md)
        rdlv = f"RDLV {m['rdlv']:.2f}" if len(m["per_image"]) == 1 else f"RDLV max {m['rdlv']:.2f} (mean {m['rdlv_mean']:.2f})"
        rdlv += f" against {m['prior']}"  # RDLV is relative to the prior image the attacker started from
        print(f"SSIM {m['ssim']:.3f}  {extra}{rdlv}  label accuracy {m['label_accuracy']:.2f}  "
              f"({m['iterations']} iterations, {m['seconds']:.0f}s) -> {report.out}")
        print(f"verdict: {m['verdict']} ({m['verdict_reason']}); {convergence_line(m)}")
        print(server_line(m))
        if m["prior"].startswith("uniform grey"):
            print("no population prior: the attack started from uniform grey and RDLV is measured against it; "
                  "prior.path=FILE (a safetensors 'mean' [C, H, W] of public images like the client's) gives the attack one")
    else:
        print(f"reconstruction written ({m['iterations']} iterations, {m['seconds']:.0f}s; no ground truth to score) -> {report.out}")
        print(convergence_line(m))
        print(server_line(m))


def budget_warning(cfg: AttackConfig, m: dict) -> None:
    """Say when the time budget, not the configuration, ended an attack that did not converge: its verdict
    then reflects the machine's speed, and more time (or a GPU) is the first thing to try."""
    rungs = m.get("escalation", {}).get("rungs") or [{"iterations": m["iterations"]}]
    done = rungs[0]["iterations"]
    if m.get("converged") or done >= cfg.optim.iterations:
        return
    print(f"warning: the time budget (optim.max_seconds={cfg.optim.max_seconds:g}) bought {done} of the configured "
          f"{cfg.optim.iterations} iterations and the attack did not converge: the verdict says what this machine managed; "
          "raise optim.max_seconds or run on a GPU (accelerator=gpu)", file=sys.stderr)


def server_line(m: dict) -> str:
    """The verdict from the update alone (what a server or auditor without the images can say) and its risk score."""
    risk = m.get("risk_heldout_error")
    score = f"risk score: held-out error {risk:.2g} per layer (lower = closer solution)" if risk is not None else "no risk score"
    meaning = ("the attack inverted the update" if m["server_verdict"] == "reconstructed"
               else "the attack did not converge: no evidence either way")
    return f"server verdict (update alone): {m['server_verdict']}: {meaning}; {score}; calibration: docs/verdict-validation.md"


def convergence_line(m: dict) -> str:
    conv, esc = m["convergence"], m["escalation"]
    state = {True: "converged", False: "did not converge", None: "convergence not judged"}[conv["converged"]]
    climbed = f", rung {esc['returned_rung']} of {len(esc['rungs'])} run ({esc['stopped']})" if len(esc["rungs"]) > 1 else ""
    return f"{state}: {conv['reason']}{climbed}"


if __name__ == "__main__":
    run_cli(main)
