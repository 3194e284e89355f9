"""Every shipped study, reduced (study.py --quick) and on a tiny model, runs end to end; sweeps resume."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from common.config_loader import load
from studies.analyze import analyze
from studies.quick import reduce
from studies.runner import StudyRunner
from studies.spec import StudySpec, Target, cells

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))

#: on top of --quick: a 16 px BN ConvNet and 5 attack iterations, so that six studies fit in the suite
TINY_TRAIN = {"data.image_size": 16, "model.name": "bn_convnet", "model.resize_to": 0, "model.width": 8, "model.depth": 3}
TINY_ATTACK = {"optim.iterations": 5, "scoring.lpips": False, "escalation.enabled": False}


def tiny_quick(path: Path, out: Path) -> StudySpec:
    spec = reduce(load(StudySpec, [path], []))
    spec.out = str(out)
    spec.train.overrides = {**spec.train.overrides, **TINY_TRAIN}
    spec.attack.overrides = {**spec.attack.overrides, **TINY_ATTACK}
    return spec


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_quick_keeps_ends_and_middle_of_every_axis_and_one_seed():
    spec = load(StudySpec, [ROOT / "configs" / "studies" / "sigma0.yaml"], [])
    quick = reduce(spec)
    assert quick.seeds == [spec.seeds[0]]
    assert list(quick.grid["sigma0"]) == ["0", "25", "50"]  # positions 0, 5 (of 0..10) and 10
    assert quick.out == spec.out + "_quick" and quick.name == "sigma0_quick"
    assert quick.train.overrides["fl.rounds"] == 2 and quick.attack.overrides["optim.iterations"] == 60
    assert len(cells(quick)) == 3 and len(cells(spec)) == len(spec.seeds) * len(spec.grid["sigma0"])
    assert spec.out.endswith("sigma0") and len(spec.seeds) > 1  # the original is untouched


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_reduced_study_runs_end_to_end(path: Path, tmp_path: Path):
    spec = tiny_quick(path, tmp_path / path.stem)
    runner = StudyRunner(spec, progress=False)
    rows = _rows(runner.run())
    # one row per (cell, attacked update): targets past the reduced rounds fold onto existing rounds
    expected = sum(len(runner.targets(Path(spec.out) / "train" / c.train_key)) for c in runner.cells)
    assert len(rows) == expected == runner.attacks_run > 0
    assert runner.trainings_run == len({c.train_key for c in runner.cells})
    import torch

    for row in rows:
        assert row["commit"] and row["torch"] == torch.__version__  # provenance of every cell (issue 23)
        assert row["train_threads"] == row["attack_threads"] == str(torch.get_num_threads())
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert -1.0 <= float(row["ssim"]) <= 1.0 and row["rdlv"] != ""
        for axis in spec.grid:
            assert row[axis] in spec.grid[axis]
    for key in {c.train_key for c in runner.cells}:  # only the attacked rounds' global models and the final one are kept
        run = Path(spec.out) / "train" / key
        rounds = {r for r, _ in runner.targets(run)} | {int(json.loads((run / "run.json").read_text())["rounds"])}
        assert sorted(p.name for p in (run / "global").glob("*.safetensors")) == sorted(f"round_{r}.safetensors" for r in rounds)
    summary = analyze(Path(spec.out), spec)
    assert len(summary["figure_paths"]) >= len(spec.report.get("plots", [])) and all(p.is_file() for p in summary["figure_paths"])
    assert len(summary["tables"]) >= len(spec.report.get("tables", []))


class _Interrupted(Exception):
    pass


def test_rerun_after_an_interruption_completes_only_the_missing_cells(tmp_path: Path):
    spec = tiny_quick(ROOT / "configs" / "studies" / "sigma0.yaml", tmp_path / "sigma0")
    spec.targets = [Target(-1, 3), Target(-1, 2)]  # two attacks per training run
    spec.train.overrides = {**spec.train.overrides, "capture.clients": [2, 3]}
    first = StudyRunner(spec, progress=False)
    done: list[Path] = []

    def stop_after_three(cell_dir: Path) -> None:  # mid-way through the second training run's targets
        done.append(cell_dir)
        if len(done) == 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        first.run(on_cell=stop_after_three)
    assert first.attacks_run == 3 and first.trainings_run == 2
    stamps = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done}

    second = StudyRunner(spec, progress=False)
    rows = _rows(second.run())
    assert second.trainings_run == 1 and second.attacks_run == 3  # 3 sigma0 values x 2 clients, 3 were done
    assert len(rows) == 6 and len({r["cell"] for r in rows}) == 6
    assert {d.name: (d / "metrics.json").stat().st_mtime_ns for d in done} == stamps  # finished cells untouched

    third = StudyRunner(spec, progress=False)
    assert len(_rows(third.run())) == 6 and third.attacks_run == 0 and third.trainings_run == 0


def test_an_attack_that_cannot_run_is_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch):
    """A grid point whose update makes the attack fail (e.g. a filter blew the update up) is a result, not a crash."""
    import pipelines.attack_job as attack_job
    from common.errors import UserError

    spec = tiny_quick(ROOT / "configs" / "studies" / "sigma0.yaml", tmp_path / "sigma0")
    real = attack_job.run_attack_job
    calls = []

    def first_fails(cfg, *args, **kwargs):
        calls.append(cfg.out)
        if len(calls) == 1:
            raise UserError("every restart diverged (non-finite objective): lower optim.lr or change the objective weights")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(attack_job, "run_attack_job", first_fails)
    runner = StudyRunner(spec, progress=False)
    rows = _rows(runner.run())
    assert len(rows) == len(runner.cells) == 3  # the study went on after the failure
    failed = [r for r in rows if r["attack_error"]]
    assert len(failed) == 1 and failed[0]["ssim"] == "" and "every restart diverged" in failed[0]["attack_error"]
    assert all(float(r["ssim"]) >= -1 for r in rows if not r["attack_error"])
    assert not list((tmp_path / "sigma0" / "cells").glob("*.partial"))
    analyze(Path(spec.out), spec)  # tables and gallery skip the missing reconstruction
    again = StudyRunner(spec, progress=False)
    again.run()
    assert again.attacks_run == 0 and len(calls) == 3  # recorded: not retried


def test_editing_a_stage_config_file_gives_new_cache_keys(tmp_path: Path):
    """A study must not reuse training runs or attacks made with an older version of its config files."""
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text("fl:\n  rounds: 2\n")
    spec = load(StudySpec, [ROOT / "configs" / "studies" / "sigma0.yaml"], [])
    spec.out, spec.train.config = str(tmp_path / "study"), str(train_cfg)
    before = StudyRunner(spec, progress=False).cells[0]
    assert before.train_key == StudyRunner(spec, progress=False).cells[0].train_key  # stable while nothing changes
    train_cfg.write_text("fl:\n  rounds: 2  # a comment changes nothing\n")
    assert StudyRunner(spec, progress=False).cells[0].train_key == before.train_key
    train_cfg.write_text("fl:\n  rounds: 3\n")
    after = StudyRunner(spec, progress=False).cells[0]
    assert after.train_key != before.train_key
    assert after.train_overrides == before.train_overrides  # only the file changed
    attack_cfg = tmp_path / "attack.yaml"
    attack_cfg.write_text("optim:\n  lr: 0.05\n")
    spec.attack.config = str(attack_cfg)
    other = StudyRunner(spec, progress=False).cells[0]
    assert other.train_key == after.train_key and other.attack_key(-1, 3) != after.attack_key(-1, 3)


def test_a_study_run_from_another_checkout_finds_its_cache_keys(tmp_path: Path):
    """Run from another checkout, the stage config is that checkout's copy of the script's default config:
    the same layer twice, which must not change the keys (it did, and a finished study started to retrain)."""
    spec = load(StudySpec, [ROOT / "configs" / "studies" / "sigma0.yaml"], [])
    spec.out = str(tmp_path / "study")
    here = StudyRunner(spec, progress=False).cells[0]
    for stage in ("train", "attack"):
        own = ROOT / getattr(spec, stage).config
        copy = tmp_path / "other_checkout" / stage / own.name
        copy.parent.mkdir(parents=True)
        copy.write_text(own.read_text())
        getattr(spec, stage).config = str(copy)
    there = StudyRunner(spec, progress=False).cells[0]
    assert (there.train_key, there.attack_key(-1, 3)) == (here.train_key, here.attack_key(-1, 3))
    copy.write_text(own.read_text() + "\noptim:\n  lr: 0.123\n")  # a layer that differs still counts
    assert StudyRunner(spec, progress=False).cells[0].attack_key(-1, 3) != here.attack_key(-1, 3)


def test_interval_bands_stay_inside_the_metric_range():
    """A 95% t-interval of n = 3 accuracies (0.5, 1.0, 1.0) reaches above 1: the drawn band stops at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from studies.plots import _line_band
    from studies.tables import mean_ci

    stats = [mean_ci([0.5, 1.0, 1.0]), mean_ci([0.9, 1.0, 0.95])]
    assert stats[0][0] + stats[0][2] > 1  # the interval itself exceeds the range
    fig, ax = plt.subplots()
    _line_band(ax, [0.0, 1.0], stats, "tab:blue", "accuracy", bounds=(0.0, 1.0))
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() <= 1.0 and band[:, 1].min() >= 0.0
    plt.close(fig)


