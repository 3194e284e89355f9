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
import functools
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from common.config_loader import load, overrides_list
from datamodules.federated import make_split
from datamodules.sources import load_pool
from federation.train_config import TrainConfig
from leakage.verdict import update_verdict
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


@functools.lru_cache(maxsize=None)
def client_images(study: str, seed: int, client: int) -> tuple[int, ...]:
    """The pool indices of a client's images in the study's federation of ``seed``, from its split (no training):
    the unit of a leakage claim is a distinct private image, and two seeds can deal a client the same face. The
    study's train overrides are applied, not its grid's: no shipped grid changes the split."""
    spec = yaml.safe_load((ROOT / "configs" / "studies" / f"{study}.yaml").read_text())
    overrides = {**(spec["train"].get("overrides") or {}), "seed": seed}
    files = [ROOT / spec["train"]["config"]] if spec["train"].get("config") else []
    cfg = load(TrainConfig, files, overrides_list(overrides))
    return tuple(int(i) for i in make_split(load_pool(cfg.data), cfg.fl.split, cfg.data.test_fraction, cfg.seed).client_indices[client])


def image_verdicts(study: str, sel: list[dict[str, Any]]) -> list[str]:
    """One verdict per distinct private image of the 1-image client over ``sel``'s attacks: it leaks when any attack on
    any update of it showed it (``leakage.verdict.update_verdict``)."""
    by_image: dict[tuple[int, ...], list[str]] = {}
    for r in sel:
        by_image.setdefault(client_images(study, int(r["seed"]), int(r["client"])), []).append(r["verdict"])
    return [update_verdict(v) for v in by_image.values()]


