"""dp_gaussian as a practitioner deploys it, in a federation: central noise added once by the server, adaptive
clipping driven by the clients' bits, both resumable and refused where the server half would not run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from common.errors import UserError
from common.files import load_tensors, read_json
from federation.fedavg import client_weights
from federation.federation import Federation
from federation.in_process import InProcessEngine
from federation.run_layout import RunLayout
from federation.update_store import load_update
from tests.conftest import interrupted_then_resumed, tiny_train_config

ADAPTIVE = [{"name": "dp_gaussian", "clip_norm": 0.05, "noise_multiplier": 0.0, "clip_quantile": 0.5, "clip_lr": 0.5}]
CENTRAL = [{"name": "dp_gaussian", "clip_norm": 0.5, "noise_multiplier": 0.5}]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _lines(run: RunLayout) -> list[dict]:
    return [json.loads(line) for line in run.server_privacy.read_text().splitlines()]


def test_adaptive_clipping_follows_the_clients_bits_round_after_round(tmp_path):
    InProcessEngine(Federation(tiny_train_config(tmp_path, **{"fl.rounds": 3, "privacy.filters": ADAPTIVE}))).run(tmp_path)
    run = RunLayout(tmp_path)
    lines = _lines(run)
    assert [line["round"] for line in lines] == [0, 1, 2]
    clip = 0.05
    for line in lines:
        rnd = line["round"]
        effects = [read_json(run.batches(rnd, c))["filter_effects"][0] for c in range(3)]
        assert all(e["clip_norm"] == pytest.approx(clip) for e in effects)  # every client clipped with the server's C
        bits = [1.0 if e["norm_before"] <= clip else 0.0 for e in effects]
        clip = clip * math.exp(-0.5 * (sum(bits) / 3 - 0.5))
        assert line["effects"][0]["next_clip_norm"] == pytest.approx(clip) and line["state"] == [{"clip_norm": pytest.approx(clip)}]
    assert clip > 0.05  # the first C (0.05) was below every update norm: it grew toward the median


def test_central_noise_is_the_servers_and_never_in_the_update_that_leaves(tmp_path):
    fed = Federation(tiny_train_config(tmp_path, **{"fl.rounds": 1, "privacy.filters": CENTRAL}))
    InProcessEngine(fed).run(tmp_path)
    run = RunLayout(tmp_path)
    updates = [load_update(run.update(0, c))[0] for c in range(3)]
    raw = [load_tensors(run.ground_truth(0, c) / "update_prefilter.safetensors") for c in range(3)]
    for sent, before in zip(updates, raw):  # the client only clips: the sent update is a scaled copy
        conv = next(k for k in sent if k.endswith(".weight") and sent[k].dim() == 4)
        ratio = (sent[conv] / before[conv])[before[conv].abs() > 1e-6]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4) and float(ratio[0]) <= 1.0 + 1e-6
    weights = client_weights([8, 6, 1], [2, 2, 1], "steps")
    g0, g1 = load_tensors(run.global_model(0)), load_tensors(run.global_model(1))
    noise = []
    for key in g0:
        if not g0[key].is_floating_point():
            continue
        mean = sum(w * u[key].double() for w, u in zip(weights, updates))
        residual = g1[key].double() - g0[key].double() - mean
        if key.endswith(BUFFERS):
            assert residual.abs().max() < 1e-5, key  # parts: weights: the buffers are averaged as sent
        else:
            noise.append(residual.flatten())
    std = torch.cat(noise).std().item()
    expected = 0.5 * 0.5 * max(weights)  # z C w_max
    assert _lines(run)[0]["effects"][0]["central_noise_std"] == pytest.approx(expected)
    assert std == pytest.approx(expected, rel=0.1)


def test_a_resumed_adaptive_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    noisy = [dict(ADAPTIVE[0], noise_multiplier=0.3)]
    InProcessEngine(Federation(tiny_train_config(full, **{"fl.rounds": 3, "privacy.filters": noisy}))).run(full)
    interrupted_then_resumed(tiny_train_config(cut, **{"fl.rounds": 3, "privacy.filters": noisy}), 1, monkeypatch)
    a, b = load_tensors(RunLayout(full).global_model(3)), load_tensors(RunLayout(cut).global_model(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _lines(RunLayout(full)) == _lines(RunLayout(cut))


def test_server_halves_are_refused_where_the_server_would_not_run_them(tmp_path):
    with pytest.raises(UserError, match="runs on fl.engine=simulation only"):
        Federation(tiny_train_config(tmp_path, **{"fl.engine": "nvflare", "privacy.filters": CENTRAL}))
    with pytest.raises(UserError, match="fl.workers > 0"):
        Federation(tiny_train_config(tmp_path, **{"fl.workers": 2, "privacy.filters": ADAPTIVE}))
    Federation(tiny_train_config(tmp_path, **{"fl.engine": "nvflare", "privacy.filters": [dict(CENTRAL[0], noise="local")]}))