def test_a_point_whose_attacks_all_failed_leaves_a_gap_in_the_band():
    """sigma0 = 40 of the per-tensor sweep: every attack failed, no SSIM. The band had spanned the whole
    range [-1, 1] there (max(-1, nan) is -1); it must be a gap. Values by hand: SSIM 0.2, 0.3, 0.4 -> mean
    0.3, std 0.1, half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414."""
    import math

    from studies.plots import band_limits
    from studies.tables import mean_ci

    stats = [mean_ci([0.2, 0.3, 0.4]), mean_ci([None, None]), mean_ci([0.9])]
    lows, highs = band_limits(stats, bounds=(-1.0, 1.0))
    assert lows[0] == pytest.approx(0.3 - 0.248414, abs=1e-5) and highs[0] == pytest.approx(0.3 + 0.248414, abs=1e-5)
    assert math.isnan(lows[1]) and math.isnan(highs[1])
    assert lows[2] == highs[2] == pytest.approx(0.9)  # one value: no interval, a point


def test_leak_rates_carry_exact_intervals_and_inconclusive_counts_apart():
    from studies.tables import clopper_pearson, verdict_cell, verdict_pivot

    # k = 0 or n: closed forms (alpha/2)^(1/n); k = 1 of 2: the beta quantiles 0.0126 and 0.9874
    assert clopper_pearson(0, 5) == pytest.approx((0.0, 1 - 0.025 ** (1 / 5)))
    assert clopper_pearson(5, 5) == pytest.approx((0.025 ** (1 / 5), 1.0))
    assert clopper_pearson(1, 2) == pytest.approx((0.01258, 0.98742), abs=1e-5)
    cell = verdict_cell(["leaks", "inconclusive", "no leak found", "inconclusive", "leaks"])
    assert cell.startswith("2/5 leak (0.05-0.85)")  # beta(0.025; 2, 4) = 0.053, beta(0.975; 3, 3) = 0.853
    assert "1 no leak found" in cell and "2 inconclusive" in cell
    rows = [{"round": 0, "verdict": "leaks"}, {"round": 0, "verdict": "inconclusive"}, {"round": 1, "verdict": "no leak found"}]
    header, body = verdict_pivot(rows, "round", None)
    assert body[0][1].startswith("1/2 leak") and body[0][1].endswith("1 inconclusive")
    assert body[1][1].startswith("0/1 leak") and "1 no leak found, 0 inconclusive" in body[1][1]


