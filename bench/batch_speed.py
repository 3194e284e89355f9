"""Time per iteration of the batch attack (configs/attack/batch.yaml: update matching through the replay,
2 restarts) against the default attack (BN statistics only, 4 restarts) on the same multi-image update,
measured in one run, alternately, after a warm-up (compilation excluded): the ratio BENCHMARKS.md reports.

    python -m bench.batch_speed --run RUN --client 2 [--iterations 20] [--repeats 2]
"""
from __future__ import annotations

import statistics

from bench.common import ROOT, device_name, save, target_parser


def seconds_per_iteration(update, config: str, iterations: int, overrides: list[str]) -> tuple[float, int, bool]:
    """(seconds per iteration after the first logged step, restarts, compiled) of one attack run."""
    from pipelines.attack_setup import attacker_knowledge, run_attack
    from pipelines.attack_plan import attack_config

    cfg = attack_config(config, [f"optim.iterations={iterations}", "logging.progress=false", "logging.wandb=false",
                                     "logging.log_every=1", "escalation.enabled=false", *overrides])
    result, attack = run_attack(attacker_knowledge(cfg, update), cfg)
    trace = attack.objective_trace  # (step, seconds, best objective), every log_every steps
    (s0, t0, _), (s1, t1, _) = trace[len(trace) // 4], trace[-1]  # the first quarter holds any compilation
    return (t1 - t0) / (s1 - s0), cfg.optim.restarts, cfg.optim.compile


def flops_per_iteration(update, config: str, overrides: list[str]) -> float:
    """Floating-point operations of one iteration (objective and its image gradient, all restarts), counted
    by torch's FlopCounterMode on an eager objective (convolutions and matmuls: what a GPU spends its time on)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.attack_setup import attacker_knowledge, build_attack
    from pipelines.attack_plan import attack_config

    cfg = attack_config(config, ["optim.compile=false", "logging.progress=false", "logging.wandb=false", *overrides])
    attack = build_attack(attacker_knowledge(cfg, update), cfg)
    with FlopCounterMode(display=False) as counter:
        total, _ = attack.objective(attack.images, attack.label_input().detach())
        total.sum().backward()
    return float(counter.get_total_flops())


def main() -> None:
    p = target_parser(__doc__)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from common.config_loader import load  # noqa: F401  (imported before timing)
    from federation.run_layout import RunLayout
    from pathlib import Path

    run = Path(args.run)
    last = max(r for r, _, _ in RunLayout(run).updates())
    update = RunLayout(run).update(last, args.client)
    configs = {"default": str(ROOT / "configs" / "attack" / "default.yaml"), "batch": str(ROOT / "configs" / "attack" / "batch.yaml")}
    times: dict[str, list[float]] = {k: [] for k in configs}
    info = {}
    for _ in range(args.repeats):
        for name, path in configs.items():
            t, restarts, compiled = seconds_per_iteration(update, path, args.iterations, args.overrides)
            times[name].append(t)
            info[name] = {"restarts": restarts, "compile": compiled}
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {name: flops_per_iteration(update, path, args.overrides) for name, path in configs.items()}
    save(f"batch_speed_client{args.client}", {
        "update": str(update), "device": device_name("cpu"), "iterations": args.iterations, "repeats": args.repeats,
        "seconds_per_iteration": {k: round(v, 4) for k, v in med.items()},
        "seconds_per_restart_iteration": {k: round(med[k] / info[k]["restarts"], 4) for k in med},
        "settings": info, "all": times, "gflop_per_iteration": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "ratio_per_iteration": round(med["batch"] / med["default"], 2),
        "ratio_per_restart_iteration": round((med["batch"] / info["batch"]["restarts"]) / (med["default"] / info["default"]["restarts"]), 2),
    })


if __name__ == "__main__":
    main()
