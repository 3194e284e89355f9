"""Ctrl-C stops train.py wherever it lands: exit 130, the one line "error: interrupted", a partial run,
and ``--resume`` ends bit-identically with an uninterrupted run.

The SIGINT is real (``os.kill`` to this process, handled by ``common.interrupt``'s handler), sent
from inside the code of each moment; nothing raises KeyboardInterrupt by hand.
"""
from __future__ import annotations

import csv
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from common.files import load_tensors
from tests.conftest import run_entry

TINY = ["data.image_size=16", "model.name=bn_convnet", "model.resize_to=0", "model.width=8", "model.depth=3",
        "fl.rounds=2", "logging.wandb=false", "logging.progress=false"]


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


class _Destructor:
    """Like Lightning's Profiler: its __del__ is where the Ctrl-C lands, and Python only prints what it raises."""

    def __del__(self) -> None:
        ctrl_c()


def _on_call(n: int, before: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a function so that its n-th call sends SIGINT, before or after doing its work."""
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        calls = {"n": 0}

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if before and calls["n"] == n:
                ctrl_c()
            out = original(*args, **kwargs)
            if not before and calls["n"] == n:
                ctrl_c()
            return out
        return wrapper
    return wrap


def _mid_save(monkeypatch, name: str) -> None:
    """SIGINT once the bytes of ``name`` are in their temp file, before the rename that publishes them."""
    import common.files as files

    original = files.save_file

    def save_file(tensors, path, metadata=None):
        original(tensors, path, metadata=metadata)
        if Path(path).name.startswith(f".{name}."):
            ctrl_c()
    monkeypatch.setattr(files, "save_file", save_file)


def _patch(monkeypatch, owner: Any, attr: str, n: int, before: bool = True) -> None:
    monkeypatch.setattr(owner, attr, _on_call(n, before)(getattr(owner, attr)))


STEPS = {"n": 0}  # local steps taken in the destructor case: the Ctrl-C must stop the fit after that step


def _destructor_in_step(monkeypatch) -> None:
    from federation.client import FLClient

    original = FLClient.training_step
    calls = STEPS
    calls["n"] = 0

    def training_step(self, batch, batch_idx):
        calls["n"] += 1
        if calls["n"] == 3:
            _Destructor()  # collected at once: the KeyboardInterrupt is raised in __del__ and swallowed
        return original(self, batch, batch_idx)
    monkeypatch.setattr(FLClient, "training_step", training_step)


def _moments() -> dict[str, Callable[[Any], None]]:
    import federation.federation as federation
    import federation.in_process as in_process
    import pipelines.train_job as train_job
    from federation.capture import UpdateCapture
    from federation.client import FLClient

    return {
        "writing the setup": lambda mp: _mid_save(mp, "prior.safetensors"),
        "the first local step": lambda mp: _patch(mp, FLClient, "training_step", 1),
        "Lightning's loop after a step": lambda mp: _patch(mp, FLClient, "on_train_batch_end", 4),
        "a destructor inside fit": _destructor_in_step,
        "capturing the update": lambda mp: _patch(mp, UpdateCapture, "on_train_end", 2),
        "saving an update": lambda mp: _mid_save(mp, "update.safetensors"),
        "between clients": lambda mp: _patch(mp, federation.Federation, "train_client", 2, before=False),
        "aggregation": lambda mp: _patch(mp, federation.Federation, "aggregate_round", 2),
        "saving the global model": lambda mp: _mid_save(mp, "round_2.safetensors"),
        "test evaluation": lambda mp: _patch(mp, federation, "evaluate", 1),
        "writing a metrics row": lambda mp: _patch(mp, in_process, "append_metrics_csv", 1, before=False),
        "after the last round": lambda mp: _patch(mp, train_job, "accuracy_figure", 1),
    }


MOMENTS = [  # the keys of _moments(), listed here so that pytest can name the cases before importing the code
    "writing the setup", "the first local step", "Lightning's loop after a step", "a destructor inside fit",
    "capturing the update", "saving an update", "between clients", "aggregation", "saving the global model",
    "test evaluation", "writing a metrics row", "after the last round"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    import train

    out = tmp_path_factory.mktemp("ctrl_c") / "run"
    train.main(TINY + ["--out", str(out)])
    return out


@pytest.fixture()
def sigint_restored():
    from common import interrupt

    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    sys.unraisablehook = sys.__unraisablehook__  # as on the command line (pytest's own hook prints nothing)
    yield
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = hook
    interrupt._pending = False


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("moment", MOMENTS)
def test_ctrl_c_stops_training_and_resume_ends_bit_identically(moment, uninterrupted, tmp_path, capsys, monkeypatch, sigint_restored):
    import train

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _moments()[moment](mp)
        code, err = run_entry(train.main, TINY + ["--out", str(out)], capsys)
        gc.collect()
    assert (code, err) == (130, "error: interrupted"), err  # one line: no "Exception ignored" report either
    if moment == "a destructor inside fit":
        assert STEPS["n"] == 3, f"{STEPS['n']} local steps: the swallowed Ctrl-C did not stop the fit at the next step"
    partial = tmp_path / "run.partial"
    assert not out.exists() and (partial / "FAILED").read_text().strip() == "interrupted"
    assert not [p for p in partial.rglob(".*") if p.name != ".fl-leakage-staging"], "a temp file was left behind"

    code, err = run_entry(train.main, TINY + ["--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert _files(out) == _files(uninterrupted)
    for name in sorted(_files(out)):
        if name.endswith(".safetensors"):
            a, b = load_tensors(uninterrupted / name), load_tensors(out / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(out) == _metrics(uninterrupted)


def test_ctrl_c_during_the_commit_is_held_until_the_run_is_in_place(tmp_path, monkeypatch, sigint_restored):
    """The rename that publishes a run is not cut in two: no mark-less partial folder, no lost run."""
    import common.files as files
    from common import interrupt

    interrupt.install()
    staged = files.StagedDir(tmp_path / "out")
    (staged.open() / "result.txt").write_text("done")
    monkeypatch.setattr(files.os, "replace", _on_call(1)(files.os.replace))
    with pytest.raises(KeyboardInterrupt):
        staged.commit()
    assert (tmp_path / "out" / "result.txt").read_text() == "done" and not staged.partial.exists()