def test_figures_draw_every_inconclusive_cell_where_it_is():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from studies.plots import _mark_inconclusive

    rows = [{"round": 1, "ssim": 0.1, "verdict": "inconclusive"}, {"round": 2, "ssim": 0.9, "verdict": "leaks"},
            {"round": 3, "ssim": 0.2, "verdict": "no leak found"}, {"round": 4, "ssim": 0.15, "verdict": "inconclusive"}]
    fig, ax = plt.subplots()
    _mark_inconclusive(ax, rows, "round", "ssim")
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[1.0, 0.1], [4.0, 0.15]]
    assert "inconclusive" in points.get_label() and "(2)" in points.get_label()
    plt.close(fig)


def test_mixed_provenance_is_said_in_the_summary():
    from studies.analyze import provenance_note

    same = [{"commit": "abc", "torch": "2.14.1", "train_threads": "1", "attack_threads": "1"}] * 2
    assert provenance_note(same) == ""
    mixed = same + [{"commit": "abc", "torch": "2.14.1", "train_threads": "2", "attack_threads": "1"}, {"commit": ""}]
    note = provenance_note(mixed)
    assert "3 training thread counts (1, 2, unrecorded)" in note and "2 code commits (abc, unrecorded)" in note, note
    assert "attack thread counts" in note and note.startswith(" Mixed provenance: ")
    dirty = [{"commit": "3454e3bc7a4386437cf1"}, {"commit": "3454e3bc7a4386437cf1 (with uncommitted changes to tracked files)"}]
    assert "2 code commits (3454e3bc7a43, 3454e3bc7a43 with uncommitted changes)" in provenance_note(dirty)


