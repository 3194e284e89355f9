"""Every defence on one set of axes: what it costs (test accuracy, paired by seed with its undefended federation)
against what it leaves (the share of distinct private images that leak), each with its 95% interval.

Reads the studies' results.csv in docs/results/ (one point per defence, the 1-image client's face as the image);
the defence and its baseline are the same federations on the same seeds, so the accuracy cost is the mean of the
per-seed differences (``studies.paired``). A leak rate counts leaks shown: where attacks were inconclusive it is a
lower bound, and the label says how many were.

    python -m bench.defences_figure            # -> docs/results/defences.png, and the points as a table
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from bench.headlines import RESULTS, by_seed, image_verdicts
from studies.paired import paired_difference
from studies.tables import clopper_pearson, read_rows


@dataclasses.dataclass
class Point:
    label: str
    cost: float  # accuracy difference to the undefended federation, paired by seed
    low: float
    high: float
    leaks: int  # distinct images shown
    images: int
    inconclusive: int
    seeds: int

    @property
    def rate(self) -> tuple[float, float, float]:
        lo, hi = clopper_pearson(self.leaks, self.images)
        return self.leaks / self.images, lo, hi


def point(label: str, study: str, defended: Callable[[dict[str, Any]], bool], base_study: str,
          baseline: Callable[[dict[str, Any]], bool], client: int = 3) -> Point:
    rows = [r for r in read_rows(RESULTS / study / "results.csv") if int(r["client"]) == client and defended(r)]
    base = [r for r in read_rows(RESULTS / base_study / "results.csv") if int(r["client"]) == client and baseline(r)]
    paired = paired_difference(by_seed(base), by_seed(rows))
    verdicts = image_verdicts(study, rows)
    return Point(label, paired.mean, paired.low, paired.high, verdicts.count("leaks"), len(verdicts),
                 verdicts.count("inconclusive"), paired.n)


def undefended(label: str, study: str, keep: Callable[[dict[str, Any]], bool], client: int = 3) -> Point:
    rows = [r for r in read_rows(RESULTS / study / "results.csv") if int(r["client"]) == client and keep(r)]
    verdicts = image_verdicts(study, rows)
    return Point(label, 0.0, 0.0, 0.0, verdicts.count("leaks"), len(verdicts), verdicts.count("inconclusive"),
                 len({r["seed"] for r in rows}))


def points() -> list[Point]:
    clean = lambda r: r["sigma0"] == 0  # noqa: E731
    shared = lambda r: r["bn"] == "shared"  # noqa: E731
    out = [
        undefended("undefended (default federation)", "sigma0_seeds", clean),
        point("paper's filter, sigma0 = 30", "sigma0_seeds", lambda r: r["sigma0"] == 30, "sigma0_seeds", clean),
        point("DP as first calibrated: C = 2 on the whole update, z = 0 (adaptive attacker)", "dp_seeds",
              lambda r: r["noise_multiplier"] == 0 and r["attacker"] == "adaptive", "sigma0_seeds", clean),
        point("DP as first calibrated: z = 2 (epsilon 9, adaptive attacker)", "dp_seeds",
              lambda r: r["noise_multiplier"] == 2 and r["attacker"] == "adaptive", "sigma0_seeds", clean),
    ]
    if (RESULTS / "fedbn" / "results.csv").is_file():
        out += [undefended("undefended (FedBN study's federation)", "fedbn", shared),
                point("FedBN: BN statistics kept on the client", "fedbn", lambda r: r["bn"] == "local", "fedbn", shared)]
    if (RESULTS / "dp_deployed" / "results.csv").is_file():
        out.append(point("DP-FedAvg: weights clipped at the median norm, z = 0", "dp_deployed", lambda r: True, "fedbn", shared))
    return out


def table(pts: list[Point]) -> str:
    lines = ["| defence | accuracy cost, paired (95% t-interval) | seeds | distinct faces that leak (95% CP) | inconclusive |",
             "|---|---|---|---|---|"]
    for p in pts:
        rate, lo, hi = p.rate
        cost = "baseline" if p.low == p.high == p.cost == 0 else f"{p.cost:+.3f} ({p.low:+.3f} to {p.high:+.3f})"
        lines.append(f"| {p.label} | {cost} | {p.seeds} | {p.leaks} of {p.images} ({lo:.2f}-{hi:.2f}) | {p.inconclusive} |")
    return "\n".join(lines)


def figure(pts: list[Point], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    for i, p in enumerate(pts):
        rate, lo, hi = p.rate
        marker = "D" if p.cost == p.low == p.high == 0 else "o"
        hollow = p.inconclusive * 2 > p.images  # mostly inconclusive: the rate is a loose lower bound, drawn hollow
        ax.errorbar(rate, p.cost, xerr=[[rate - lo], [hi - rate]], yerr=[[p.cost - p.low], [p.high - p.cost]], fmt=marker,
                    capsize=3, color=f"C{i}", mfc="none" if hollow else f"C{i}", ms=8,
                    label=f"{p.label} ({p.inconclusive} of {p.images} faces inconclusive)" if p.inconclusive else p.label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("share of distinct private faces shown leaking (lower bound where attacks were inconclusive)")
    ax.set_ylabel("test accuracy minus the undefended federation's (paired by seed)")
    ax.set_title("Privacy-utility: every defence, the 1-image client, 95% intervals\n(hollow: most attacks inconclusive, "
                 "so the leak rate is a loose lower bound)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Every defence's accuracy cost against its leak rate, on one figure.")
    parser.add_argument("--out", default=str(RESULTS / "defences.png"), help="the figure [default: docs/results/defences.png]")
    args = parser.parse_args(argv)
    pts = points()
    print(table(pts))
    print(f"figure: {figure(pts, Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
