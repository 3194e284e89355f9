"""attack.py end to end on a tiny run, and its bad-input contract."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from common.errors import UserError, run_cli
from common.files import load_tensors

FAST = ["optim.iterations=20", "logging.wandb=false", "logging.progress=false", "escalation.enabled=false"]


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
    shutil.copytree(tiny_run / "global", tmp_path / "global")  # the update's relative global_model path still holds
    meta = json.loads((dst / "meta.json").read_text())
    return dst, meta


def _set(meta, dotted, value):
    *path, last = dotted.split(".")
    for part in path:
        meta = meta[part]
    if value is _DELETE:
        del meta[last]
    else:
        meta[last] = value


_DELETE = object()


# meta.json problems (issue 14): each ends in one line naming the field.
META_CASES = {
    "string lr": ({"optimizer.lr": "0.1"}, "'optimizer.lr': Input should be a valid number (got '0.1')"),
    "nan lr": ({"lr": float("nan")}, "'lr': Input should be a finite number"),
    "string batch_size": ({"batch_size": "1"}, "'batch_size': Input should be a valid integer (got '1')"),
    "null batch_size": ({"batch_size": None}, "'batch_size': Input should be a valid integer (got None)"),
    "optimizer string": ({"optimizer": "sgd"}, "'optimizer': Input should be a valid dictionary"),
    "string width": ({"model.width": "16"}, "'model.width': Input should be a valid integer (got '16')"),
    "negative image_size": ({"model.image_size": -16}, "'model.image_size': Input should be greater than or equal to 1"),
    "input_shape int": ({"input_shape": 16}, "'input_shape': Input should be a valid list (got 16)"),
    "withheld_keys int": ({"withheld_keys": 12}, "'withheld_keys': Input should be a valid list (got 12)"),
    "local_epochs": ({"local_epochs": 3}, "local_steps 2 does not fit local_epochs 3 of ceil(8/4) = 2 steps"),
    "batch over images": ({"batch_size": 16}, "batch_size 16 exceeds num_images 8"),
    "missing key": ({"bn_momentum": _DELETE}, "lacks bn_momentum"),
    "global_model absolute": ({"global_model": "/etc/passwd"}, "global_model '/etc/passwd' points outside"),
    "global_model escapes": ({"global_model": "../../../../../../etc/passwd"}, "points outside"),
    "withheld unknown": ({"withheld_keys": ["backbone.nothing"]}, "withheld_keys names 'backbone.nothing'"),
    "lr differs": ({"lr": 0.5}, "lr 0.5 differs from optimizer.lr"),
    "normalization differs": ({"normalization.mean": [0.2]}, "normalization.mean [0.2] differs from model.norm_mean"),
    "value range": ({"normalization.value_range": [0, 255]}, "normalization.value_range [0, 255] is not supported"),
}


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
    elif case == "huge":
        t = load_tensors(upd)
        t["backbone.fc.weight"].view(-1)[1] = 1e30
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
        meta["local_epochs"] = 3  # 5 steps of ceil(8/4) = 2 per epoch: a consistent procedure, contradicted by the counters
        (dst / "meta.json").write_text(json.dumps(meta))
    elif case in ("float64", "int weight", "absent", "empty", "withheld but present"):
        t = load_tensors(upd)
        if case == "float64":
            t["backbone.fc.weight"] = t["backbone.fc.weight"].double()
        elif case == "int weight":
            t["backbone.fc.bias"] = t["backbone.fc.bias"].long()
        elif case == "absent":
            del t["backbone.fc.bias"]
        elif case == "empty":
            t = {}
        else:
            meta["withheld_keys"] = ["backbone.fc.bias"]
            (dst / "meta.json").write_text(json.dumps(meta))
        save_file(t, str(upd))
    elif case in META_CASES:
        for key, value in META_CASES[case][0].items():
            _set(meta, key, value)
        (dst / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case, message", [
    ("missing", "update folder not found"),
    ("truncated", "is truncated or corrupt"),
    ("corrupt", "is truncated or corrupt"),
    ("nan", "holds NaN values in 'backbone.fc.weight'"),
    ("inf", "holds Inf values in 'backbone.features.0.weight'"),
    ("huge", "update entry 'backbone.fc.weight' changes by up to 1e+30, more than 1e+06 times the global model's entry"),
    ("model mismatch", "does not fit the metadata's model"),
    ("shape mismatch", "input_shape [3, 16, 16] does not fit"),
    ("optimizer", "does not support optimizer 'rmsprop'"),
    ("steps", "num_batches_tracked"),
    ("float64", "'backbone.fc.weight' is float64, the model's entry is float32"),
    ("int weight", "'backbone.fc.bias' is int64, the model's entry is float32"),
    ("absent", "update lacks 'backbone.fc.bias', which withheld_keys does not list"),
    ("empty", "holds no tensors"),
    ("withheld but present", "'backbone.fc.bias' is listed in withheld_keys but present"),
] + [(case, message) for case, (_, message) in META_CASES.items()])
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


def test_model_metadata_without_optional_fields_is_complete():
    """A converter may leave out fields with defaults (width, depth, zero_init_last, kwargs)."""
    from model.factory import ModelSpec

    spec = ModelSpec.from_dict({"name": "bn_convnet", "in_chans": 1, "num_classes": 2, "image_size": 16, "resize_to": 0,
                                "norm_mean": [0.5], "norm_std": [0.5], "bn_momentum": 0.1})
    assert (spec.width, spec.depth, spec.zero_init_last, spec.kwargs) == (32, 4, False, {})
    with pytest.raises(UserError, match="lacks \\['bn_momentum'\\]"):
        ModelSpec.from_dict({"name": "bn_convnet", "in_chans": 1, "num_classes": 2, "image_size": 16, "resize_to": 0,
                             "norm_mean": [0.5], "norm_std": [0.5]})


def test_a_multi_image_update_is_attacked_with_the_batch_config_unless_one_is_named(tiny_run, tmp_path, capsys):
    import yaml

    import attack

    update = str(tiny_run / "updates" / "round_1" / "client_0")  # 8 images, batch 4
    attack.main(FAST + ["optim.compile=false", "--update", update, "--out", str(tmp_path / "auto")])
    assert "had 8 images: attacking with configs/attack/batch.yaml" in capsys.readouterr().out
    from pipelines.attack_plan import BATCH_FILE

    batch = yaml.safe_load(BATCH_FILE.read_text())
    used = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert used["objective"]["update_matching"]["weight"] == batch["objective"]["update_matching"]["weight"] > 0
    attack.main(FAST + ["--config", str(attack.AttackConfig.DEFAULT_FILE), "--update", update, "--out", str(tmp_path / "named")])
    assert "batch.yaml" not in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "named" / "config.yaml").read_text())["objective"]["update_matching"]["weight"] == 0


def test_a_budget_that_cuts_an_unconverged_attack_short_is_warned(tiny_run, tmp_path, capsys):
    import attack

    attack.main(["--run", str(tiny_run), "--out", str(tmp_path / "att"), "optim.iterations=100000", "optim.max_seconds=0.05",
                 "logging.wandb=false", "logging.progress=false", "escalation.enabled=false"])
    err = capsys.readouterr().err
    metrics = json.loads((tmp_path / "att" / "metrics.json").read_text())
    assert metrics["iterations"] < 100000 and not metrics["converged"]  # a few steps from the prior: far from converged
    assert "warning: the time budget (optim.max_seconds=0.05) bought" in err and "of the configured 100000 iterations" in err, err
    attack.main(["--run", str(tiny_run), "--out", str(tmp_path / "full"), "optim.iterations=3", "logging.wandb=false",
                 "logging.progress=false", "escalation.enabled=false"])
    assert "time budget" not in capsys.readouterr().err  # every configured iteration ran: nothing to blame on the budget


def test_force_attacks_an_implausible_update_that_is_otherwise_refused(tiny_run, tmp_path, capsys):
    import attack

    dst, meta = _copy_update(tiny_run, tmp_path)
    _corrupt("huge", dst, meta)
    code, err = _attack(FAST + ["--config", str(attack.AttackConfig.DEFAULT_FILE), "--update", str(dst), "--out", str(tmp_path / "refused")], capsys)
    assert code == 2 and "--force attacks it anyway" in err, err
    attack.main(FAST + ["--config", str(attack.AttackConfig.DEFAULT_FILE), "optim.iterations=2", "--update", str(dst), "--out", str(tmp_path / "forced"), "--force"])
    assert (tmp_path / "forced" / "metrics.json").is_file()
