"""Study pictures: grouped bars, privacy-utility twin axes, batch-size heatmap, per-round bands, galleries.

Every plot shows the mean over seeds (and images, where a row is per image) with a 95% t-interval.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from studies.tables import group, mean_ci, per_unit, per_update_means  # noqa: E402


def _order(values: list[Any]) -> list[Any]:
    try:
        return sorted(values, key=lambda v: float(v))
    except (TypeError, ValueError):
        return list(dict.fromkeys(values))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def grouped_bars(rows: list[dict[str, Any]], x: str, hue: str | None, metric: str, path: Path, title: str = "",
                 x_order: list[Any] | None = None) -> Path:
    xs = x_order or _order(list(dict.fromkeys(r.get(x) for r in rows)))
    hues = _order(list(dict.fromkeys(r.get(hue) for r in rows))) if hue else [None]
    groups = group(rows, [x, hue] if hue else [x])
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(xs) + 2), 3.6))
    for j, h in enumerate(hues):
        stats = [mean_ci(r.get(metric) for r in groups.get((v, h) if hue else (v,), [])) for v in xs]
        means = [s[0] for s in stats]
        errs = [0 if math.isnan(s[2]) else s[2] for s in stats]
        pos = [i + (j - (len(hues) - 1) / 2) * width for i in range(len(xs))]
        ax.bar(pos, means, width, yerr=errs, capsize=3, label=f"{hue} = {h}" if hue else None)
        # an inconclusive cell (the attack did not converge) is no protection: its count stands on the bar
        unsure = [sum(r.get("verdict") == "inconclusive" for r in groups.get((v, h) if hue else (v,), [])) for v in xs]
        for p_, m_, k in zip(pos, means, unsure):
            if k and not math.isnan(m_):
                ax.annotate(f"{k} inconcl.", (p_, m_), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=20)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.axhline(0, color="black", linewidth=0.5)
    if hue:
        ax.legend(fontsize=8)
    ax.set_title(title or f"{metric} by {x} (mean, 95% CI over seeds)", fontsize=9)
    return _save(fig, path)


def privacy_utility(rows: list[dict[str, Any]], x: str, path: Path, metric: str = "rdlv", x_label: str | None = None,
                    reference: dict[str, list[float]] | None = None, log_x: bool = False) -> Path:
    """Leakage and test accuracy against defence strength, on twin y axes."""
    present = _order(list(dict.fromkeys(r.get(x) for r in rows if r.get(x) is not None)))
    xs = [v for v in present if math.isfinite(float(v))]  # epsilon = inf (no noise) has no place on the axis
    skipped = [v for v in present if v not in xs]
    groups = group(rows, [x])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    # bands over attacked updates, the independent units (an update's attack seeds averaged first; its accuracy once)
    leak = [mean_ci(r.get(metric) for r in per_update_means(groups[(v,)], metric)) for v in xs]
    acc = [mean_ci(r.get("test_accuracy") for r in per_unit(groups[(v,)], "test_accuracy")) for v in xs]
    xv = [float(v) for v in xs]
    _line_band(ax, xv, leak, "tab:red", f"{metric} (ours)", bounds=METRIC_BOUNDS.get(metric, (-math.inf, math.inf)))
    _mark_inconclusive(ax, rows, x, metric)
    ax.set_xlabel(x_label or x)
    ax.set_ylabel(metric, color="tab:red")
    ax2 = ax.twinx()
    _line_band(ax2, xv, acc, "tab:blue", "test accuracy (ours)", bounds=(0.0, 1.0))
    ax2.set_ylabel("global test accuracy", color="tab:blue")
    if reference:
        rx = reference.get("x", [])
        if "rdlv" in reference and metric == "rdlv":
            ax.plot(rx, reference["rdlv"], "r:", marker="x", label="paper client 9 RDLV")
        if "test_accuracy" in reference:
            ax2.plot(rx, reference["test_accuracy"], "b:", marker="x", label="paper test accuracy")
    if log_x:
        # linear only below the smallest positive point: with matplotlib's default (1) every point under 1
        # (z = 0.001, 0.01, 0.1) crowds onto zero; this way each decade gets its own width
        positive = [v for v in xv if v > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="best")
    note = f" ({x_label or x} = {', '.join(map(str, skipped))} not drawn)" if skipped else ""
    ax.set_title(f"privacy-utility: {metric} and accuracy vs {x_label or x}{note}", fontsize=9)
    return _save(fig, path)


# the range of bounded metrics: their interval bands are clipped to it
METRIC_BOUNDS = {"ssim": (-1.0, 1.0), "test_accuracy": (0.0, 1.0), "label_accuracy": (0.0, 1.0), "identification_top1": (0.0, 1.0)}


def band_limits(stats: list[tuple[float, float, float, int]], bounds: tuple[float, float] = (-math.inf, math.inf)
                ) -> tuple[list[float], list[float]]:
    """Lower and upper edge of the 95% band, clipped to ``bounds`` (an accuracy is never above 1). A point
    without values (every attack of a cell failed: mean NaN) stays NaN, a gap in the band, rather than
    being clipped to the whole range (max(-1, nan) is -1 in Python)."""
    lo, hi = bounds
    lows, highs = [], []
    for mean, _, half, _ in stats:
        half = 0.0 if math.isnan(half) else half
        if math.isnan(mean):
            lows.append(math.nan)
            highs.append(math.nan)
        else:
            lows.append(max(lo, mean - half))
            highs.append(min(hi, mean + half))
    return lows, highs


def _line_band(ax, xs: list[float], stats: list[tuple[float, float, float, int]], color: str, label: str,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """Mean and 95% t-interval, clipped to the metric's range."""
    ax.plot(xs, [s[0] for s in stats], color=color, marker="o", label=label)
    lows, highs = band_limits(stats, bounds)
    ax.fill_between(xs, lows, highs, color=color, alpha=0.2)


