"""Updates from someone else's client: plain PyTorch, their own model (by import path), converted
with convert.py, attacked and scored against images they give (issue 13)."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.data import lfw_subset

from common.errors import UserError
from tests.conftest import run_entry

ROOT = Path(__file__).resolve().parent.parent
FAST = ["logging.wandb=false", "logging.progress=false", "scoring.lpips=false", "escalation.enabled=false"]


def _cli(module: str, argv, capsys):
    import attack
    import convert

    return run_entry({"attack": attack.main, "convert": convert.main}[module], argv, capsys)


def _plain_client(folder: Path, zero_bias: bool = False) -> None:
    """A client that knows nothing of this project: TinyNet, one 25x25 face, one SGD step (batch 1)."""
    from tests.foreign_models import TinyNet

    torch.manual_seed(0)
    model = TinyNet()
    torch.save(model.state_dict(), folder / "global.pt")
    image = torch.tensor(lfw_subset()[0], dtype=torch.float32)[None, None]
    label = torch.tensor([0])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model((image - 0.5) / 0.5), label).backward()
    if zero_bias:  # a confident model: the classifier's bias gradient is exactly zero
        model.head.bias.grad.zero_()
    optimizer.step()
    torch.save(model.state_dict(), folder / "client_after.pt")
    save_file({"images": image, "labels": label}, str(folder / "ground_truth.safetensors"))


CONVERT = ["--model", "tests.foreign_models:TinyNet", "--in-chans", "1", "--image-size", "25", "--num-classes", "2",
           "--norm-mean", "0.5", "--norm-std", "0.5", "--global", "global.pt", "--local", "client_after.pt", "--optimizer", "sgd",
           "--lr", "0.05", "--num-images", "1", "--batch-size", "1"]
TRUST = ["trusted_models=[tests.foreign_models:TinyNet]"]


@pytest.fixture()
def converted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    code, err = _cli("convert", CONVERT + ["--out", "upd"], capsys)
    assert code == 0, err
    return tmp_path / "upd"


def test_custom_module_by_import_path_is_converted_attacked_and_scored(converted, tmp_path, capsys):
    meta = json.loads((converted / "meta.json").read_text())
    assert meta["model"]["name"] == "tests.foreign_models:TinyNet" and meta["global_model"] == "global_model.safetensors"
    # a 2-BN-layer model gives the BN prior little to hold on to; its flatten head leaks through update matching
    code, err = _cli("attack", ["--update", str(converted), "--ground-truth", "ground_truth.safetensors", "--out", "att",
                                "optim.iterations=200", "optim.restarts=2", "objective.update_matching.weight=1", *TRUST, *FAST], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "att" / "metrics.json").read_text())
    assert metrics["ssim"] >= 0.6, metrics["ssim"]
    assert metrics["label_accuracy"] == 1.0 and metrics["label_warning"] is None
    assert metrics["activations_not_smoothed"] == []
    assert (tmp_path / "att" / "reconstruction.png").stat().st_size > 1000


def test_the_converter_hint_quotes_the_trusted_model_for_the_shell(tmp_path, capsys, monkeypatch):
    import convert

    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    convert.main(CONVERT + ["--out", "upd"])
    out = capsys.readouterr().out
    assert "python attack.py --update upd 'trusted_models=[tests.foreign_models:TinyNet]'" in out, out  # unquoted [...] is a glob


def test_a_model_outside_the_project_is_pointed_to_pythonpath(tmp_path, capsys, monkeypatch):
    """Your own module: the import error names PYTHONPATH, and the printed attack command carries it."""
    code_dir = tmp_path / "clinic code"  # a space: the printed command must quote it
    code_dir.mkdir()
    (code_dir / "clinic_models.py").write_text("from tests.foreign_models import TinyNet\n")
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    argv = [a if a != "tests.foreign_models:TinyNet" else "clinic_models:TinyNet" for a in CONVERT] + ["--out", "upd"]
    code, err = _cli("convert", argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "No module named 'clinic_models'" in err, err
    assert "put the folder that holds 'clinic_models' on PYTHONPATH" in err and not (tmp_path / "upd").exists()
    monkeypatch.syspath_prepend(str(code_dir))
    monkeypatch.delitem(sys.modules, "clinic_models", raising=False)
    import convert

    convert.main(argv)
    out = capsys.readouterr().out
    assert f"attack it with: PYTHONPATH={shlex.quote(str(code_dir.resolve()))} python attack.py --update upd 'trusted_models=[clinic_models:TinyNet]'" in out, out
    monkeypatch.delitem(sys.modules, "clinic_models", raising=False)


def test_the_prior_is_said_beside_rdlv_and_a_missing_one_is_pointed_out(converted, capsys):
    import attack

    attack.main(["--update", str(converted), "--ground-truth", "ground_truth.safetensors", "--out", "att",
                 "optim.iterations=3", "optim.restarts=1", *TRUST, *FAST])
    out = capsys.readouterr().out
    assert "against uniform grey (no population prior given)" in out and "no population prior: " in out and "prior.path=FILE" in out, out
    assert json.loads((converted.parent / "att" / "metrics.json").read_text())["prior"].startswith("uniform grey")


def test_an_import_path_from_metadata_is_not_imported_unless_trusted(converted, capsys):
    code, err = _cli("attack", ["--update", str(converted), "--out", "att", *FAST], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "'trusted_models=[tests.foreign_models:TinyNet]'" in err, err


def test_converter_prints_a_key_diff_when_the_model_does_not_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    code, err = _cli("convert", [a if a != "tests.foreign_models:TinyNet" else "bn_convnet" for a in CONVERT] + ["--out", "upd"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "does not fit the model: missing" in err and "unexpected" in err, err
    assert not (tmp_path / "upd").exists() and not (tmp_path / "upd.partial").exists()


def test_broken_ground_truth_is_one_line_before_any_work(converted, tmp_path, capsys):
    (tmp_path / "broken.safetensors").write_bytes(b"\x00not safetensors" * 20)
    code, err = _cli("attack", ["--update", str(converted), "--ground-truth", "broken.safetensors", "--out", "att", *TRUST, *FAST], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and "broken.safetensors" in err, err
    save_file({"images": torch.rand(2, 1, 25, 25)}, str(tmp_path / "two.safetensors"))
    code, err = _cli("attack", ["--update", str(converted), "--ground-truth", "two.safetensors", "--out", "att", *TRUST, *FAST], capsys)
    assert code == 2 and "the update's client had 1 image(s)" in err, err
    assert not (tmp_path / "att").exists() and not (tmp_path / "att.partial").exists()


def test_a_scoring_failure_keeps_the_reconstruction(converted, tmp_path, capsys, monkeypatch):
    import pipelines.attack_job as job

    def broken(*args, **kwargs):
        raise UserError("the scorer broke")

    monkeypatch.setattr(job, "score_as_configured", broken)
    code, err = _cli("attack", ["--update", str(converted), "--ground-truth", "ground_truth.safetensors", "--out", "att",
                                "optim.iterations=5", "optim.restarts=1", *TRUST, *FAST], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "scoring failed (the scorer broke)" in err, err
    partial = tmp_path / "att.partial"
    assert (partial / "reconstruction.png").is_file() and (partial / "reconstruction.safetensors").is_file()
    assert not (tmp_path / "att").exists()  # nothing that looks complete


def test_label_ambiguity_is_warned_and_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path, zero_bias=True)
    assert _cli("convert", CONVERT + ["--out", "upd"], capsys)[0] == 0
    code, err = _cli("attack", ["--update", "upd", "--out", "att", "optim.iterations=3", "optim.restarts=1", *TRUST, *FAST], capsys)
    assert code == 0, err
    warning = json.loads((tmp_path / "att" / "metrics.json").read_text())["label_warning"]
    assert warning and "does not determine the label" in warning and "chose [0]" in warning
    assert "warning: the classifier's update does not determine the label" in err


def test_the_smooth_replay_reaches_functional_relu_and_names_what_it_cannot():
    from inversion.functional import FunctionalModel
    from tests.foreign_models import TinyNet

    model = TinyNet().train()
    fm = FunctionalModel(model, "smooth", 10.0)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.rand(1, 1, 25, 25, requires_grad=True)

    def second_order(fmodel):
        out, _ = fmodel(params, x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), x)[0]

    exact = FunctionalModel(model, "exact")
    assert torch.allclose(fm(params, x)[0], exact(params, x)[0])  # the same values
    assert not torch.allclose(second_order(fm), second_order(exact))  # F.relu got the smooth slope
    assert fm.unsmoothed == []
    kinked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(), nn.Flatten(), nn.Linear(4 * 23 * 23, 2))
    assert FunctionalModel(kinked, "smooth", 10.0).unsmoothed == ["2 (LeakyReLU)"]


def _blocks(text: str, lang: str, after: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text[text.index(after):], flags=re.S)


def test_the_worked_example_in_update_format_md_runs_as_written(tmp_path):
    """The doc's client.py and its commands, run from a folder beside the project (../ = the project),
    with fewer attack iterations appended to keep CI short."""
    doc = (ROOT / "docs" / "update-format.md").read_text()
    python, shell = _blocks(doc, "python", "### Worked example")[0], _blocks(doc, "bash", "### Worked example")[0]
    example = tmp_path / "example"
    example.mkdir()
    (example / "client.py").write_text(python)
    commands = [shlex.split(c) for c in shell.replace("\\\n", " ").splitlines() if c.strip()]
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "WANDB_MODE": "disabled", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}
    for argv in commands:
        assert argv[0] == "python"
        argv = [sys.executable] + [str(ROOT / a[3:]) if a.startswith("../") else a for a in argv[1:]]
        if argv[1].endswith("attack.py"):
            argv += ["optim.iterations=40", "optim.restarts=1", *FAST]
        done = subprocess.run(argv, cwd=example, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stderr[-1500:])
    metrics = json.loads((example / "my_attack" / "metrics.json").read_text())
    assert metrics["ssim"] is not None and metrics["update"].endswith("my_update")


@pytest.mark.parametrize("extra, message", [
    (["--model-kwargs", "["], "--model-kwargs is not YAML/JSON"),
    (["--num-images", "0"], "not a local procedure"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--global", "nothing.pt"], "global model not found: nothing.pt"),
    (["--delta", "client_after.pt"], "one of them"),
])
def test_converter_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    code, err = _cli("convert", CONVERT + extra + ["--out", "upd"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "upd").exists() and not (tmp_path / "upd.partial").exists()


def test_a_wrapper_prefix_is_named_in_the_error_and_stripped_on_request(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    for name in ("global.pt", "client_after.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        torch.save({f"net.{k}": v for k, v in state.items()}, tmp_path / name)  # the model lives in a wrapper's .net
    code, err = _cli("convert", CONVERT + ["--out", "upd"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "every key of yours carries the prefix 'net.': pass --strip-prefix net." in err, err
    assert not (tmp_path / "upd").exists()
    code, err = _cli("convert", CONVERT + ["--out", "upd", "--strip-prefix", "net."], capsys)
    assert code == 0, err
    assert (tmp_path / "upd" / "meta.json").is_file()


def test_a_dtype_cast_is_said(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    state = torch.load(tmp_path / "global.pt", weights_only=True)
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "global.pt")
    code, err = _cli("convert", CONVERT + ["--out", "upd"], capsys)
    assert code == 0 and "note: the global model:" in err and "cast to the model's dtype (float64 -> float32)" in err, err


def test_an_unshuffled_multi_epoch_client_is_converted_and_replayed_exactly(tmp_path, capsys, monkeypatch):
    """--no-shuffle: every epoch in the first epoch's order, which the replay then follows (4 images, batch 2, 2 epochs)."""
    from skimage.data import lfw_subset

    from inversion.functional import FunctionalModel
    from inversion.replay import ClientProcedure, LocalTrainingReplay
    from inversion.threat_model import ThreatConfig, load_knowledge
    from tests.foreign_models import TinyNet

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = TinyNet()
    torch.save(model.state_dict(), tmp_path / "global.pt")
    images = torch.tensor(lfw_subset()[:4], dtype=torch.float32)[:, None]
    labels = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _epoch in range(2):
        for batch in (slice(0, 2), slice(2, 4)):  # a DataLoader with shuffle=False
            optimizer.zero_grad()
            F.cross_entropy(model((images[batch] - 0.5) / 0.5), labels[batch]).backward()
            optimizer.step()
    torch.save(model.state_dict(), tmp_path / "client_after.pt")
    argv = [a for a in CONVERT]
    argv[argv.index("--num-images") + 1], argv[argv.index("--batch-size") + 1] = "4", "2"
    code, err = _cli("convert", argv + ["--epochs", "2", "--no-shuffle", "--out", "upd"], capsys)
    assert code == 0, err
    kn = load_knowledge(tmp_path / "upd", ThreatConfig(), trusted_models=["tests.foreign_models:TinyNet"])
    proc = ClientProcedure.from_meta(kn.meta)
    assert not kn.meta["shuffle"] and [b.tolist() for b in proc.batches()] == [[0, 1], [2, 3], [0, 1], [2, 3]]
    fm = FunctionalModel(kn.global_model(), "exact")
    params0 = {n: p.detach() for n, p in kn.global_model().named_parameters()}
    out = LocalTrainingReplay(fm, params0, proc).run(images, labels, proc.batches())
    num = sum(float((out.delta[k] - kn.update[k]).pow(2).sum()) for k in out.delta)
    den = sum(float(kn.update[k].pow(2).sum()) for k in out.delta)
    assert (num / den) ** 0.5 < 1e-5
    shuffled = ClientProcedure(**{**proc.__dict__, "shuffle": True})
    assert [b.tolist() for b in shuffled.batches()][2:] != [[0, 1], [2, 3]]  # the default assumes an unknown later order