def test_attack_seeds_repeat_every_update_apart_from_the_training_seed():
    from common.errors import UserError

    spec = StudySpec(seeds=[0, 1], grid={"s": {"a": {}, "b": {}}})
    plain = cells(spec)
    assert [(c.seed, c.attack_overrides["optim.seed"], c.attack_seed) for c in plain] == [(0, 0, None)] * 2 + [(1, 1, None)] * 2
    spec.attack_seeds = [1000, 1001]
    seeded = cells(spec)
    assert len(seeded) == 8
    assert sorted({(c.seed, c.axes["s"], c.attack_seed, c.attack_overrides["optim.seed"]) for c in seeded}) == [
        (t, s, a, a) for t in (0, 1) for s in ("a", "b") for a in (1000, 1001)]
    assert len({c.train_key for c in seeded}) == 2 and len({c.attack_key(-1, 3) for c in seeded}) == 4  # per training seed one run, two attacks (the axis values change nothing)
    with pytest.raises(UserError, match="repeat"):
        cells(StudySpec(attack_seeds=[5, 5]))
    spec.grid["s"]["b"] = {"attack": {"optim.seed": 3}}
    with pytest.raises(UserError, match="optim.seed"):
        cells(spec)


def test_welch_difference_agrees_with_scipys_welch_test():
    from scipy import stats

    from studies.tables import welch_difference

    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    diff, lo, hi, p = welch_difference(a, b)
    # by hand: diff -3, se^2 = 1/3 + (20/3)/4 = 2, df = 2^2 / ((1/3)^2/2 + (5/3)^2/3) = 216/53
    half = stats.t.ppf(0.975, 216 / 53) * 2 ** 0.5
    assert (diff, lo, hi) == pytest.approx((-3.0, -3.0 - half, -3.0 + half))
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(ref.pvalue)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_welch_difference_gives_no_interval_when_neither_side_varies():
    from studies.tables import difference_pivot, welch_difference

    diff, lo, hi, p = welch_difference([0.5, 0.5], [0.975, 0.975])
    assert diff == pytest.approx(-0.475) and math.isnan(lo) and math.isnan(hi) and math.isnan(p)
    rows = [{"sigma0": s, "train_key": f"t{s}{k}", "round": 11, "client": 3, "attack_seed": 1, "final_test_accuracy": acc}
            for s, acc in ((0, 0.975), (5, 0.5)) for k in range(2)]
    _, body = difference_pivot(rows, "sigma0", "final_test_accuracy", "0")
    assert body[1][2] == "-0.475 (no spread on either side: no interval)" and body[1][3] == "n/a"


def test_a_training_property_counts_once_per_update_whatever_the_attack_seeds():
    from studies.tables import difference_pivot, pivot

    rows = [{"sigma0": s, "train_key": f"t{s}{k}", "round": 11, "client": 3, "attack_seed": a, "final_test_accuracy": acc,
             "ssim": 0.1 * a} for s, accs in ((0, (0.9, 1.0, 0.95)), (30, (0.5, 0.7, 0.6))) for k, acc in enumerate(accs)
            for a in (1, 2)]
    _, body = pivot(rows, "sigma0", None, "final_test_accuracy")
    assert body == [["0", "0.950 ± 0.050 (n=3)"], ["30", "0.600 ± 0.100 (n=3)"]]
    _, body = pivot(rows, "sigma0", None, "ssim")
    assert body[0][1].endswith("(n=6)")  # every attack counts for an attack's score
    header, body = difference_pivot(rows, "sigma0", "final_test_accuracy", "0")
    assert header[2].startswith("difference to sigma0 = 0")
    assert body[0][2].startswith("+0.000") and body[1][2].startswith("-0.350 (")
    # Welch on (0.5, 0.7, 0.6) against (0.9, 1.0, 0.95): se^2 = 0.01/3 + 0.0025/3, t = -5.42, df = 2.94, p = 0.013 (scipy.stats.ttest_ind, equal_var=False)
    assert body[1][3] == "0.013"
    # an attack's number: averaged over the update's two attacks (0.1, 0.2 -> 0.15) before the test, n = updates
    _, body = difference_pivot(rows, "sigma0", "ssim", "0")
    assert body[0][1] == "0.150 ± 0.000 (n=3)" and body[1][2].startswith("+0.000")