def ci(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{lo:.2f}-{hi:.2f}"


def pm(values: list[float]) -> str:
    mean, std, _, _ = mean_ci(values)
    return f"{mean:.3f} ± {std:.3f}"


def per_image(study: str, sel: list[dict[str, Any]]) -> str:
    """'k of n distinct faces leak (CP lo-hi)', the unit of a leakage claim."""
    verdicts = image_verdicts(study, sel)
    k = verdicts.count("leaks")
    return f"{k} of {len(verdicts)} distinct faces leak, {ci(k, len(verdicts))}"


# ----------------------------------------------------------------------------- claim 1: the BN sources


@headline
def claim1_inferred_sources_leak() -> str:
    sel = [r for r in rows("bn_ablation") if r["bn_source"] in ("one_step", "multi_step") and r["update_matching"] == "off"]
    ssim = [r["ssim"] for r in sel]
    return (f"The sources that infer the batch statistics from the update leak on {leaks(sel)} of {len(sel)} attacks without "
            f"update matching (SSIM {min(ssim):.2f}-{max(ssim):.2f}; {per_image('bn_ablation', sel)})")


@headline
def claim1_eval_mode_fails() -> str:
    sel = [r for r in rows("bn_ablation") if r["bn_source"] == "global"]
    ssim = [r["ssim"] for r in sel]
    return (f"Assuming eval-mode BN (the global model's running statistics) fails: {sum(r['verdict'] == 'inconclusive' for r in sel)} "
            f"of {len(sel)} attacks inconclusive, SSIM {min(ssim):.2f}-{max(ssim):.2f}")


# ----------------------------------------------------------------------------- claim 2: batch layout


@headline
def claim2_one_image_and_identification() -> str:
    data = rows("batch_layout")
    one = [r for r in data if r["num_images"] == 1]
    four, eight = ([r for r in data if r["num_images"] == n] for n in (4, 8))
    (k4, c4), (k8, c8) = identified(four), identified(eight)
    big = [r for r in data if r["num_images"] >= 4]
    count = {v: sum(r["verdict"] == v for r in big) for v in ("inconclusive", "leaks", "no leak found")}
    return (f"The 1-image client leaks on {leaks(one)} of {len(one)} seeds. Of the {len(big)} attacks on clients with 4 or more "
            f"images, {sum(r['converged'] != 'True' for r in big)} did not converge ({count['inconclusive']} inconclusive, "
            f"{count['leaks']} leaking a black image) and {sum(r['converged'] == 'True' for r in big)} converged to no leak found; the "
            f"4- and 8-image clients' images are identified far above chance ({k4} of {4 * len(four)} against {c4:.1f}, {k8} of "
            f"{8 * len(eight)} against {c8:.1f})")


# ----------------------------------------------------------------------------- claim 3: the paper's filter


@headline
def claim3_pooled_sweep_leaks_everywhere() -> str:
    data = rows("sigma0")
    ssim = [r["ssim"] for r in data]
    return (f"The face leaks on {leaks(data)} of {len(data)} updates (Clopper-Pearson {ci(leaks(data), len(data))}; "
            f"{per_image('sigma0', data)}), at every sigma0 up to {max(r['sigma0'] for r in data)}. All "
            f"{sum(r['converged'] == 'True' for r in data)} attacks converged (SSIM {min(ssim):.3f}-{max(ssim):.3f})")


@headline
def claim3_pooled_accuracy() -> str:
    data = rows("sigma0")
    clean = accuracies([r for r in data if r["sigma0"] == 0])
    diffs = {s: welch_difference(accuracies([r for r in data if r["sigma0"] == s]), clean)
             for s in sorted({r["sigma0"] for r in data}) if s != 0}
    upto = [d[0] for s, d in diffs.items() if s <= 40]
    return (f"the accuracy is unchanged up to sigma0 = 40 (every difference within ±{max(abs(d) for d in upto):.3f} of the noiseless "
            f"{pm(clean)}) and {-diffs[45][0]:.3f}-{-diffs[50][0]:.3f} lower at 45-50 (p = {diffs[45][3]:.2f} and {diffs[50][3]:.2f})")


@headline
def claim3_ten_seeds() -> str:
    data = rows("sigma0_seeds")
    clean, noisy = ([r for r in data if r["sigma0"] == s] for s in (0, 30))
    diff, lo, hi, _ = welch_difference(accuracies(noisy), accuracies(clean))
    up_noisy, up_clean = per_update_verdicts(noisy), per_update_verdicts(clean)
    return (f"sigma0 = 30 costs {diff:+.3f} accuracy (95% Welch interval {lo:+.3f} to {hi:+.3f}) and the face still leaks on "
            f"{leaks(up_noisy)} of {len(up_noisy)} updates (Clopper-Pearson {ci(leaks(up_noisy), len(up_noisy))}; "
            f"{per_image('sigma0_seeds', noisy)}), against {leaks(up_clean)} of {len(up_clean)} updates "
            f"({per_image('sigma0_seeds', clean)}) without noise")


@headline
def claim3_per_tensor_broken() -> str:
    data = rows("sigma0_per_tensor")
    noisy = [r for r in data if r["sigma0"] != 0]
    acc = accuracies(noisy)
    chance = "0.500" if all(a == 0.5 for a in acc) else "not all 0.500"
    inconclusive = sum(r["verdict"] == "inconclusive" for r in noisy)
    return (f"every federation with noise ended at chance ({chance} on all {len(acc)}, against "
            f"{pm(accuracies([r for r in data if r['sigma0'] == 0]))} without noise) and every attack on it was inconclusive "
            f"({inconclusive} of {len(noisy)})")


# ----------------------------------------------------------------------------- calibrated DP (the old mechanism)


@headline
def dp_ten_seeds() -> str:
    data = rows("dp_seeds")
    clip, z2 = ([r for r in data if r["noise_multiplier"] == z] for z in (0, 2))
    undefended = [r for r in rows("sigma0_seeds") if r["sigma0"] == 0]
    adaptive = [r for r in clip if r["attacker"] == "adaptive"]
    updates = per_update_verdicts(adaptive)
    return (f"clipping alone left {pm(accuracies(clip))} test accuracy and z = 2 {mean_ci(accuracies(z2))[0]:.3f}, against "
            f"{pm(accuracies(undefended))} undefended on the same seeds; an attacker who fits the clip factor reconstructed the face "
            f"from {leaks(updates)} of {len(updates)} clip-only updates ({ci(leaks(updates), len(updates))}; "
            f"{per_image('dp_seeds', adaptive)}) without the escalation ladder")


@headline
def dp_five_seeds_with_the_ladder() -> str:
    data = rows("dp")
    clip = [r for r in data if r["noise_multiplier"] == 0]
    adaptive = [r for r in clip if r["attacker"] == "adaptive"]
    naive = [r for r in data if r["attacker"] == "naive"]
    return (f"With the ladder the adaptive attacker reconstructs the face from {leaks(adaptive)} of {len(adaptive)} clip-only updates "
            f"(SSIM {min(r['ssim'] for r in adaptive):.2f}-{max(r['ssim'] for r in adaptive):.2f}); the naive attacker converges on "
            f"{sum(r['converged'] == 'True' for r in naive)} of {len(naive)}")


# ----------------------------------------------------------------------------- per round, batch attack


@headline
def per_round_one_image_client() -> str:
    one = [r for r in rows("per_round") if r["num_images"] == 1]
    ssim = [r["ssim"] for r in one]
    return (f"The 1-image client leaks in {leaks(one)} of {len(one)} rounds (Clopper-Pearson {ci(leaks(one), len(one))}; "
            f"{per_image('per_round', one)}), SSIM {min(ssim):.2f}-{max(ssim):.2f}")


@headline
def per_round_eight_image_client() -> str:
    eight = [r for r in rows("per_round") if r["num_images"] == 8]
    k, chance = identified(eight)
    all_inconclusive = "inconclusive on all" if all(r["verdict"] == "inconclusive" for r in eight) else "not inconclusive on all"
    return f"The 8-image client is {all_inconclusive} {len(eight)} seeds, with {k} of {8 * len(eight)} images identified against {chance:.1f} by chance"


@headline
def batch_attack_does_not_converge() -> str:
    data = rows("batch_clients")
    converged = sum(r["converged"] == "True" for r in data)
    inconclusive = sum(r["verdict"] == "inconclusive" for r in data)
    k, chance = identified(data)
    state = "all inconclusive" if inconclusive == len(data) else f"{inconclusive} inconclusive"
    return (f"{converged} of {len(data)} batch attacks converge, {state} (leak rate {leaks(data)}/{len(data)}, "
            f"{ci(leaks(data), len(data))}); {k} of {sum(r['num_images'] for r in data)} images identified against {chance:.1f} by chance")


# ----------------------------------------------------------------------------- defences as deployed (issue 41)


def by_seed(sel: list[dict[str, Any]]) -> dict[int, float]:
    """Each federation's final test accuracy by its seed (its attacks repeat it)."""
    return {int(r["seed"]): float(r["final_test_accuracy"]) for r in sel}


def paired_cost(defended: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    from studies.paired import paired_difference

    p = paired_difference(by_seed(baseline), by_seed(defended))
    return (f"{p.mean:+.3f} test accuracy (paired over {p.n} seeds, 95% interval {p.low:+.3f} to {p.high:+.3f}; "
            f"{sum(p.defended) / p.n:.3f} against {sum(p.baseline) / p.n:.3f})")


def counts(sel: list[dict[str, Any]]) -> str:
    inconclusive = sum(r["verdict"] == "inconclusive" for r in sel)
    return f"{leaks(sel)} of {len(sel)} updates leak ({ci(leaks(sel), len(sel))}; {inconclusive} inconclusive)"


@headline
def fedbn_accuracy() -> str:
    data = rows("fedbn")
    return f"Keeping the BN statistics on the client costs {paired_cost([r for r in data if r['bn'] == 'local'], [r for r in data if r['bn'] == 'shared'])}"


@headline
def fedbn_one_image_client() -> str:
    data = [r for r in rows("fedbn") if r["client"] == 3]
    local, shared = ([r for r in data if r["bn"] == arm] for arm in ("local", "shared"))
    return (f"The 1-image client: with FedBN {counts(local)}, {per_image('fedbn', local)}; sending the buffers {counts(shared)}, "
            f"{per_image('fedbn', shared)}")


@headline
def fedbn_four_image_client() -> str:
    data = [r for r in rows("fedbn") if r["client"] == 2]
    local, shared = ([r for r in data if r["bn"] == arm] for arm in ("local", "shared"))
    (kl, cl), (ks, cs) = identified(local), identified(shared)
    return (f"The 4-image client: with FedBN {counts(local)}, {kl} of {4 * len(local)} images identified against {cl:.1f} by chance; "
            f"sending the buffers {counts(shared)}, {ks} of {4 * len(shared)} identified against {cs:.1f}")


@headline
def dp_deployed_clip_only() -> str:
    clip = [r for r in rows("dp_deployed") if r["client"] == 3]
    shared = [r for r in rows("fedbn") if r["bn"] == "shared" and r["client"] == 3]
    return (f"Clipping the weights at the median update norm costs {paired_cost(clip, shared)}, and {counts(clip)}, "
            f"{per_image('dp_deployed', clip)}")


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
