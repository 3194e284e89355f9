"""The headline numbers of docs/results.md, recomputed from the results.csv each one rests on.

Each headline is a small function that reads its study's CSV (``docs/results/<study>/results.csv``), computes its
numbers with the statistics the study report uses (``studies.tables``) and returns the sentence as the page prints
it. The check passes when every sentence is on the page (whitespace aside): a changed CSV or a reworded number
turns it red. ``tests/test_headlines.py`` runs it in CI.

    python -m bench.headlines            # check docs/results.md; exit 1 listing what is not on the page
    python -m bench.headlines --print    # the sentences as computed, to paste
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from studies.tables import clopper_pearson, mean_ci, per_unit, per_update_verdicts, read_rows, welch_difference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"

HEADLINES: dict[str, Callable[[], str]] = {}


def headline(fn: Callable[[], str]) -> Callable[[], str]:
    HEADLINES[fn.__name__] = fn
    return fn


def rows(study: str) -> list[dict[str, Any]]:
    return read_rows(RESULTS / study / "results.csv")


def leaks(sel: list[dict[str, Any]]) -> int:
    return sum(r["verdict"] == "leaks" for r in sel)


def accuracies(sel: list[dict[str, Any]]) -> list[float]:
    """The final test accuracy of each federation once (its attacks share it)."""
    return [float(r["final_test_accuracy"]) for r in per_unit(sel, "final_test_accuracy")]


def identified(sel: list[dict[str, Any]]) -> tuple[int, float]:
    """(images identified first among the pool, what reconstructions that know nothing would identify)."""
    return (round(sum(r["identification_top1"] * r["num_images"] for r in sel)),
            sum(r["identification_chance"] * r["num_images"] for r in sel))


def ci(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{lo:.2f}-{hi:.2f}"


def pm(values: list[float]) -> str:
    mean, std, _, _ = mean_ci(values)
    return f"{mean:.3f} ± {std:.3f}"


# ----------------------------------------------------------------------------- claim 1: the BN sources


@headline
def claim1_inferred_sources_leak() -> str:
    sel = [r for r in rows("bn_ablation") if r["bn_source"] in ("one_step", "multi_step") and r["update_matching"] == "off"]
    ssim = [r["ssim"] for r in sel]
    return (f"the sources that infer the batch statistics from the update leak on {leaks(sel)} of {len(sel)} attacks without "
            f"update matching (SSIM {min(ssim):.2f}-{max(ssim):.2f})")


# ----------------------------------------------------------------------------- claim 2: batch layout


@headline
def claim2_one_image_and_identification() -> str:
    data = rows("batch_layout")
    one = [r for r in data if r["num_images"] == 1]
    four, eight = ([r for r in data if r["num_images"] == n] for n in (4, 8))
    (k4, c4), (k8, c8) = identified(four), identified(eight)
    big = [r for r in data if r["num_images"] >= 4]
    count = {v: sum(r["verdict"] == v for r in big) for v in ("inconclusive", "leaks", "no leak found")}
    return (f"the 1-image client leaks on {leaks(one)} of {len(one)}. Of the {len(big)} attacks on clients with 4 or more images, "
            f"{sum(r['converged'] != 'True' for r in big)} did not converge ({count['inconclusive']} inconclusive, {count['leaks']} "
            f"leaking a black image) and {sum(r['converged'] == 'True' for r in big)} converged to no leak found; the 4- and 8-image "
            f"clients' images are identified far above chance ({k4} of {4 * len(four)} against {c4:.1f}, {k8} of {8 * len(eight)} "
            f"against {c8:.1f})")


# ----------------------------------------------------------------------------- claim 3: the paper's filter


@headline
def claim3_pooled_sweep_leaks_everywhere() -> str:
    data = rows("sigma0")
    ssim = [r["ssim"] for r in data]
    return (f"The face leaks on {leaks(data)} of {len(data)} updates (Clopper-Pearson {ci(leaks(data), len(data))}), at every "
            f"sigma0 up to {max(r['sigma0'] for r in data)}. All {sum(r['converged'] == 'True' for r in data)} attacks converged "
            f"(SSIM {min(ssim):.3f}-{max(ssim):.3f})")


@headline
def claim3_ten_seeds() -> str:
    data = rows("sigma0_seeds")
    clean, noisy = ([r for r in data if r["sigma0"] == s] for s in (0, 30))
    diff, lo, hi, _ = welch_difference(accuracies(noisy), accuracies(clean))
    up_noisy, up_clean = per_update_verdicts(noisy), per_update_verdicts(clean)
    return (f"The accuracy cost of sigma0 = 30 is {diff:+.3f} (95% Welch interval {lo:+.3f} to {hi:+.3f}). - The face still leaks "
            f"on {leaks(up_noisy)} of {len(up_noisy)} updates at sigma0 = 30 (Clopper-Pearson {ci(leaks(up_noisy), len(up_noisy))}), "
            f"against {leaks(up_clean)} of {len(up_clean)} without noise.")


@headline
def claim3_per_tensor_broken() -> str:
    data = rows("sigma0_per_tensor")
    noisy = [r for r in data if r["sigma0"] != 0]
    acc = accuracies(noisy)
    chance = "0.500" if all(a == 0.5 for a in acc) else "not all 0.500"
    inconclusive = sum(r["verdict"] == "inconclusive" for r in noisy)
    return (f"Every federation with noise ends at chance ({chance} on all {len(acc)}, against "
            f"{pm(accuracies([r for r in data if r['sigma0'] == 0]))} without noise) and every attack on it is inconclusive "
            f"({inconclusive} of {len(noisy)})")


# ----------------------------------------------------------------------------- calibrated DP (the old mechanism)


@headline
def dp_ten_seeds() -> str:
    data = rows("dp_seeds")
    clip, z2 = ([r for r in data if r["noise_multiplier"] == z] for z in (0, 2))
    undefended = [r for r in rows("sigma0_seeds") if r["sigma0"] == 0]
    adaptive = per_update_verdicts([r for r in clip if r["attacker"] == "adaptive"])
    return (f"Neither point learns: test accuracy {pm(accuracies(clip))} and {mean_ci(accuracies(z2))[0]:.3f}, against "
            f"{pm(accuracies(undefended))} undefended")


@headline
def dp_ten_seeds_adaptive_attacker() -> str:
    clip = [r for r in rows("dp_seeds") if r["noise_multiplier"] == 0]
    adaptive = per_update_verdicts([r for r in clip if r["attacker"] == "adaptive"])
    return (f"An attacker who fits the clip factor reconstructs the face from {leaks(adaptive)} of {len(adaptive)} clip-only updates "
            f"({ci(leaks(adaptive), len(adaptive))})")


# ----------------------------------------------------------------------------- per round, batch attack


@headline
def per_round_one_image_client() -> str:
    one = [r for r in rows("per_round") if r["num_images"] == 1]
    return (f"the 1-image client leaks in {leaks(one)} of {len(one)} rounds ({ci(leaks(one), len(one))})")


@headline
def per_round_eight_image_client() -> str:
    eight = [r for r in rows("per_round") if r["num_images"] == 8]
    k, chance = identified(eight)
    all_inconclusive = "inconclusive on all" if all(r["verdict"] == "inconclusive" for r in eight) else "not inconclusive on all"
    return f"The 8-image client is {all_inconclusive} {len(eight)} seeds, with {k} of {8 * len(eight)} images identified against {chance:.1f} by chance."


@headline
def batch_attack_does_not_converge() -> str:
    data = rows("batch_clients")
    converged = sum(r["converged"] == "True" for r in data)
    inconclusive = sum(r["verdict"] == "inconclusive" for r in data)
    k, chance = identified(data)
    state = "all inconclusive" if inconclusive == len(data) else f"{inconclusive} inconclusive"
    return (f"{converged} of {len(data)} converge, {state} ({ci(leaks(data), len(data))}), as with the old prior; {k} of "
            f"{sum(r['num_images'] for r in data)} images identified against {chance:.1f} by chance.")


def missing(page: str) -> list[tuple[str, str]]:
    """(name, sentence) of every headline whose sentence is not on ``page`` (whitespace collapsed on both)."""
    text = " ".join(page.split())
    return [(name, sentence) for name, fn in HEADLINES.items() if " ".join((sentence := fn()).split()) not in text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check every headline number of docs/results.md against its results.csv.")
    parser.add_argument("--print", action="store_true", help="print the sentences as computed instead of checking")
    parser.add_argument("--page", default=str(PAGE), help="the results page [default: docs/results.md]")
    args = parser.parse_args(argv)
    if args.print:
        for name, fn in HEADLINES.items():
            print(f"{name}:\n  {fn()}\n")
        return 0
    gone = missing(Path(args.page).read_text())
    for name, sentence in gone:
        print(f"{name}: not on the page as computed from its CSV:\n  {sentence}", file=sys.stderr)
    print(f"{len(HEADLINES) - len(gone)} of {len(HEADLINES)} headlines on the page match their CSVs")
    return 1 if gone else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
