import pytest
import torch

from common.errors import UserError
from privacy import FilterChain, FilterContext


def _ctx(seed: int = 0) -> FilterContext:
    return FilterContext(torch.Generator().manual_seed(seed))


def _update() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "conv.weight": torch.randn(64, 32, 3, 3, generator=gen) * 0.01,
        "bn.weight": torch.randn(64, generator=gen) * 0.1,
        "bn.running_mean": torch.randn(64, generator=gen),
        "bn.running_var": torch.rand(64, generator=gen),
        "bn.num_batches_tracked": torch.tensor(3),
        "zeros": torch.zeros(100),
    }


def test_gaussian_noise_std_is_sigma0_times_p95_of_nonzero_abs_values():
    update = _update()
    chain = FilterChain.from_config([{"name": "gaussian", "sigma0": 2.0}])
    flat = torch.cat([v.abs().flatten() for k, v in update.items() if v.is_floating_point()])
    p95 = torch.quantile(flat[flat > 0].double(), 0.95).item()
    out, effects = chain.apply(dict(update), _ctx())
    assert effects[0]["noise_std"] == pytest.approx(2.0 * p95, rel=1e-6)
    noise = torch.cat([(out[k] - update[k]).flatten() for k in update if update[k].is_floating_point()])
    assert noise.std().item() == pytest.approx(2.0 * p95, rel=0.03)  # 18k samples
    assert abs(noise.mean().item()) < 0.05 * 2.0 * p95
    assert torch.equal(out["bn.num_batches_tracked"], update["bn.num_batches_tracked"])  # counters pass untouched


def test_gaussian_sigma0_zero_is_identity():
    update = _update()
    out, effects = FilterChain.from_config([{"name": "gaussian", "sigma0": 0.0}]).apply(dict(update), _ctx())
    assert effects[0]["noise_std"] == 0.0
    assert all(torch.equal(out[k], update[k]) for k in update)


def test_excluded_variables_are_absent():
    chain = FilterChain.from_config([{"name": "exclude", "regex": [r"running_(mean|var)$"], "names": ["bn.weight"]}])
    out, effects = chain.apply(_update(), _ctx())
    assert "bn.running_mean" not in out and "bn.running_var" not in out and "bn.weight" not in out
    assert "conv.weight" in out and "bn.num_batches_tracked" in out
    assert effects[0]["withheld"] == 3


def test_percentile_privacy_shares_the_largest_fraction_clipped():
    update = _update()
    out, effects = FilterChain.from_config([{"name": "percentile", "fraction": 0.1, "gamma": 0.5}]).apply(dict(update), _ctx())
    nonzero = sum(int((out[k] != 0).sum()) for k in out if out[k].is_floating_point())
    total = sum(update[k].numel() for k in update if update[k].is_floating_point())
    assert nonzero == pytest.approx(0.1 * total, rel=0.02)
    assert max(float(out[k].abs().max()) for k in out if out[k].is_floating_point()) <= 0.5
    assert effects[0]["shared_fraction"] == pytest.approx(0.1, rel=0.02)


def test_chain_order_is_explicit_and_bad_filters_are_user_errors():
    chain = FilterChain.from_config([{"name": "exclude", "names": ["zeros"]}, {"name": "gaussian", "sigma0": 1.0}])
    assert [f["name"] for f in chain.describe()] == ["exclude", "gaussian"]
    with pytest.raises(UserError, match="unknown privacy filter 'blur'"):
        FilterChain.from_config([{"name": "blur"}])
    with pytest.raises(UserError, match="unknown config key 'privacy.filters.0.sigma'"):
        FilterChain.from_config([{"name": "gaussian", "sigma": 1.0}])
    with pytest.raises(UserError, match="sigma0 must be >= 0"):
        FilterChain.from_config([{"name": "gaussian", "sigma0": -1.0}])


def test_filtered_update_is_what_is_captured_and_prefilter_goes_to_ground_truth(tmp_path):
    from common.files import load_tensors
    from federation.federation import Federation
    from federation.in_process import InProcessEngine
    from federation.run_layout import RunLayout
    from federation.update_store import load_update
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config(tmp_path, **{"fl.rounds": 1, "privacy.filters": [{"name": "exclude", "regex": ["running_var$"]}]})
    InProcessEngine(Federation(cfg)).run(tmp_path)
    delta, meta = load_update(RunLayout(tmp_path).update(0, 0))
    raw = load_tensors(RunLayout(tmp_path).ground_truth(0, 0) / "update_prefilter.safetensors")
    assert not any(k.endswith("running_var") for k in delta)
    assert any(k.endswith("running_var") for k in raw)
    assert meta["privacy_filters"] == [{"name": "exclude", "names": [], "regex": ["running_var$"]}]
    assert sorted(meta["withheld_keys"]) == sorted(k for k in raw if k.endswith("running_var"))


def _two_scales() -> dict[str, torch.Tensor]:
    return {"a": torch.arange(1, 21, dtype=torch.float32) * 0.01, "b": torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0]),
            "n": torch.tensor(7)}


def test_gaussian_pooled_and_per_tensor_percentiles_by_hand():
    # torch.quantile interpolates linearly between order statistics: position q * (n - 1)
    # a: 0.01..0.20, position 0.95 * 19 = 18.05 -> 0.19 + 0.05 * 0.01 = 0.1905
    # b: non-zero 10, 20, 30, 40, position 2.85 -> 30 + 0.85 * 10 = 38.5
    # pooled: 24 non-zero values, position 21.85 between 20 (index 21) and 30 -> 28.5
    update = _two_scales()
    pooled = FilterChain.from_config([{"name": "gaussian", "sigma0": 2.0}]).filters[0]
    per_tensor = FilterChain.from_config([{"name": "gaussian", "sigma0": 2.0, "calibration": "per_tensor"}]).filters[0]
    assert pooled.noise_stds(update) == pytest.approx({"a": 57.0, "b": 57.0})
    assert per_tensor.noise_stds(update) == pytest.approx({"a": 0.381, "b": 77.0})


def test_gaussian_per_tensor_adds_each_tensor_its_own_noise():
    update = _two_scales()
    chain = FilterChain.from_config([{"name": "gaussian", "sigma0": 2.0, "calibration": "per_tensor"}])
    out, effects = chain.apply(dict(update), _ctx(3))
    gen = torch.Generator().manual_seed(3)  # the filter draws a's noise, then b's, from the round's generator
    expected_a = update["a"] + 0.381 * torch.randn(20, generator=gen)
    expected_b = update["b"] + 77.0 * torch.randn(5, generator=gen)
    assert torch.allclose(out["a"], expected_a, rtol=0, atol=1e-5) and torch.allclose(out["b"], expected_b, rtol=0, atol=1e-4)
    assert torch.equal(out["n"], update["n"])
    assert effects[0]["noise_std"] == pytest.approx(77.0) and effects[0]["noise_std_min"] == pytest.approx(0.381)


def test_gaussian_calibration_is_validated():
    with pytest.raises(UserError, match="calibration"):
        FilterChain.from_config([{"name": "gaussian", "sigma0": 1.0, "calibration": "per_layer"}])


def test_the_retired_per_tensor_calibration_says_so(capsys):
    FilterChain.from_config([{"name": "gaussian", "sigma0": 5.0, "calibration": "per_tensor"}])
    assert "per_tensor is retired" in capsys.readouterr().err
    FilterChain.from_config([{"name": "gaussian", "sigma0": 5.0}])
    FilterChain.from_config([{"name": "gaussian", "sigma0": 0.0, "calibration": "per_tensor"}])
    assert capsys.readouterr().err == ""
