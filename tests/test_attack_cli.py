"""attack.py end to end on a tiny run, and its bad-input contract."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from common.errors import run_cli
from common.files import load_tensors

FAST = ["optim.iterations=20", "logging.wandb=false", "logging.progress=false"]


def _attack(argv, capsys):
    import attack

    with pytest.raises(SystemExit) as info:
        run_cli(lambda: attack.main(argv))
    return info.value.code, capsys.readouterr().err.strip()


def test_attack_cli_writes_scored_outputs(tiny_run, tmp_path):
    import attack

    out = tmp_path / "attack"
    attack.main(FAST + ["--run", str(tiny_run), "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("ssim", "psnr", "rdlv", "label_accuracy", "iterations", "seconds", "per_image", "threat_model"):
        assert key in metrics, key
    assert metrics["iterations"] == 20
    assert metrics["update"].endswith("round_1/client_2")  # the 1-image client of the latest round
    assert len(metrics["per_image"]) == 1 and -1 <= metrics["ssim"] <= 1
    assert (out / "reconstruction.png").stat().st_size > 1000
    assert load_tensors(out / "reconstruction.safetensors")["images"].shape == (1, 1, 16, 16)
    assert "training images" in metrics["threat_model"]["not_given"]


def _copy_update(tiny_run, tmp_path):
    src = tiny_run / "updates" / "round_1" / "client_0"
    dst = tmp_path / "updates" / "round_1" / "client_0"
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["global_model"] = str(tiny_run / "global" / "round_1.safetensors")
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst, meta


def _corrupt(case, dst, meta):
    upd = dst / "update.safetensors"
    if case == "missing":
        shutil.rmtree(dst)
    elif case == "truncated":
        upd.write_bytes(upd.read_bytes()[:200])
    elif case == "corrupt":
        upd.write_bytes(b"\x00garbage" * 50)
    elif case == "nan":
        t = load_tensors(upd)
        t["backbone.fc.weight"][0, 0] = float("nan")
        save_file(t, str(upd))
    elif case == "inf":
        t = load_tensors(upd)
        t["backbone.features.0.weight"].view(-1)[3] = float("inf")
        save_file(t, str(upd))
    elif case == "model mismatch":
        meta["model"]["width"] = 16
        (dst / "meta.json").write_text(json.dumps(meta))
    elif case == "shape mismatch":
        meta["input_shape"] = [3, 16, 16]
        (dst / "meta.json").write_text(json.dumps(meta))
    elif case == "optimizer":
        meta["optimizer"]["name"] = "rmsprop"
        (dst / "meta.json").write_text(json.dumps(meta))
    elif case == "steps":
        meta["local_steps"] = 5
        (dst / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case, message", [
    ("missing", "update folder not found"),
    ("truncated", "is truncated or corrupt"),
    ("corrupt", "is truncated or corrupt"),
    ("nan", "holds NaN values in 'backbone.fc.weight'"),
    ("inf", "holds Inf values in 'backbone.features.0.weight'"),
    ("model mismatch", "does not fit the metadata's model"),
    ("shape mismatch", "input_shape [3, 16, 16] does not fit"),
    ("optimizer", "does not support optimizer 'rmsprop'"),
    ("steps", "num_batches_tracked"),
])
def test_bad_update_is_one_line_nonzero_and_writes_nothing(tiny_run, tmp_path, capsys, case, message):
    dst, meta = _copy_update(tiny_run, tmp_path)
    _corrupt(case, dst, meta)
    out = tmp_path / "out"
    code, err = _attack(FAST + ["--update", str(dst), "--out", str(out)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_unknown_objective_term_and_missing_run(tmp_path, capsys):
    code, err = _attack(FAST + ["--run", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no captured updates" in err
    code, err = _attack(FAST + ["--run", str(tmp_path), "objective={fancy: {weight: 1}}"], capsys)
    assert code == 2


@pytest.mark.parametrize("value", [".nan", "-0.1", "0", ".inf"])
def test_attack_lr_must_be_a_positive_number(tiny_run, tmp_path, capsys, value):
    update = tiny_run / "updates" / "round_1" / "client_2"
    code, err = _attack(FAST + ["--update", str(update), "--out", str(tmp_path / "a"), f"optim.lr={value}"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "optim.lr must be a positive number" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
