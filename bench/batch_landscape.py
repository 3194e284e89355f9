"""What the attack's objective looks like at the client's true images, and how many unknowns face how
many constraints: the diagnosis the batch-client issue asks for when an attack does not converge.

    python -m bench.batch_landscape --run RUN --client 2 [--config configs/attack/batch.yaml] [--recon ATTACK_OUT] [KEY=VALUE ...]

For a diagnosis only: it reads the ground truth (to place the true images in the attacker's dummy slots),
which no attack does. It prints and saves (bench/results/batch_landscape_<tag>.json):
- the count of unknowns (pixels of N images) against the constraints the update carries (non-zero
  parameter entries, and two BN statistics per channel per layer);
- every objective term and the held-out BN mismatch per layer at the prior start, along the straight
  line from the prior to the true images (t = 0 ... 1), at the true images, and at a reconstruction;
- the attacker's labels against the true ones (as class counts).

If the objective is lowest at the true images and falls along the line, a failed attack is an
optimisation failure (more iterations, a better start); if the true images are not a minimum, the
objective itself cannot single them out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import ROOT, save


def slots(gt, steps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The true images and labels in the attacker's dummy slots (first epoch: step k's images go where step k's slots are)."""
    n = gt.images.shape[0]
    x = torch.empty_like(gt.images)
    y = torch.empty(n, dtype=torch.long)
    seen = torch.zeros(n, dtype=torch.bool)
    for slot_idx, pos in zip(steps, gt.step_positions):
        fresh = ~seen[slot_idx]
        x[slot_idx[fresh]] = gt.images[pos[fresh]]
        y[slot_idx[fresh]] = gt.labels[pos[fresh]].long()
        seen[slot_idx] = True
    if not seen.all():
        raise SystemExit("the client's steps do not cover every image")
    return x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--client", type=int, required=True)
    p.add_argument("--round", type=int, default=-1)
    p.add_argument("--config", default=str(ROOT / "configs" / "attack" / "batch.yaml"))
    p.add_argument("--recon", default=None, help="an attack.py output folder: its reconstruction is evaluated too")
    p.add_argument("--tag", default=None)
    p.add_argument("--points", type=int, default=6, help="points on the line from the prior to the truth")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from federation.run_layout import RunLayout
    from inversion.labels import choose_labels, count_accuracy
    from inversion.objective import Objective
    from leakage.ground_truth import load_ground_truth
    from pipelines.attack_setup import attacker_knowledge
    from pipelines.attack_plan import attack_config
    from safetensors.torch import load_file

    layout = RunLayout(Path(args.run))
    rnd = args.round if args.round >= 0 else max(r for r, _, _ in layout.updates())
    update = layout.update(rnd, args.client)
    cfg = attack_config(args.config, ["logging.progress=false", "logging.wandb=false", *args.overrides])
    kn = attacker_knowledge(cfg, update)
    obj = Objective(kn, cfg.objective, batch_seed=cfg.optim.seed, vectorize=False)
    gt = load_ground_truth(layout, rnd, args.client)
    x_true, y_true = slots(gt, obj.steps)
    choice = choose_labels(cfg.labels.strategy, kn, obj.model, obj.proc)
    y_att = choice.fixed if choice.fixed is not None else choice.start
    start = kn.prior.expand_as(x_true).clone()

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.enable_grad():
            _, parts = obj(x[None].requires_grad_(True), y[None])
        out = {name: float(v) for name, v in zip(obj.names, parts[0].detach())}
        if obj.heldout_layers:
            out["heldout_per_layer"] = out["bn_holdout"] / obj.heldout_layers
        return out

    line = []
    for i in range(args.points):
        t = i / max(1, args.points - 1)
        line.append({"t": round(t, 3), **evaluate(start + t * (x_true - start), y_true)})
    result = {
        "update": str(update), "config": args.config, "overrides": args.overrides,
        "num_images": int(x_true.shape[0]), "batch_size": obj.proc.batch_size, "local_steps": obj.proc.local_steps,
        "unknowns": int(x_true.numel()),
        "update_entries": int(sum(int((v != 0).sum()) for k, v in kn.update.items() if k in obj.params0)),
        "bn_statistics": int(sum(2 * int(kn.global_state[k].numel()) for k in kn.global_state if k.endswith("running_mean"))),
        "labels": {"attacker": y_att.tolist() if y_att is not None else None, "true": y_true.tolist(),
                   "count_accuracy": count_accuracy(y_att, y_true, kn.spec.num_classes) if y_att is not None else None},
        "at_start": line[0], "at_truth": line[-1], "line": line,
    }
    if y_att is not None:
        from inversion.labels import assign_labels

        # the truth under the attacker's labels: each true image gets one of them, its own class where the counts allow
        truth_probs = torch.nn.functional.one_hot(y_true, kn.spec.num_classes).float() * 0.98 + 0.01
        result["at_truth_attacker_labels"] = evaluate(x_true, assign_labels(truth_probs, y_att))
    if args.recon:
        rec = load_file(str(Path(args.recon) / "reconstruction.safetensors"))
        x_rec = rec["images"].float()
        y_rec = rec["labels"].long() if "labels" in rec and rec["labels"].dim() == 1 else y_att
        result["at_reconstruction"] = evaluate(x_rec, y_rec)
    for name in ("at_start", "at_truth", "at_truth_attacker_labels", "at_reconstruction"):
        if name in result:
            print(f"{name:26s}", "  ".join(f"{k} {v:.4g}" for k, v in result[name].items()))
    print("line prior -> truth:", "  ".join(f"t={r['t']}: {r.get('heldout_per_layer', float('nan')):.3f}" for r in line), "(held-out BN error per layer)")
    print(f"unknowns {result['unknowns']}, update entries {result['update_entries']}, BN statistics {result['bn_statistics']}")
    save(f"batch_landscape_{args.tag or f'client{args.client}'}", result)


if __name__ == "__main__":
    main()
