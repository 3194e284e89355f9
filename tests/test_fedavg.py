import torch

from federation.fedavg import apply_update, average_updates, client_weights


def _update(scale: float) -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.full((2, 3), scale),
        "bn.running_mean": torch.tensor([scale, -scale]),
        "bn.running_var": torch.tensor([2 * scale, scale]),
        "bn.num_batches_tracked": torch.tensor(int(scale), dtype=torch.long),
    }


def test_identical_updates_average_to_that_update():
    u = _update(3.0)
    ref = _update(0.0)
    for weighting in ("samples", "steps", "uniform"):
        w = client_weights([5, 1, 9], [2, 1, 3], weighting)
        avg = average_updates([u, u, u], w, ref)
        for k in u:
            assert torch.equal(avg[k], u[k]), (weighting, k)


def test_sample_and_step_weighting_match_hand_computation():
    a, b = _update(1.0), _update(4.0)
    ref = _update(0.0)
    # client a: 10 samples, 5 steps; client b: 30 samples, 1 step
    by_samples = average_updates([a, b], client_weights([10, 30], [5, 1], "samples"), ref)
    by_steps = average_updates([a, b], client_weights([10, 30], [5, 1], "steps"), ref)
    assert torch.allclose(by_samples["conv.weight"], torch.full((2, 3), 0.25 * 1 + 0.75 * 4))  # 3.25
    assert torch.allclose(by_steps["conv.weight"], torch.full((2, 3), 5 / 6 * 1 + 1 / 6 * 4))  # 1.5
    assert not torch.allclose(by_samples["conv.weight"], by_steps["conv.weight"])


def test_bn_running_statistics_are_averaged():
    a, b = _update(1.0), _update(3.0)
    avg = average_updates([a, b], [0.5, 0.5], _update(0.0))
    assert torch.allclose(avg["bn.running_mean"], torch.tensor([2.0, -2.0]))
    assert torch.allclose(avg["bn.running_var"], torch.tensor([4.0, 2.0]))
    assert avg["bn.num_batches_tracked"].dtype == torch.long and int(avg["bn.num_batches_tracked"]) == 2


def test_withheld_entry_renormalises_over_the_clients_that_sent_it():
    a, b = _update(1.0), _update(3.0)
    del b["bn.running_mean"]
    avg = average_updates([a, b], [0.25, 0.75], _update(0.0))
    assert torch.allclose(avg["bn.running_mean"], a["bn.running_mean"])  # only a sent it: weight 1
    assert torch.allclose(avg["conv.weight"], torch.full((2, 3), 0.25 + 2.25))


def test_apply_update_adds_deltas():
    state = _update(1.0)
    new = apply_update(state, _update(2.0))
    assert torch.allclose(new["conv.weight"], torch.full((2, 3), 3.0))
    assert int(new["bn.num_batches_tracked"]) == 3
