"""No command deletes or replaces a folder it did not create: existing outputs need --overwrite and
must be this tool's own results of the same kind; an attack never touches its update or run; a
resume continues only the interrupted run, with the same config."""
import json
from pathlib import Path
import shutil

import pytest

from tests.conftest import run_entry
from common.files import STAGING_MARK, StagedDir
from federation.run_layout import RunLayout
from pipelines.attack_output import is_attack_output

TINY = ["data.image_size=16", "model.name=bn_convnet", "model.resize_to=0", "model.width=8", "model.depth=3",
        "fl.rounds=1", "logging.wandb=false", "logging.progress=false"]
FAST = ["optim.iterations=5", "optim.restarts=2", "logging.wandb=false", "logging.progress=false", "scoring.lpips=false", "escalation.enabled=false"]


def _run(module: str, argv, capsys):
    import attack
    import train

    return run_entry({"train": train.main, "attack": attack.main}[module], argv, capsys)


def _one_line(err: str, words: str) -> bool:
    return len(err.splitlines()) == 1 and err.startswith("error: ") and words in err


# ----------------------------------------------------------------------------- StagedDir


def test_staged_dir_refuses_existing_folders_unless_overwrite_and_own(tmp_path):
    from common.errors import UserError

    final = tmp_path / "out"
    final.mkdir()
    (final / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        StagedDir(final).open()
    with pytest.raises(UserError, match="not a result of this tool"):
        StagedDir(final, overwrite=True, own=lambda p: (p / "run.json").is_file()).open()
    assert (final / "mine.txt").read_text() == "keep" and not (tmp_path / "out.partial").exists()
    (final / "run.json").write_text("{}")
    staged = StagedDir(final, overwrite=True, own=lambda p: (p / "run.json").is_file())
    work = staged.open()
    assert (work / STAGING_MARK).is_file()
    (work / "new.txt").write_text("new")
    staged.commit()
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]  # replaced whole, the staging mark gone
    assert not list(tmp_path.glob("out.replaced-*"))


def test_staged_dir_deletes_only_its_own_partial_folders(tmp_path):
    from common.errors import UserError

    final = tmp_path / "out"
    foreign = tmp_path / "out.partial"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not made by this tool"):
        StagedDir(final).open()
    assert (foreign / "thesis.tex").is_file()
    shutil.rmtree(foreign)
    StagedDir(final).open()  # ours now: marked
    (foreign / "scratch").write_text("x")
    StagedDir(final).open()  # a fresh start removes our own earlier partial folder
    assert not (foreign / "scratch").exists()


def test_staged_dir_one_line_errors_for_unusable_outputs(tmp_path):
    from common.errors import UserError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        StagedDir(tmp_path / "file").open()
    with pytest.raises(UserError, match="is not a folder"):
        StagedDir(tmp_path / "file" / "run").open()
    with pytest.raises(UserError, match="is the file system root"):
        StagedDir("/")


