"""(speed vs exactness) Channels-last and mixed precision for the attack objective, double backward included.

For each variant the objective and its gradient with respect to the dummy images are computed at the
same point as in float32 (contiguous), and reported as time per step and relative error against
float32. A variant is worth keeping only where it is faster *and* its gradient error is small next to
the attack's own noise (Adam normalises step sizes, so relative errors up to ~1e-2 hardly move it).

    python -m bench.precision                                      # update matching (double backward) on the high-risk client
    python -m bench.precision --tag bn_only objective.update_matching.weight=0   # BN statistics only
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time

import torch

from bench.common import device_name, load_target, save, target_parser


def _evaluate(objective, images: torch.Tensor, labels: torch.Tensor, autocast: torch.dtype | None, device: str):
    x = images.detach().clone().requires_grad_(True)
    ctx = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with ctx:
        total, _ = objective(x, labels)
    total.float().sum().backward()
    return total.detach().float(), x.grad.detach().float()


def main() -> None:
    p = target_parser(__doc__)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tag", default="", help="results go to bench/results/precision_TAG.json")
    p.add_argument("overrides", nargs="*", help="attack config overrides (default adds update matching, weight 1)")
    args = p.parse_args()
    from pipelines.attack_setup import build_attack

    update, cfg, knowledge = load_target(args, ["objective.update_matching.weight=1.0"])
    device = "cuda" if cfg.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    variants = [("float32", None, False), ("channels_last", None, True), ("bfloat16 autocast", torch.bfloat16, False)]
    if device == "cuda":
        variants += [("float16 autocast", torch.float16, False), ("bfloat16 autocast + channels_last", torch.bfloat16, True)]
    rows, reference = [], None
    for name, dtype, cl in variants:
        attack = build_attack(knowledge, dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, memory_format="channels_last" if cl else "contiguous")))
        attack.to(device)
        objective = attack.objective.to(device)
        images = attack.images.detach().to(device)
        labels = attack.label_input().detach().to(device)
        value, grad = _evaluate(objective, images, labels, dtype, device)  # warm-up, and the numbers compared
        times = []
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            _evaluate(objective, images, labels, dtype, device)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        if reference is None:
            reference = (value, grad)
        v0, g0 = reference
        rows.append({
            "variant": name, "s_per_step": round(statistics.median(times), 5),
            "objective_rel_error": float(((value - v0).abs() / v0.abs().clamp_min(1e-12)).max()),
            "grad_rel_error": float((grad - g0).norm() / g0.norm().clamp_min(1e-30)),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(grad.flatten(), g0.flatten(), dim=0)),
        })
        print(rows[-1], flush=True)
    base = rows[0]["s_per_step"]
    for r in rows:
        r["speedup_vs_float32"] = round(base / r["s_per_step"], 3)
    save("precision" + (f"_{args.tag}" if args.tag else ""), {"device": device_name(cfg.accelerator), "update": str(update), "objective": {k: v.get("weight") for k, v in cfg.objective.items()},
                       "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
