"""train.py's bad-input contract: one line naming the problem, exit 2, nothing that looks complete."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.errors import run_cli
from tests.conftest import ROOT

TINY = ["data.image_size=16", "model.name=bn_convnet", "model.resize_to=0", "model.width=8", "model.depth=3",
        "fl.rounds=1", "logging.wandb=false", "logging.progress=false"]


def _train(argv, capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(argv))
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def _folder(tmp_path, broken=False, empty=False):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        if empty and cls == "b":
            continue
        for i in range(6):
            Image.fromarray(np.full((20, 20), 30 * i, np.uint8)).save(root / cls / f"{i}.png")
    if broken:
        (root / "a" / "bad.png").write_bytes(b"\x89PNG truncated")
    return root


@pytest.mark.parametrize("case, extra, message", [
    ("missing folder", ["data.source=folder", "data.path={tmp}/nowhere"], "data folder not found"),
    ("empty class", ["data.source=folder", "data.path={empty}"], "holds no PNG or JPEG images"),
    ("unreadable image", ["data.source=folder", "data.path={broken}"], "unreadable image"),
    ("unknown key", ["fl.roundz=3"], "unknown config key 'fl.roundz'"),
    ("batch too large", ["fl.split.clients=[{images: 2, batch_size: 4}]"], "batch size 4 is larger than its 2 image"),
    ("NaN lr", ["optimizer.lr=.nan"], "optimizer.lr must be a positive number, got nan"),
    ("negative lr", ["optimizer.lr=-0.1"], "optimizer.lr must be a positive number"),
    ("1x1 BN maps", ["model.name=resnet18", "model.resize_to=0", "data.image_size=32",
                     "fl.split.clients=[{images: 4, batch_size: 2}, {images: 1, batch_size: 1}]"], "one value per channel"),
])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing_complete(tmp_path, capsys, case, extra, message):
    paths = {"tmp": tmp_path, "empty": _folder(tmp_path / "e", empty=True), "broken": _folder(tmp_path / "b", broken=True)}
    out = tmp_path / "run"
    argv = TINY + [e.replace("{tmp}", str(paths["tmp"])).replace("{empty}", str(paths["empty"])).replace("{broken}", str(paths["broken"])) for e in extra] + ["--out", str(out)]
    code, err = _train(argv, capsys)
    assert code == 2, case
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_failure_mid_run_leaves_a_marked_partial_folder_and_keeps_the_old_run(tmp_path, capsys, monkeypatch):
    import train
    from federation.federation import Federation

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"state": "complete"}')  # an earlier complete run must survive

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Federation, "aggregate_round", boom)
    with pytest.raises(RuntimeError):
        train.main(TINY + ["--out", str(out), "--overwrite"])  # replacing it fails half-way
    assert (out / "run.json").read_text() == '{"state": "complete"}'
    partial = tmp_path / "run.partial"
    assert "disk full" in (partial / "FAILED").read_text()
    assert not (partial / "run.json").exists()


def test_train_cli_end_to_end_and_help(tmp_path):
    out = tmp_path / "run"
    env_cmd = [sys.executable, "train.py", *TINY, "--out", str(out)]
    done = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test accuracy" in done.stdout
    assert (out / "run.json").is_file() and (out / "metrics.csv").is_file()
    bad = subprocess.run([sys.executable, "train.py", "nonsense.key=1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown config key 'nonsense'"
    helped = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    for key in ("fl.rounds", "fl.split.clients", "privacy.filters", "capture.rounds", "model.resize_to", "optimizer.momentum"):
        assert key in helped.stdout, key
