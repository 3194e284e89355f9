"""(a) The attack LightningModule's time per iteration against a minimal plain-PyTorch loop of the
same objective on the same update: Lightning's overhead. Interleaved repeats, medians, one ratio.

    python -m bench.attack_overhead                      # default high-risk client, default attack
    python -m bench.attack_overhead --iterations 300 --repeats 5
"""
from __future__ import annotations

import math
import time

import torch

from bench.common import device_name, load_target, save, target_parser


def plain_loop(attack, iterations: int) -> float:
    """Seconds per iteration of Adam + warm-up/cosine + clamp + best-by-objective, no framework."""
    from inversion.attack_module import warmup_cosine

    cfg = attack.optim_cfg
    images = attack.images.detach().clone().requires_grad_(True)
    labels = attack.label_input().detach()
    opt = torch.optim.Adam([images], lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup, iterations, cfg.schedule))
    best = torch.full((images.shape[0],), math.inf)
    best_images = images.detach().clone()
    objective = attack.objective
    start = time.perf_counter()
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        total, _ = objective(images, labels)
        values = total.detach()
        finite = torch.isfinite(values)
        better = finite & (values < best)
        best[better] = values[better]
        best_images[better] = images.detach()[better]
        torch.where(finite, total, torch.zeros_like(total)).sum().backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            images.clamp_(0, 1)
    return (time.perf_counter() - start) / iterations


def lightning_loop(knowledge, cfg) -> float:
    from pipelines.attack_setup import run_attack

    result, attack = run_attack(knowledge, cfg)
    return attack.seconds / result.iterations


def main() -> None:
    p = target_parser(__doc__)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="attack config overrides")
    args = p.parse_args()
    from pipelines.attack_setup import build_attack

    update, cfg, knowledge = load_target(args, [f"optim.iterations={args.iterations}"])
    lightning_loop(knowledge, cfg)  # warm-up (allocator, compile caches)
    plain, light = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(build_attack(knowledge, cfg), args.iterations))
        light.append(lightning_loop(knowledge, cfg))
    plain_s, light_s = sorted(plain)[len(plain) // 2], sorted(light)[len(light) // 2]
    save("attack_overhead", {
        "device": device_name(cfg.accelerator), "update": str(update), "iterations": args.iterations, "repeats": args.repeats,
        "objective": [k for k, v in cfg.objective.items() if float((v or {}).get("weight", 1.0)) > 0], "plain_s_per_iter": round(plain_s, 5), "lightning_s_per_iter": round(light_s, 5),
        "ratio_lightning_over_plain": round(light_s / plain_s, 3), "all_plain": [round(v, 5) for v in plain],
        "all_lightning": [round(v, 5) for v in light],
    })


if __name__ == "__main__":
    main()
