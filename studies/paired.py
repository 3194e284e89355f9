"""The accuracy cost of a defence, paired by seed: two sets of finished federations, one number per seed each.

Runs with the same seed share the split, the initial model and the shuffling, so the defence's cost is the
mean of the per-seed differences with a paired t-interval (Welch's unpaired test throws that pairing away and
called a significant cost "not significant" before, issue 41). The two sets are told apart by their resolved
configs, and what differs between the paired configs is printed, so a reader sees what was compared.

    python -m studies.paired 'runs/studies/fedbn/train/*' 'runs/dp_clip/seed*' --where fl.bn_buffers=shared
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from common.config_loader import get_dotted
from common.errors import UserError, run_cli
from federation.run_files import read_metrics
from federation.run_layout import RunLayout


@dataclasses.dataclass
class Paired:
    seeds: list[int]
    baseline: list[float]
    defended: list[float]
    mean: float  # mean of defended - baseline
    low: float
    high: float
    p: float  # two-sided paired t-test

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_difference(baseline: dict[int, float], defended: dict[int, float], level: float = 0.95) -> Paired:
    """defended - baseline over the seeds both have: mean, t-interval and two-sided p of the paired t-test."""
    seeds = sorted(set(baseline) & set(defended))
    if len(seeds) < 2:
        raise UserError(f"a paired comparison needs at least 2 seeds in both sets, got {len(seeds)} in common")
    diffs = [defended[s] - baseline[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        low = high = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Paired(seeds, [baseline[s] for s in seeds], [defended[s] for s in seeds], mean, low, high, p)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def finished_runs(pattern: str, where: list[tuple[str, str]]) -> dict[int, tuple[Path, dict[str, Any], float]]:
    """seed -> (run, resolved config, final test accuracy) of the complete runs matching ``pattern`` and ``where``."""
    found: dict[int, tuple[Path, dict[str, Any], float]] = {}
    for path in sorted(Path(p) for p in glob.glob(pattern)):
        run = RunLayout(path)
        if not run.is_complete():
            continue
        config = yaml.safe_load(run.config.read_text())
        if any(str(get_dotted(config, key)) != value for key, value in where):
            continue
        seed = int(config["seed"])
        if seed in found:
            raise UserError(f"{pattern}: seed {seed} twice ({found[seed][0]} and {path}): narrow the set with --where")
        found[seed] = (path, config, read_metrics(run.metrics)[-1].test_accuracy)
    if not found:
        raise UserError(f"{pattern}: no complete run matches{' ' + ' '.join(f'{k}={v}' for k, v in where) if where else ''}")
    return found


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Config keys whose values differ between two runs (their out and seed apart)."""
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if k not in ("out", "seed") and fa.get(k) != fb.get(k)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Final test accuracy of two sets of federations, paired by seed.")
    parser.add_argument("baseline", help="glob of the baseline's run folders (quote it)")
    parser.add_argument("defended", help="glob of the defended runs' folders")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only runs whose resolved config has this value (dotted key; both sets; repeatable)")
    args = parser.parse_args(argv)
    where = []
    for item in args.where:
        if "=" not in item:
            raise UserError(f"--where {item}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        where.append((key, value))
    base = finished_runs(args.baseline, where)
    defended = finished_runs(args.defended, where)
    result = paired_difference({s: v[2] for s, v in base.items()}, {s: v[2] for s, v in defended.items()})
    first = result.seeds[0]
    changed = differences(base[first][1], defended[first][1])
    print(f"paired by seed, n = {result.n} (seeds {', '.join(map(str, result.seeds))})")
    print("the defended runs differ in: " + ("; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "nothing"))
    for s, a, b in zip(result.seeds, result.baseline, result.defended):
        print(f"  seed {s}: {a:.3f} -> {b:.3f} ({b - a:+.3f})")
    print(f"baseline {sum(result.baseline) / result.n:.3f}, defended {sum(result.defended) / result.n:.3f}; difference "
          f"{result.mean:+.3f}, 95% interval {result.low:+.3f} to {result.high:+.3f}, paired t-test p = {result.p:.3g}")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
