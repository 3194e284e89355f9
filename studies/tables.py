"""Summaries of a study table: mean, std and 95% confidence intervals over seeds, as markdown."""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from scipy import stats


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(v: str) -> Any:
    if v in ("", "None"):
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, std, half-width of the t-interval, n) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = sum(vals) / n
    if n == 1:
        return mean, 0.0, math.nan, 1
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, half, n


def _natural(v: Any) -> tuple:
    """Numbers in numeric order (5 before 10), then everything else as text."""
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def group(rows: list[dict[str, Any]], keys: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[tuple(row.get(k) for k in keys)].append(row)
    return out


# columns that belong to the attacked update (its training and its filter), not to one attack of it: with several
# attack seeds per update they repeat, and counting them once per attack would inflate n
PER_UPDATE = frozenset({"test_accuracy", "final_test_accuracy", "epsilon", "noise_std", "num_images", "batch_size", "local_steps"})


def _update_key(row: dict[str, Any]) -> tuple | int:
    return (row.get("train_key"), row.get("round"), row.get("client")) if row.get("train_key") else id(row)


def by_update(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows of each attacked update (training run, round, client) together, in first-seen order."""
    groups: dict[tuple | int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[_update_key(row)].append(row)
    return list(groups.values())


# of those, the columns of the global model a training produced, not of one client's update: two clients attacked
# in one round of one training share them, so they count once per (training, round) or once per training
PER_ROUND = frozenset({"test_accuracy"})
PER_TRAINING = frozenset({"final_test_accuracy"})


def _unit_key(row: dict[str, Any], metric: str) -> tuple | int:
    """A prefix of the update's key (training run, round, client)."""
    key = _update_key(row)
    if not isinstance(key, tuple):
        return key
    return key[:1] if metric in PER_TRAINING else key[:2] if metric in PER_ROUND else key


def per_unit(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """``rows`` with one row per unit that ``metric`` belongs to (PER_UPDATE): per attacked update, and per
    training round (test accuracy) or training (final test accuracy) for the global model's accuracy."""
    if metric not in PER_UPDATE:
        return rows
    first: dict[tuple | int, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(_unit_key(row, metric), row)
    return list(first.values())


def per_update_means(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per attacked update, ``metric`` averaged over its attacks (attack seeds): the independent units
    for a test, since two attacks of one update share its training, its noise and its image."""
    if metric in PER_UPDATE:
        return per_unit(rows, metric)
    out = []
    for sel in by_update(rows):
        vals = [float(r[metric]) for r in sel if r.get(metric) is not None and math.isfinite(float(r[metric]))]
        out.append({**sel[0], metric: sum(vals) / len(vals) if vals else None})
    return out


def welch_difference(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean(a) - mean(b), the Welch-Satterthwaite interval's low and high ends, two-sided p): unequal variances,
    because a defence that breaks some federations widens the spread of its accuracies."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan, math.nan, math.nan, math.nan
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    diff = ma - mb
    se2 = va / na + vb / nb
    if se2 == 0:  # no spread on either side: t is undefined, and a point interval or p = 0 would read as certainty
        return diff, math.nan, math.nan, math.nan
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    p = 2 * float(stats.t.sf(abs(diff) / math.sqrt(se2), df))
    return diff, diff - half, diff + half, p


def difference_pivot(rows: list[dict[str, Any]], row_key: str, metric: str, baseline: Any, digits: int = 3,
                     row_order: list[Any] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per ``row_key`` value, ``metric``'s mean ± std and its difference to the ``baseline`` row
    with a 95% Welch interval and p, over attacked updates (an attack's number averaged over the update's attacks)."""
    rws = row_order or sorted({r.get(row_key) for r in rows}, key=_natural)
    cells = {k: per_update_means(sel, metric) for k, sel in group(rows, [row_key]).items()}  # per update within each row
    def values(r: Any) -> list[float]:
        return [float(x[metric]) for x in cells.get((r,), []) if x.get(metric) is not None and math.isfinite(float(x[metric]))]
    base = values(_match(baseline, rws))
    header = [row_key, f"{metric} (per update)", f"difference to {row_key} = {baseline} (95% Welch interval)", "p (Welch t)"]
    body = []
    for r in rws:
        vals = values(r)
        mean, std, _, n = mean_ci(vals)
        diff, lo, hi, p = welch_difference(vals, base)
        body.append([str(r), "n/a" if n == 0 else f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})",
                     "n/a" if math.isnan(diff) else f"{diff:+.{digits}f} (no spread on either side: no interval)" if math.isnan(lo)
                     else f"{diff:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})",
                     "n/a" if math.isnan(p) else f"{p:.3g}"])
    return header, body


def _match(label: Any, values: list[Any]) -> Any:
    """The row value a spec's baseline names (YAML may give "0" for the number 0)."""
    return next((v for v in values if str(v) == str(label)), label)


def pivot(rows: list[dict[str, Any]], row_key: str, col_key: str | None, metric: str, digits: int = 3,
          row_order: list[Any] | None = None, col_order: list[Any] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of ``metric`` as 'mean ± std (n=k)', rows = row_key values, columns = col_key values."""
    cols = col_order or sorted({r.get(col_key) for r in rows}, key=_natural) if col_key else [None]
    rws = row_order or sorted({r.get(row_key) for r in rows}, key=_natural)
    header = [row_key] + [f"{col_key} = {c}" if col_key else metric for c in cols]
    body = []
    # once per update within each cell: deduplicated before the split, an update attacked by two attackers (a column
    # each) would leave its accuracy in only one of the two columns
    cells = {k: per_unit(sel, metric) for k, sel in group(rows, [row_key] + ([col_key] if col_key else [])).items()}
    for r in rws:
        out = [str(r)]
        for c in cols:
            sel = cells.get((r, c) if col_key else (r,), [])
            mean, std, _, n = mean_ci(x.get(metric) for x in sel)
            out.append("n/a" if n == 0 else f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})")
        body.append(out)
    return header, body


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a rate of k successes in n trials."""
    if n == 0:
        return math.nan, math.nan
    alpha = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def verdict_cell(verdicts: list[Any]) -> str:
    """'k/n leak (95% CI lo-hi), m no leak found, i inconclusive': the leak rate over every attacked update (an
    inconclusive one is not a leak shown, so the rate is a lower bound while any are left) and the rest apart."""
    n = len(verdicts)
    if n == 0:
        return "n/a"
    leaks = sum(v == "leaks" for v in verdicts)
    clean = sum(v == "no leak found" for v in verdicts)
    lo, hi = clopper_pearson(leaks, n)
    return f"{leaks}/{n} leak ({lo:.2f}-{hi:.2f}), {clean} no leak found, {n - leaks - clean} inconclusive"


def per_update_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per attacked update (training run, round, client), its verdict combined over its attacks
    (``leakage.verdict.update_verdict``): the independent units when each update was attacked with several seeds."""
    from leakage.verdict import update_verdict

    return [{**sel[0], "verdict": update_verdict(r.get("verdict") for r in sel), "attacks": len(sel)} for sel in by_update(rows)]


def pools_attacks(rows: list[dict[str, Any]], keys: list[str]) -> bool:
    """Whether some cell of the layout ``keys`` holds several attacks of one update: attack seeds, or attackers
    that the layout puts in one cell. Then its attacks are not independent trials, and the updates are."""
    return any(len(u) > 1 for sel in group(rows, keys).values() for u in by_update(sel))


def verdict_pivot(rows: list[dict[str, Any]], row_key: str, col_key: str | None, row_order: list[Any] | None = None,
                  col_order: list[Any] | None = None, per_update: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the verdicts (leakage.verdict) per cell, in the layout of :func:`pivot`.

    ``per_update``: one trial per attacked update in each cell (:func:`per_update_verdicts` of the cell's attacks),
    combined after the split, so that two attackers of one update, shown in two columns, stay two trials."""
    cols = col_order or sorted({r.get(col_key) for r in rows}, key=_natural) if col_key else [None]
    rws = row_order or sorted({r.get(row_key) for r in rows}, key=_natural)
    header = [row_key] + [f"{col_key} = {c}" if col_key else "verdicts" for c in cols]
    cells = group(rows, [row_key] + ([col_key] if col_key else []))
    if per_update:
        cells = {k: per_update_verdicts(sel) for k, sel in cells.items()}
    body = [[str(r)] + [verdict_cell([x.get("verdict") for x in cells.get((r, c) if col_key else (r,), [])]) for c in cols] for r in rws]
    return header, body


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
