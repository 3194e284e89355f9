"""The capture callback records exactly what left the client, and ground truth that checks out."""

import torch
import torch.nn.functional as F

from federation.batch_statistics import batch_stats
from common.files import load_tensors, read_json
from federation.federation import Federation
from federation.in_process import InProcessEngine
from federation.run_layout import RunLayout
from federation.update_store import REQUIRED_META, load_update
from model.factory import batch_norm_layers, build_model
from tests.conftest import tiny_train_config


def test_captured_delta_is_after_minus_before_for_every_key(tmp_path):
    sim = Federation(tiny_train_config(tmp_path))
    before = {k: v.clone() for k, v in sim.global_model.state_dict().items()}
    result = sim.train_client(0, 0, before, 0.05, None)
    after = sim.client.model.state_dict()
    assert set(result.raw) == set(before)
    for key in before:
        assert torch.equal(result.raw[key], after[key] - before[key]), key
    assert int(result.raw["backbone.features.1.num_batches_tracked"]) == 2  # 8 images, batch 4
    assert result.raw["backbone.features.1.running_mean"].abs().sum() > 0
    assert result.raw["backbone.features.1.running_var"].abs().sum() > 0
    # no filters: what left the client is the raw delta
    assert all(torch.equal(result.outgoing[k], result.raw[k]) for k in result.raw)


def test_update_on_disk_and_metadata(tiny_run):
    delta, meta = load_update(RunLayout(tiny_run).update(1, 0))
    assert all(k in meta for k in REQUIRED_META)
    assert (meta["batch_size"], meta["num_images"], meta["local_steps"], meta["local_epochs"]) == (4, 8, 2, 1)
    assert meta["optimizer"]["name"] == "sgd" and meta["optimizer"]["lr"] == 0.05
    assert meta["normalization"]["mean"] == [0.5]
    assert meta["bn_momentum"] == 0.1
    assert meta["global_model"].endswith("round_1.safetensors")
    state = load_tensors(RunLayout(tiny_run).global_model(1))
    assert set(delta) == set(state)
    assert (tiny_run / "metrics.csv").read_text().count("\n") == 3  # header + 2 rounds
    gt = RunLayout(tiny_run).ground_truth(1, 0)
    assert (gt / "images.safetensors").is_file() and (gt / "bn_stats.safetensors").is_file()
    assert not (tiny_run / "updates" / "round_1" / "client_0" / "images.safetensors").exists()


def test_recorded_bn_statistics_equal_recomputation_from_recorded_batches(tiny_run):
    """Replay the real local training with torch.optim on the recorded batches and compare."""
    rnd, client = 1, 0
    _, meta = load_update(RunLayout(tiny_run).update(rnd, client))
    gt = RunLayout(tiny_run).ground_truth(rnd, client)
    images = load_tensors(gt / "images.safetensors")
    stats = load_tensors(gt / "bn_stats.safetensors")
    batches = read_json(gt / "batches.json")
    from model.factory import ModelSpec

    model = build_model(ModelSpec.from_dict(meta["model"]))
    model.load_state_dict(load_tensors(RunLayout(tiny_run).global_model(rnd)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=meta["optimizer"]["lr"])
    layers = batch_norm_layers(model)
    for t, step in enumerate(batches["steps"]):
        seen = {}
        hooks = [bn.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, batch_stats(i[0]))) for name, bn in layers]
        x = images["images"][step["positions"]]
        y = images["labels"][step["positions"]]
        loss = F.cross_entropy(model(x), y)
        for h in hooks:
            h.remove()
        for name, _ in layers:
            for k in ("mean", "var", "var_unbiased"):
                assert torch.allclose(stats[f"step_{t}/{name}/{k}"], seen[name][k], atol=1e-6, rtol=1e-5), (t, name, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # and the replayed training lands exactly on the captured update
    delta, _ = load_update(RunLayout(tiny_run).update(rnd, client))
    start = load_tensors(RunLayout(tiny_run).global_model(rnd))
    for key, value in model.state_dict().items():
        assert torch.allclose(value - start[key], delta[key].to(value.dtype), atol=1e-6), key


def test_global_model_is_checkpointed_every_round(tiny_run):
    for rnd in range(3):
        assert RunLayout(tiny_run).global_model(rnd).is_file()
    split = read_json(tiny_run / "split.json")
    assert [len(c["pool_indices"]) for c in split["clients"]] == [8, 6, 1]


def test_only_the_chosen_clients_and_rounds_are_written(tmp_path):

    cfg = tiny_train_config(tmp_path, **{"capture.clients": [2], "capture.rounds": [-1]})
    InProcessEngine(Federation(cfg)).run(tmp_path)
    assert [(r, c) for r, c, _ in RunLayout(tmp_path).updates()] == [(1, 2)]
    assert sorted(p.name for p in (tmp_path / "ground_truth").glob("round_*/client_*")) == ["client_2"]