def test_an_update_attacked_with_several_seeds_is_one_trial_as_leaky_as_its_best_attack():
    from leakage.verdict import update_verdict
    from studies.tables import per_update_verdicts, verdict_pivot

    assert update_verdict(["inconclusive", "leaks"]) == "leaks"
    assert update_verdict(["inconclusive", "no leak found"]) == "no leak found"
    assert update_verdict(["inconclusive", "inconclusive"]) == "inconclusive"
    rows = [{"sigma0": s, "train_key": f"t{s}{k}", "round": 11, "client": 3, "attack_seed": a, "verdict": v}
            for s, verdicts in ((0, [("leaks", "leaks"), ("leaks", "inconclusive")]), (30, [("inconclusive", "inconclusive"), ("no leak found", "inconclusive")]))
            for k, pair in enumerate(verdicts) for a, v in zip((1000, 1001), pair)]
    updates = per_update_verdicts(rows)
    assert len(updates) == 4 and all(u["attacks"] == 2 for u in updates)
    _, body = verdict_pivot(updates, "sigma0", None)
    assert body[0][1].startswith("2/2 leak") and body[1][1] == "0/2 leak (0.00-0.84), 1 no leak found, 1 inconclusive"
    _, per_attack = verdict_pivot(rows, "sigma0", None)
    assert per_attack[0][1].startswith("3/4 leak")


def test_two_attackers_of_one_update_are_two_trials_each_in_its_own_column():
    """dp_seeds attacks each update with two attackers (a grid axis of the attack only) and two attack seeds each:
    per column, one trial per update and one accuracy per update; reduced before the split, the updates were
    dealt to whichever attacker came first (1/4 and 3/6 where 10 and 10 were right)."""
    from studies.tables import difference_pivot, pivot, verdict_pivot

    verdicts = {"naive": ("inconclusive", "inconclusive"), "adaptive": ("leaks", "inconclusive")}
    rows = [{"z": "0", "attacker": who, "train_key": f"t{k}", "round": 11, "client": 3, "attack_seed": a, "verdict": v,
             "final_test_accuracy": 0.5 + 0.1 * k, "ssim": (0.9 if v == "leaks" else 0.1) + 0.01 * k}
            for k in range(3) for who in ("naive", "adaptive") for a, v in zip((1000, 1001), verdicts[who] if k else verdicts[who][::-1])]
    _, body = verdict_pivot(rows, "z", "attacker", col_order=["adaptive", "naive"], per_update=True)
    assert body == [["0", "3/3 leak (0.29-1.00), 0 no leak found, 0 inconclusive", "0/3 leak (0.00-0.71), 0 no leak found, 3 inconclusive"]]
    _, body = pivot(rows, "z", "attacker", "final_test_accuracy", col_order=["adaptive", "naive"])
    assert body == [["0", "0.600 ± 0.100 (n=3)", "0.600 ± 0.100 (n=3)"]]
    # attackers as rows: each row's updates averaged over that attacker's seeds only (0.5 and 0.1, +0.01 k)
    _, body = difference_pivot(rows, "attacker", "ssim", "naive")
    assert body[0][:2] == ["adaptive", "0.510 ± 0.010 (n=3)"] and body[1][1] == "0.110 ± 0.010 (n=3)"


