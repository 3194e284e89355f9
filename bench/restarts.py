"""(c) R restarts batched in one tensor (torch.func.vmap) against R sequential restarts, R = 1, 4, 8.

Every configuration runs once per repeat, the repeats interleaved, and the medians are compared:
on a shared machine the speed drifts over minutes, and interleaving spreads that drift over all
configurations instead of charging it to whichever ran last.

    python -m bench.restarts                          # default attack on the default high-risk client
    python -m bench.restarts --config configs/attack/multistep.yaml --run runs/convnet --client 2
"""
from __future__ import annotations

import statistics

from bench.common import device_name, load_target, save, target_parser


def per_iteration(knowledge, cfg, restarts: int, vectorize: bool) -> float:
    import dataclasses

    from pipelines.attack_setup import run_attack

    c = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, restarts=restarts, vectorize=vectorize))
    result, attack = run_attack(knowledge, c)
    return attack.seconds / result.iterations


def main() -> None:
    p = target_parser(__doc__)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--restarts", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every configuration (medians are reported)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    update, cfg, knowledge = load_target(args, [f"optim.iterations={args.iterations}"])
    per_iteration(knowledge, cfg, 1, True)  # warm-up
    configs = [(1, True)] + [(r, v) for r in args.restarts for v in (True, False) if (r, v) != (1, True)]
    times: dict[tuple[int, bool], list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for r, vectorize in configs:
            times[(r, vectorize)].append(per_iteration(knowledge, cfg, r, vectorize))
    med = {c: statistics.median(t) for c, t in times.items()}
    one = med[(1, True)]
    rows = []
    for r in args.restarts:
        batched, sequential = med[(r, True)], med[(r, False)]  # sequential: the same R restarts one after another
        rows.append({"restarts": r, "batched_s_per_iter": round(batched, 5), "sequential_s_per_iter": round(sequential, 5),
                     "batched_over_one": round(batched / one, 3), "sequential_over_batched": round(sequential / batched, 3),
                     "batched_runs": [round(t, 5) for t in times[(r, True)]], "sequential_runs": [round(t, 5) for t in times[(r, False)]]})
    save("restarts", {"device": device_name(cfg.accelerator), "update": str(update), "iterations": args.iterations,
                      "repeats": args.repeats, "one_restart_s_per_iter": round(one, 5), "rows": rows})


if __name__ == "__main__":
    main()