def _mark_inconclusive(ax, rows: list[dict[str, Any]], x: str, metric: str) -> None:
    """Every inconclusive cell (the attack did not converge) drawn on its own, so that its low leakage is never
    read as protection."""
    pts = [(float(r[x]), float(r[metric])) for r in rows if r.get("verdict") == "inconclusive" and r.get(x) is not None
           and r.get(metric) is not None and math.isfinite(float(r[x])) and math.isfinite(float(r[metric]))]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", color="black", s=36, zorder=5,
                   label=f"inconclusive: attack did not converge ({len(pts)})")


def heatmap(rows: list[dict[str, Any]], path: Path, metric: str = "rdlv", x: str = "num_images", y: str = "batch_size") -> Path:
    xs = _order(list({r[x] for r in rows}))
    ys = _order(list({r[y] for r in rows}))
    groups = group(rows, [y, x])
    grid = [[mean_ci(r.get(metric) for r in groups.get((yy, xx), []))[0] for xx in xs] for yy in ys]
    fig, ax = plt.subplots(figsize=(1.1 * len(xs) + 2.5, 0.9 * len(ys) + 1.8))
    im = ax.imshow(grid, cmap="magma", aspect="auto", origin="lower")
    unsure = [[sum(r.get("verdict") == "inconclusive" for r in groups.get((yy, xx), [])) for xx in xs] for yy in ys]
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            text = ("-" if math.isnan(v) else f"{v:.2f}") + (f"\n{unsure[i][j]} inconcl." if unsure[i][j] else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and v < (max(max(r) for r in grid) + min(min(r) for r in grid)) / 2 else "black")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs])
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([str(v) for v in ys])
    ax.set_xlabel("local images" if x == "num_images" else x)
    ax.set_ylabel("batch size" if y == "batch_size" else y)
    fig.colorbar(im, ax=ax, label=f"{metric} (mean over seeds)")
    ax.set_title(f"leakage ({metric}) over batch size x local images", fontsize=9)
    return _save(fig, path)


def per_round(rows: list[dict[str, Any]], path: Path, metric: str = "rdlv") -> Path:
    clients = _order(list({r["client"] for r in rows}))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for c in clients:
        sel = [r for r in rows if r["client"] == c]
        rounds = _order(list({r["round"] for r in sel}))
        groups = group(sel, ["round"])
        stats = [mean_ci(r.get(metric) for r in groups[(k,)]) for k in rounds]
        meta = sel[0]
        _line_band(ax, [float(k) for k in rounds], stats, f"C{clients.index(c) % 10}",
                   f"client {c} ({meta.get('num_images')} img, batch {meta.get('batch_size')})",
                   bounds=METRIC_BOUNDS.get(metric, (-math.inf, math.inf)))
    _mark_inconclusive(ax, rows, "round", metric)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("FL round")
    ax.set_ylabel(metric)
    # leakage means something only next to what the model can do: its test accuracy in the same figure
    acc_rows = {(r["seed"], r["round"]): r.get("test_accuracy") for r in rows if r.get("test_accuracy") not in (None, "")}
    if acc_rows:
        rounds = _order(list({k[1] for k in acc_rows}))
        acc = [mean_ci(v for (_, rnd), v in acc_rows.items() if rnd == k) for k in rounds]
        acc_ax = ax.twinx()
        _line_band(acc_ax, [float(k) for k in rounds], acc, "gray", "test accuracy after the round", bounds=(0.0, 1.0))
        acc_ax.set_ylim(0, 1.02)
        acc_ax.set_ylabel("test accuracy", color="gray")
        acc_ax.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{metric} per round per client (mean, 95% CI over seeds)", fontsize=9)
    return _save(fig, path)


def gallery(pairs: list[tuple[torch.Tensor, torch.Tensor, str]], path: Path, columns: int = 8) -> Path:
    """(training image, its best reconstruction, caption) pairs, side by side."""
    n = len(pairs)
    cols = min(columns, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.25 * cols, 2.7 * rows), squeeze=False)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        for off in (0, 1):
            axes[2 * r + off][c].axis("off")
        if k >= n:
            continue
        orig, rec, caption = pairs[k]
        for off, img in ((0, orig), (1, rec)):
            ax = axes[2 * r + off][c]
            img = img.float().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
        axes[2 * r][c].set_title("train", fontsize=6)
        axes[2 * r + 1][c].set_title(caption, fontsize=6)
    return _save(fig, path)