def test_a_read_only_parent_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Permission bits do not stop root (this CI), so the check that a user meets is simulated."""
    import os

    import common.files

    parent = tmp_path / "readonly"
    parent.mkdir()
    real = os.access
    monkeypatch.setattr(common.files.os, "access", lambda p, mode: False if Path(p) == parent else real(p, mode))
    code, err = _run("train", TINY + ["--out", str(parent / "run")], capsys)
    assert code == 2 and _one_line(err, f"cannot create {parent / 'run'}: {parent} is not writable"), err
    assert list(parent.iterdir()) == []


def test_dot_outputs_name_the_folder_they_stand_for(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("keep")
    for out in (".", "sub/..", str(tmp_path) + "/."):
        for extra in ([], ["--overwrite"]):
            code, err = _run("train", TINY + ["--out", out] + extra, capsys)
            assert code == 2 and _one_line(err, str(tmp_path)), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# ----------------------------------------------------------------------------- train.py


def test_train_never_replaces_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    code, err = _run("train", TINY + ["--out", str(out)], capsys)
    assert code == 2 and _one_line(err, "already exists"), err
    code, err = _run("train", TINY + ["--out", str(out), "--overwrite"], capsys)
    assert code == 2 and _one_line(err, "not a complete training run of this tool"), err
    assert (out / "notes.txt").read_text() == "keep" and not (tmp_path / "mine.partial").exists()


def test_train_replaces_its_own_run_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("train", TINY + ["--out", str(out)], capsys)[0] == 0
    first = json.loads((out / "run.json").read_text())
    (out / "attacks").mkdir()
    code, err = _run("train", TINY + ["--out", str(out), "seed=1"], capsys)
    assert code == 2 and _one_line(err, "already exists"), err
    assert json.loads((out / "run.json").read_text()) == first and (out / "attacks").is_dir()
    code, err = _run("train", TINY + ["--out", str(out), "--resume"], capsys)
    assert code == 2 and _one_line(err, "is complete: nothing to resume"), err
    assert _run("train", TINY + ["--out", str(out), "seed=1", "--overwrite"], capsys)[0] == 0
    assert RunLayout(out).is_complete() and not (out / "attacks").exists()


def test_overwrite_through_a_symlink_is_refused_and_leaves_no_stray_folder(tmp_path, capsys):
    """--out LINK --overwrite used to swap the link for a new folder, fail on removing the old link and leave a
    '*.replaced-PID' behind: now it is refused in one line, the link and the run it points to untouched."""
    out = tmp_path / "run"
    assert _run("train", TINY + ["--out", str(out)], capsys)[0] == 0
    first = json.loads((out / "run.json").read_text())
    link = tmp_path / "latest"
    link.symlink_to(out, target_is_directory=True)
    code, err = _run("train", TINY + ["--out", str(link), "seed=1", "--overwrite"], capsys)
    assert code == 2 and _one_line(err, "is a symbolic link"), err
    assert link.is_symlink() and json.loads((out / "run.json").read_text()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run"]


def test_resume_refuses_a_different_config(tmp_path, capsys, monkeypatch):
    import train
    from federation.federation import Federation

    out = tmp_path / "run"
    argv = TINY + ["fl.rounds=2", "--out", str(out)]
    original = Federation.aggregate_round
    calls = {"n": 0}

    def die_in_round_two(self, *a, **k):  # an interruption after round 0 was saved
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Federation, "aggregate_round", die_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    monkeypatch.setattr(Federation, "aggregate_round", original)
    assert (tmp_path / "run.partial" / "config.yaml").is_file() and not out.exists()
    code, err = _run("train", argv + ["--resume", "seed=7", "optimizer.lr=0.05"], capsys)
    assert code == 2 and _one_line(err, "differs from the interrupted run's (optimizer, seed)"), err
    code, err = _run("train", argv + ["--resume", "logging.progress=true"], capsys)  # logging may change
    assert code == 0, err
    assert RunLayout(out).is_complete()
    code, err = _run("train", TINY + ["--out", str(tmp_path / "never"), "--resume"], capsys)
    assert code == 2 and _one_line(err, "nothing to resume"), err


# ----------------------------------------------------------------------------- attack.py


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())


def test_attack_never_touches_its_update_or_run(run_copy, capsys):
    update = run_copy / "updates" / "round_1" / "client_2"
    before = _snapshot(run_copy)
    for out in (update, run_copy, run_copy / "updates"):
        for extra in ([], ["--overwrite"]):
            code, err = _run("attack", FAST + ["--update", str(update), "--out", str(out)] + extra, capsys)
            assert code == 2 and _one_line(err, "would replace the attacked update"), err
    assert _snapshot(run_copy) == before


def test_attack_replaces_only_its_own_output_with_overwrite(run_copy, tmp_path, capsys):
    update = run_copy / "updates" / "round_1" / "client_2"
    out = tmp_path / "attack"
    assert _run("attack", FAST + ["--update", str(update), "--out", str(out)], capsys)[0] == 0
    assert is_attack_output(out)
    stamp = (out / "metrics.json").stat().st_mtime_ns
    code, err = _run("attack", FAST + ["--update", str(update), "--out", str(out)], capsys)
    assert code == 2 and _one_line(err, "already exists"), err
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    code, err = _run("attack", FAST + ["--update", str(update), "--out", str(out), "--resume"], capsys)
    assert code == 2 and _one_line(err, "is complete: nothing to resume"), err
    assert _run("attack", FAST + ["--update", str(update), "--out", str(out), "--overwrite"], capsys)[0] == 0
    assert (out / "metrics.json").stat().st_mtime_ns != stamp
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("{}")  # looks a bit like an output, but holds no reconstruction
    code, err = _run("attack", FAST + ["--update", str(update), "--out", str(other), "--overwrite"], capsys)
    assert code == 2 and _one_line(err, "not an attack output of this tool"), err
    assert (other / "metrics.json").read_text() == "{}"



class _Payload:
    """Unpickling this would write a file: the attack must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["malicious", "truncated"])
def test_attack_resume_refuses_an_unsafe_checkpoint_in_one_line(run_copy, tmp_path, capsys, kind):
    import torch

    update = run_copy / "updates" / "round_1" / "client_2"
    out = tmp_path / "attack"
    ckpt = tmp_path / "attack.partial" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    (tmp_path / "attack.partial" / STAGING_MARK).write_text("")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "evil": _Payload(marker)}, ckpt)
    if kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:40])
    code, err = _run("attack", FAST + ["--update", str(update), "--out", str(out), "--resume"], capsys)
    assert code == 2 and _one_line(err, "cannot be loaded safely"), err
    assert not marker.exists() and not out.exists()
    assert ckpt.is_file()  # the user's file is left for them to inspect


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_an_attack_is_exit_130_and_an_interrupted_partial(run_copy, tmp_path, capsys, monkeypatch):
    """Lightning catches KeyboardInterrupt inside fit and exits 1; the CLI must still say 'interrupted' and exit 130."""
    from inversion.attack_module import GradientInversionAttack

    original = GradientInversionAttack.training_step

    def press_ctrl_c(self, batch, batch_idx):
        if self.steps_done == 2:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GradientInversionAttack, "training_step", press_ctrl_c)
    out = tmp_path / "attack"
    code, err = _run("attack", FAST + ["--update", str(run_copy / "updates" / "round_1" / "client_2"), "--out", str(out)], capsys)
    assert code == 130 and err.splitlines()[-1] == "error: interrupted", err
    assert not out.exists() and (tmp_path / "attack.partial" / "FAILED").read_text().strip() == "interrupted"


def test_ctrl_c_in_training_is_exit_130_and_an_interrupted_partial(tmp_path, capsys, monkeypatch):
    from federation.client import FLClient

    def press_ctrl_c(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(FLClient, "training_step", press_ctrl_c)
    out = tmp_path / "run"
    code, err = _run("train", TINY + ["--out", str(out)], capsys)
    assert code == 130 and err.splitlines()[-1] == "error: interrupted", err
    assert not out.exists() and (tmp_path / "run.partial" / "FAILED").read_text().strip() == "interrupted"
