"""Is the convergence rule right? Converged (judged from the update alone) against reconstructed (SSIM >= 0.75,
judged with the ground truth, for this analysis only), over many attacked updates.

Every rung of every attack is one case: the rung's held-out BN error per layer, the rule's answer
(inversion.convergence), and the SSIM of that rung's reconstruction, scored after the attack. The
two kinds of error are named case by case: "converged" with SSIM < 0.75 (the attack says it
solved the update, yet nothing is close: the verdict would be "no leak found") and "not
converged" with SSIM >= 0.75 (a leak the rule does not vouch for; the verdict is still "leaks").

    python -m bench.convergence_rule attack --tag per_round_200 --set optim.iterations=200 escalation.enabled=false \
        --updates 'runs/studies/per_round/train/*/updates/round_*/client_3'
    python -m bench.convergence_rule table --group per_round='runs/studies/per_round/cells/*' \
        --group short='bench/runs/convergence/per_round_200/*'
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

from bench.common import ROOT, save

LEAK_SSIM = 0.75


def attack(args: argparse.Namespace) -> None:
    from pipelines.attack_job import run_attack_job
    from pipelines.attack_plan import DEFAULT_FILE, attack_config

    bad = [p for p in args.updates if "=" in p]
    if bad:  # an override after --updates would otherwise be taken for a pattern and silently ignored
        raise SystemExit(f"{bad[0]} looks like an override: pass overrides with --set")
    updates = sorted(p for pattern in args.updates for p in glob.glob(pattern) if (Path(p) / "meta.json").is_file())
    root = ROOT / "bench" / "runs" / "convergence" / args.tag
    for k, update in enumerate(updates):
        name = "_".join(Path(update).parts[-5:]).replace("/", "_")
        out = root / name
        if (out / "metrics.json").is_file():
            continue
        cfg = attack_config(DEFAULT_FILE,  # the single-image attack on every update: what this rule was chosen on
                            ["logging.progress=false", "logging.wandb=false", "scoring.lpips=false", f"update={update}", f"out={out}"] + args.set)
        m = run_attack_job(cfg)["metrics"]
        print(f"[{k + 1}/{len(updates)}] {update}: SSIM {m['ssim']:.3f} {m['verdict']} "
              f"(held-out {m['convergence']['heldout_error']:.3g}, {m['seconds']:.0f}s)", flush=True)


def cases(folder: Path, group: str) -> list[dict[str, Any]]:
    path = folder / "metrics.json"
    if not path.is_file():
        return []
    m = json.loads(path.read_text())
    out = []
    for r in (m.get("escalation") or {}).get("rungs", []):
        if r.get("ssim") is None or r.get("converged") is None:
            continue  # a failed rung, or one whose convergence cannot be judged
        out.append({"group": group, "attack": str(folder), "update": m.get("update"), "rung": r["rung"], "name": r["name"],
                    "heldout_error": r["heldout_error"], "converged": bool(r["converged"]), "ssim": round(r["ssim"], 4),
                    "num_images": len(m.get("per_image", [])), "returned": r["rung"] == m["escalation"]["returned_rung"]})
    return out


def table(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    for spec in args.group:
        group, pattern = spec.split("=", 1)
        for folder in sorted(glob.glob(pattern)):
            rows += cases(Path(folder), group)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    summary = []
    lines = ["| cases | updates | converged, SSIM >= 0.75 | converged, SSIM < 0.75 (false 'converged') | not converged, SSIM >= 0.75 (false 'not converged') | not converged, SSIM < 0.75 |",
             "|---|---|---|---|---|---|"]
    for g in groups + ["all"]:
        sel = [r for r in rows if g == "all" or r["group"] == g]
        counts = {(c, s): sum(1 for r in sel if r["converged"] == c and (r["ssim"] >= LEAK_SSIM) == s) for c in (True, False) for s in (True, False)}
        updates = len({r["update"] for r in sel})
        summary.append({"group": g, "cases": len(sel), "updates": updates, **{f"converged={c},reconstructed={s}": n for (c, s), n in counts.items()}})
        lines.append(f"| {g}: {len(sel)} | {updates} | {counts[(True, True)]} | {counts[(True, False)]} | {counts[(False, True)]} | {counts[(False, False)]} |")
    conv = [r["heldout_error"] for r in rows if r["converged"]]
    stalled = [r["heldout_error"] for r in rows if not r["converged"]]
    wrong = [r for r in rows if r["converged"] != (r["ssim"] >= LEAK_SSIM)]
    print("\n".join(lines))
    if conv and stalled:
        print(f"\nheld-out error per layer: converged {min(conv):.2g}-{max(conv):.2g}, not converged {min(stalled):.2g}-{max(stalled):.2g}")
    for r in wrong:
        print(f"  {'false converged' if r['converged'] else 'false not converged'}: {r['update']} rung {r['rung']} ({r['name']}), "
              f"held-out {r['heldout_error']:.3g}, SSIM {r['ssim']:.3f}, {r['num_images']} image(s)")
    save("convergence_rule" + (f"_{args.tag}" if args.tag else ""), {"leak_ssim": LEAK_SSIM, "summary": summary, "table": lines,
                                                                     "disagreements": wrong, "cases": rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attack", help="attack update folders (skips finished ones)")
    a.add_argument("--updates", nargs="+", required=True, help="update folders or glob patterns")
    a.add_argument("--tag", required=True, help="attacks go to bench/runs/convergence/TAG/")
    a.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="attack config overrides")
    t = sub.add_parser("table", help="the rule against the ground truth over finished attacks")
    t.add_argument("--group", action="append", required=True, help="NAME=GLOB of attack folders (metrics.json inside)")
    t.add_argument("--tag", default="", help="results go to bench/results/convergence_rule_TAG.json")
    args = p.parse_args()
    attack(args) if args.command == "attack" else table(args)


if __name__ == "__main__":
    main()
