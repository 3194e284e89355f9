"""The attacker who does not know the data's resolution: the 1-image client reconstructed at the model's
input size (80 px, ``threat.reconstruct_at_input``) against the data's 32 px, on the federations of
``bench.prior_sensitivity`` (face client, seeds 0-2, round 11). The default attack without escalation
(800 iterations), or with it (``--escalation``), the run's prior (images no client holds); scored
at 32 px after an antialiased downsampling.

    python -m bench.input_resolution --seeds 0 1 2
    python -m bench.input_resolution --seeds 0 1 2 --escalation
"""
from __future__ import annotations

import argparse
import json

from bench.common import ROOT, attack_once, ensure_run, final_accuracy, save
from bench.prior_sensitivity import CLIENTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--escalation", action="store_true", help="the default attack as it is, with its escalation ladder (300 s)")
    args = p.parse_args()

    from federation.run_layout import RunLayout

    rows = []
    for seed in args.seeds:
        clients = CLIENTS + [{"images": 1, "batch_size": 1, "classes": ["face"]}]
        run = ensure_run(ROOT / "bench" / "runs" / "prior_sensitivity" / f"face_seed{seed}",
                         [f"seed={seed}", f"fl.split.clients={json.dumps(clients)}"])
        accuracy = final_accuracy(run)
        for name, extra in (("data_32px", []), ("input_80px", ["threat.reconstruct_at_input=true"])):
            out = run / "bench_attacks" / (("prior_public" if name == "data_32px" else "at_input") + ("_escalated" if args.escalation else ""))
            m = attack_once(out, [f"escalation.enabled={str(args.escalation).lower()}", f"update={RunLayout(run).update(11, 3)}",
                                  f"prior.path={RunLayout(run).prior}"] + extra)
            rows.append({"seed": seed, "test_accuracy": accuracy, "reconstructed_at": name, "ssim": round(m["ssim"], 4),
                         "psnr": m.get("psnr"), "rdlv": round(m["rdlv"], 3), "verdict": m["verdict"], "converged": m["converged"],
                         "heldout_error": (m.get("convergence") or {}).get("heldout_error"), "seconds": m["seconds"]})
            print(rows[-1], flush=True)
    save("input_resolution" + ("_escalated" if args.escalation else ""), {"rows": rows})


if __name__ == "__main__":
    main()