def test_two_clients_of_one_round_share_one_test_accuracy():
    """per_round attacks clients 2 and 3 of the same last round: the global model's test accuracy is one number
    per training round, not one per attacked client (it showed n=6 and a shrunken std from 3 trainings)."""
    from studies.tables import pivot

    acc = {"t0": 0.9, "t1": 1.0, "t2": 0.95}
    rows = [{"train_key": t, "seed": k, "round": 11, "client": c, "test_accuracy": a, "final_test_accuracy": a}
            for k, (t, a) in enumerate(acc.items()) for c in (2, 3)]
    rows += [{"train_key": t, "seed": k, "round": 10, "client": 3, "test_accuracy": a - 0.1, "final_test_accuracy": a}
             for k, (t, a) in enumerate(acc.items())]
    # by hand: mean 0.95, std sqrt(((-0.05)^2 + 0.05^2 + 0) / 2) = 0.05, over the 3 trainings
    _, body = pivot(rows, "round", None, "test_accuracy")
    assert body == [["10", "0.850 ± 0.050 (n=3)"], ["11", "0.950 ± 0.050 (n=3)"]]
    # client 3 was attacked after rounds 10 and 11: two global models per training, 6 accuracies (by hand: mean 0.9,
    # std sqrt((0.1^2 + 0.05^2 + 0 + 0 + 0.1^2 + 0.05^2) / 5) = 0.0707)
    _, body = pivot(rows, "client", None, "test_accuracy")
    assert body == [["2", "0.950 ± 0.050 (n=3)"], ["3", "0.900 ± 0.071 (n=6)"]]
    # the final accuracy is one per training, whatever the rounds and clients attacked
    _, body = pivot([dict(r, study="per_round") for r in rows], "study", None, "final_test_accuracy")
    assert body == [["per_round", "0.950 ± 0.050 (n=3)"]]


def test_log_x_privacy_utility_gives_each_decade_its_width(tmp_path, monkeypatch):
    """With a zero point and noise multipliers 0.001-2 on a symlog axis, 0.001 and 0.01 must not crowd onto 0
    (matplotlib's default linear range of 1 put every point under 1 within a few pixels of it)."""
    from studies import plots
    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: captured.setdefault("fig", fig) and path)
    xs = ["0", "0.001", "0.01", "0.1", "2"]
    rows = [{"z": v, "rdlv": 0.1 * s, "test_accuracy": 0.5, "seed": s, "attack_seed": None, "cell": f"{v}-{s}",
             "verdict": "leaks"} for v in xs for s in (0, 1)]
    plots.privacy_utility(rows, "z", tmp_path / "p.png", log_x=True)
    ax = captured["fig"].axes[0]
    px = {v: ax.transData.transform((float(v), 0.0))[0] for v in xs}
    width = ax.bbox.width
    # the four gaps 0 | 0.001 | 0.01 | 0.1 | 2 each take at least a tenth of the axis
    for a, b in zip(xs, xs[1:]):
        assert px[b] - px[a] > 0.1 * width, (a, b, px)
    plots.plt.close(captured["fig"])


def test_a_layout_that_pools_two_attackers_of_one_update_is_counted_per_update():
    """dp.yaml's 'verdicts by noise_multiplier' put the naive and the adaptive attack of each update in one cell
    and counted them as two trials (5/10 leak, CP 0.19-0.81, where 5 of 5 updates leaked); one attack seed
    each, so the old test (several attack seeds) never asked for the per-update table."""
    from studies.tables import pools_attacks, verdict_pivot

    rows = [{"z": "0", "attacker": who, "train_key": f"t{k}", "round": 11, "client": 3, "attack_seed": None,
             "verdict": "leaks" if who == "adaptive" else "inconclusive"} for k in range(5) for who in ("naive", "adaptive")]
    assert pools_attacks(rows, ["z"])  # both attackers of an update in the one cell
    assert not pools_attacks(rows, ["z", "attacker"])  # one attack per update and column
    assert not pools_attacks([r for r in rows if r["attacker"] == "naive"], ["z"])
    _, per_attack = verdict_pivot(rows, "z", None)
    _, per_update = verdict_pivot(rows, "z", None, per_update=True)
    assert per_attack == [["0", "5/10 leak (0.19-0.81), 0 no leak found, 5 inconclusive"]]
    assert per_update == [["0", "5/5 leak (0.48-1.00), 0 no leak found, 0 inconclusive"]]