def test_a_model_that_normalises_itself_is_not_normalised_twice(tmp_path, capsys, monkeypatch):
    from tests.foreign_models import NormalisingNet

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = NormalisingNet()
    torch.save(model.state_dict(), tmp_path / "global.pt")
    model.train()
    F.cross_entropy(model(torch.rand(1, 1, 25, 25)), torch.tensor([0])).backward()  # one local step (BN counters: 1)
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    torch.save(model.state_dict(), tmp_path / "client_after.pt")
    argv = ["tests.foreign_models:NormalisingNet" if a == "tests.foreign_models:TinyNet" else a for a in CONVERT]
    code, err = _cli("convert", argv + ["--out", "upd"], capsys)  # CONVERT passes --norm-mean 0.5 --norm-std 0.5
    assert code == 2 and "the model normalises its input itself (mean, std)" in err and "leave them at their defaults" in err, err
    assert not (tmp_path / "upd").exists()
    plain = [a for i, a in enumerate(argv) if a not in ("--norm-mean", "--norm-std") and argv[i - 1] not in ("--norm-mean", "--norm-std")]
    code, err = _cli("convert", plain + ["--out", "upd"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name, message", [("global.pt", "the global model has non-finite values"),
                                           ("client_after.pt", "the delta (local model - global model) has non-finite values")])
def test_a_non_finite_model_is_refused_before_conversion(tmp_path, capsys, monkeypatch, name, message):
    """A NaN in the global model or the client's model is the client's bug: one line, nothing written (the attack
    would otherwise start from it and blame its own learning rate)."""
    monkeypatch.chdir(tmp_path)
    _plain_client(tmp_path)
    state = torch.load(tmp_path / name, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / name)
    code, err = _cli("convert", CONVERT + ["--out", "upd"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "upd").exists() and not (tmp_path / "upd.partial").exists()
