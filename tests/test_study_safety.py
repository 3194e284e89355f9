"""study.py holds the promise train.py keeps (issue 39): its folder is its own, a config mistake is an error before
any cell runs (never a result row), and a damaged cell is redone."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from common.errors import UserError
from studies.runner import StudyRunner
from tests.test_studies import ROOT, tiny_quick

SIGMA0 = ROOT / "configs" / "studies" / "sigma0.yaml"


def _spec(out: Path):
    return tiny_quick(SIGMA0, out)


def test_a_folder_that_is_not_a_study_is_refused_and_left_alone(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my,own\n1,2\n")
    with pytest.raises(UserError, match="not a study folder"):
        StudyRunner(_spec(out), progress=False).run()
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"] and (out / "results.csv").read_text() == "my,own\n1,2\n"


def test_another_studys_folder_is_refused_with_the_difference_named(tmp_path: Path):
    out = tmp_path / "study"
    out.mkdir()
    first = _spec(out)
    from common.config_loader import dump_yaml

    (out / "study.yaml").write_text(dump_yaml(first))
    other = _spec(out)
    other.attack.overrides = {**other.attack.overrides, "optim.lr": 0.3}
    with pytest.raises(UserError, match="with another attack"):
        StudyRunner(other, progress=False).run()
    renamed = _spec(out)
    renamed.name = "someone_else"
    with pytest.raises(UserError, match="holds the study 'sigma0_quick' with another name"):
        StudyRunner(renamed, progress=False).run()
    assert sorted(p.name for p in out.iterdir()) == ["study.yaml"]  # nothing written
    more = _spec(out)
    more.seeds = [0, 1]  # more seeds add cells: the same study
    StudyRunner(more, progress=False).check_out()


@pytest.mark.parametrize("mistake,message", [
    ({"grid": {"sigma0": {"0": {"attack": {"optim.iterationz": 5}}}}}, "iterationz"),
    ({"grid": {"sigma0": {"0": {"attack": {"optim.lr": -1.0}}}}}, "optim.lr must be a positive number"),
    ({"grid": {"sigma0": {"0": {"train": {"fl.roundz": 2}}}}}, "roundz"),
    ({"report": {"plots": [{"kind": "pie", "metric": "ssim"}]}}, "kind must be one of"),
    ({"seeds": [-1]}, "must be >= 0"),
    ({"targets": [{"round": -1, "client": 0}]}, "target client 0 is not captured"),
    ({"targets": [{"round": 0, "client": 3}]}, "target round 0 is not captured"),
])
def test_a_config_mistake_is_an_error_before_any_cell_runs(tmp_path: Path, mistake: dict, message: str):
    spec = _spec(tmp_path / "study")
    for key, value in mistake.items():
        if key == "targets":
            from studies.spec import Target

            value = [Target(**t) for t in value]
        setattr(spec, key, value)
    with pytest.raises(UserError, match=message):
        StudyRunner(spec, progress=False).run()
    assert not (tmp_path / "study").exists()  # nothing trained, nothing written


def test_a_damaged_cell_is_redone(tmp_path: Path):
    spec = _spec(tmp_path / "study")
    spec.grid = {"sigma0": {"0": spec.grid["sigma0"]["0"]}}
    first = StudyRunner(spec, progress=False)
    results = first.run()
    (cell,) = [p for p in (tmp_path / "study" / "cells").iterdir()]
    (cell / "metrics.json").write_text('{"ssim": 0.')  # torn by a crash
    again = StudyRunner(spec, progress=False)
    again.run()
    assert again.attacks_run == 1 and again.trainings_run == 0
    with open(results) as fh:
        assert len(list(csv.DictReader(fh))) == 1
    (cell / "cell.json").unlink()  # a crash between the attack's record and the cell's
    third = StudyRunner(spec, progress=False)
    third.run()
    assert third.attacks_run == 1 and (cell / "cell.json").is_file()


from tests.test_ctrl_c import sigint_restored  # noqa: E402,F401  (the fixture: SIGINT handling restored after each test)


@pytest.mark.parametrize("moment", ["a destructor in a training step", "an attack step"])
def test_ctrl_c_stops_a_study_and_a_rerun_resumes(tmp_path: Path, capsys, monkeypatch, sigint_restored, moment: str):
    """A real SIGINT wherever it lands: exit 130 with one line, finished cells kept, and the same command resumes."""
    import gc

    import study
    from common.config_loader import dump_yaml
    from inversion.attack_module import GradientInversionAttack
    from tests.conftest import run_entry
    from tests.test_ctrl_c import _destructor_in_step, _patch

    spec = _spec(tmp_path / "study")
    spec.grid = {"sigma0": {k: spec.grid["sigma0"][k] for k in list(spec.grid["sigma0"])[:2]}}
    path = tmp_path / "spec.yaml"
    path.write_text(dump_yaml(spec))
    argv = ["--config", str(path), "--no-progress"]
    with monkeypatch.context() as mp:
        if moment == "an attack step":
            _patch(mp, GradientInversionAttack, "training_step", 2)
        else:
            _destructor_in_step(mp)
        code, err = run_entry(study.main, argv, capsys)
        gc.collect()
    assert (code, err) == (130, "error: interrupted"), err
    assert not (tmp_path / "study" / "results.csv").exists()
    code, err = run_entry(study.main, argv, capsys)
    assert code == 0, err
    with open(tmp_path / "study" / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_an_empty_spec_is_one_line_before_any_training(tmp_path: Path, capsys):
    """The default target (client 0 of the last round) is not captured by the default federation (clients 2 and 3):
    said before a federation is trained for nothing."""
    import study
    from tests.conftest import run_entry

    spec = tmp_path / "empty.yaml"
    spec.write_text(f"name: empty\nout: {tmp_path / 'out'}\n")
    code, err = run_entry(study.main, ["--config", str(spec), "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: study target client 0 is not captured (capture.clients [2, 3])"), err
    assert not (tmp_path / "out").exists()


def test_every_shipped_study_passes_the_checks_in_full_and_reduced():
    from common.config_loader import load
    from studies.quick import reduce
    from studies.spec import StudySpec

    for path in sorted((ROOT / "configs" / "studies").glob("*.yaml")):
        spec = load(StudySpec, [path], [])
        StudyRunner(spec, progress=False).check()
        StudyRunner(reduce(spec), progress=False).check()
