"""threat.reconstruct_at_input: the attacker reconstructs at the size the model sees (its input path's
resize_to), not at the data's size, which a real server need not know (issue 23)."""
from __future__ import annotations

import json

import pytest
import torch

from common.errors import UserError
from tests.conftest import tiny_train_config

FAST = ["optim.iterations=3", "optim.restarts=1", "optim.grid={}", "optim.select=objective", "logging.wandb=false",
        "logging.progress=false", "scoring.lpips=false", "escalation.enabled=false"]


@pytest.fixture(scope="module")
def resized_run(tmp_path_factory):
    """A tiny federation whose model resizes its 16 px images to 24 px."""
    from federation.federation import Federation
    from federation.in_process import InProcessEngine

    out = tmp_path_factory.mktemp("resized") / "run"
    out.mkdir()
    InProcessEngine(Federation(tiny_train_config(out, **{"model.resize_to": 24}))).run(out)
    return out


def test_the_attacker_at_the_input_size_builds_the_same_model_and_resizes_only_the_prior(resized_run):
    from federation.run_layout import RunLayout
    from inversion.threat_model import ThreatConfig, at_input_resolution, load_knowledge

    update = RunLayout(resized_run).update(1, 2)
    prior = torch.rand(1, 16, 16)
    knowledge = load_knowledge(update, ThreatConfig(), prior=prior, prior_source="test")
    seen = at_input_resolution(knowledge)
    assert (knowledge.spec.image_size, seen.spec.image_size) == (16, 24) and seen.prior.shape == (1, 24, 24)
    assert seen.native_prior is knowledge.prior and seen.scoring_prior is knowledge.prior and knowledge.scoring_prior is knowledge.prior
    assert torch.equal(knowledge.prior, prior)
    a, b = knowledge.global_model(), seen.global_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.rand(2, 1, 24, 24)
    assert torch.equal(b.input_path(x), (x - b.input_path.mean) / b.input_path.std)  # a 24 px dummy is not resized again
    small = torch.rand(2, 1, 16, 16)  # the client's 16 px image reaches the backbone as the same 24 px input either way
    assert torch.equal(a(small), b(small))


def test_a_model_without_a_resize_is_refused(tiny_run):
    from federation.run_layout import RunLayout
    from inversion.threat_model import ThreatConfig, at_input_resolution, load_knowledge

    knowledge = load_knowledge(RunLayout(tiny_run).update(1, 2), ThreatConfig())
    with pytest.raises(UserError, match="needs a model whose input path resizes its images"):
        at_input_resolution(knowledge)


def test_the_attack_at_the_input_size_is_scored_at_the_data_size_against_the_data_size_prior(resized_run, tmp_path):
    import attack
    from common.files import load_tensors

    update = str(resized_run / "updates" / "round_1" / "client_2")
    attack.main(["--config", "configs/attack/default.yaml", "--update", update, "--out", str(tmp_path / "native"), *FAST])
    attack.main(["--config", "configs/attack/default.yaml", "--update", update, "--out", str(tmp_path / "input"),
                 "threat.reconstruct_at_input=true", *FAST])
    assert load_tensors(tmp_path / "native" / "reconstruction.safetensors")["images"].shape[-1] == 16
    assert load_tensors(tmp_path / "input" / "reconstruction.safetensors")["images"].shape[-1] == 24
    native, at_input = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("native", "input"))
    assert -1 <= at_input["ssim"] <= 1 and at_input["ssim_settings"] == native["ssim_settings"]  # scored at 16 px
    # RDLV's reference is the same 16 px prior in both: the prior's SSIM with each training image is identical
    assert [r["prior_ssim"] for r in at_input["per_image"]] == [r["prior_ssim"] for r in native["per_image"]]
