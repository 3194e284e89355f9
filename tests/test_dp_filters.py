import math

import pytest
import torch

from common.errors import UserError
from privacy import FilterChain, FilterContext
from privacy.dp import DPGaussian, SVTPrivacy, epsilon_after


def _ctx(seed: int = 0, client: int = 0, rnd: int = 0) -> FilterContext:
    return FilterContext(torch.Generator().manual_seed(seed), round=rnd, client=client)


def _update(scale: float = 1.0, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=gen) * 0.01 * scale,
        "bn.weight": torch.randn(16, generator=gen) * 0.1 * scale,
        "bn.running_mean": torch.randn(16, generator=gen) * scale,
        "bn.num_batches_tracked": torch.tensor(3),
        "fc.bias": torch.randn(10, generator=gen, dtype=torch.float64) * scale,
    }


def _norm(update: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in update.values() if v.is_floating_point()))


def _dp(**params) -> DPGaussian:
    """The local mechanism on every float entry (noise: local, parts: all), unless told otherwise."""
    (f,) = FilterChain.from_config([{"name": "dp_gaussian", "noise": "local", "parts": "all", **params}]).filters
    return f


# ----------------------------------------------------------------------------- dp_gaussian


def test_dp_clipping_bounds_the_norm_and_leaves_small_updates_alone():
    f = _dp(clip_norm=1.0, noise_multiplier=0.0)
    for seed, scale in enumerate([0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]):
        update = _update(scale, seed)
        before = _norm(update)
        out, effects = f.apply(dict(update), _ctx(seed))
        after = _norm(out)
        assert after <= 1.0 * (1 + 1e-6)
        assert effects["norm_before"] == pytest.approx(before, rel=1e-9)
        assert effects["norm_clipped"] == pytest.approx(after, rel=1e-6)
        assert effects["noise_std"] == 0.0 and effects["epsilon"] == math.inf
        if before <= 1.0:
            assert effects["clip_factor"] == 1.0
            assert all(torch.equal(out[k], update[k]) for k in update)  # not scaled
        else:
            assert after == pytest.approx(1.0, rel=1e-6)  # scaled onto the bound, direction kept
            assert effects["clip_factor"] == pytest.approx(1.0 / before, rel=1e-9)
            assert torch.allclose(out["conv.weight"] * before, update["conv.weight"], rtol=1e-5, atol=1e-8)
        assert torch.equal(out["bn.num_batches_tracked"], update["bn.num_batches_tracked"])
        assert out["fc.bias"].dtype == torch.float64


def test_dp_noise_std_is_noise_multiplier_times_clip_norm():
    gen = torch.Generator().manual_seed(3)
    update = {"w": torch.randn(200, 200, generator=gen) * 1e-3, "step": torch.tensor(7)}  # norm ~0.2 < C: not clipped
    f = _dp(clip_norm=0.5, noise_multiplier=2.0)
    out, effects = f.apply(dict(update), _ctx(5))
    noise = (out["w"] - update["w"]).flatten()
    assert effects["clip_factor"] == 1.0
    assert effects["noise_std"] == pytest.approx(1.0)
    assert noise.std().item() == pytest.approx(1.0, rel=0.02)  # 40k samples: sd of the estimate ~0.35%
    assert abs(noise.mean().item()) < 0.02
    assert torch.equal(out["step"], update["step"])
    again, _ = _dp(clip_norm=0.5, noise_multiplier=2.0).apply(dict(update), _ctx(5))
    assert torch.equal(again["w"], out["w"])  # the noise comes from ctx.generator


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    by_rounds = [epsilon_after(r, 1.0, 1.0, 1e-5) for r in (1, 5, 20, 100)]
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:]))
    by_noise = [epsilon_after(10, z, 1.0, 1e-5) for z in (0.5, 1.0, 2.0, 5.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:]))
    assert by_rounds[0] == pytest.approx(4.7285, rel=1e-3)  # Opacus RDP, z=1, q=1, one round, delta=1e-5
    assert epsilon_after(10, 1.0, 0.1, 1e-5) < epsilon_after(10, 1.0, 1.0, 1e-5)  # subsampling amplifies
    assert epsilon_after(0, 1.0, 1.0, 1e-5) == 0.0
    assert epsilon_after(3, 0.0, 1.0, 1e-5) == math.inf


def test_epsilon_is_tracked_per_client():
    f = _dp(clip_norm=1.0, noise_multiplier=1.1)
    effects = [f.apply(_update(), _ctx(r, client=0, rnd=r))[1]["epsilon"] for r in range(3)]
    f.apply(_update(), _ctx(9, client=1))
    assert effects[0] < effects[1] < effects[2]
    assert f.epsilon(0) == pytest.approx(effects[2]) == pytest.approx(epsilon_after(3, 1.1, 1.0, 1e-5))
    assert f.epsilon(1) == pytest.approx(epsilon_after(1, 1.1, 1.0, 1e-5))
    assert f.epsilon(0) > f.epsilon(1) > 0
    assert f.epsilon(2) == 0.0  # never applied


# ----------------------------------------------------------------------------- svt


def _svt_update() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return {
        "conv.weight": torch.randn(32, 8, 3, 3, generator=gen) * 1e-4,
        "bn.bias": torch.randn(32, generator=gen) * 1e-3,
        "bn.num_batches_tracked": torch.tensor(5),
        "head.weight": torch.randn(10, 32, generator=gen, dtype=torch.float64) * 1e-5,
    }


@pytest.mark.parametrize("replace", [True, False])
def test_svt_shares_at_most_fraction_clipped_and_is_reproducible(replace):
    update = _svt_update()
    total = sum(v.numel() for v in update.values() if v.is_floating_point())
    gamma = 1e-4
    chain = FilterChain.from_config([{"name": "svt", "fraction": 0.1, "gamma": gamma, "tau": 1e-5, "replace": replace}])
    out, effects = chain.apply(dict(update), _ctx(2))
    shared = sum(int((out[k] != 0).sum()) for k in out if out[k].is_floating_point())
    assert 0 < shared <= math.ceil(0.1 * total)
    if not replace:
        assert shared == math.ceil(0.1 * total)  # exactly n_upload distinct entries (bar exact zeros)
    assert effects[0]["shared_fraction"] <= 0.1 + 1 / total
    assert effects[0]["shared_fraction"] == pytest.approx(shared / total)
    assert all(float(out[k].abs().max()) <= gamma for k in out if out[k].is_floating_point())
    assert torch.equal(out["bn.num_batches_tracked"], update["bn.num_batches_tracked"])
    assert all(out[k].shape == update[k].shape and out[k].dtype == update[k].dtype for k in update)
    assert math.isfinite(effects[0]["threshold"])
    again, effects2 = chain.apply(dict(update), _ctx(2))
    assert all(torch.equal(again[k], out[k]) for k in out) and effects2 == effects
    other, _ = chain.apply(dict(update), _ctx(3))
    assert not torch.equal(other["conv.weight"], out["conv.weight"])


def test_svt_with_defaults_shares_a_tenth():
    update = _svt_update()
    total = sum(v.numel() for v in update.values() if v.is_floating_point())
    out, effects = SVTPrivacy(SVTPrivacy.Params()).apply(dict(update), _ctx(4))
    shared = sum(int((out[k] != 0).sum()) for k in out if out[k].is_floating_point())
    # k draws with replacement: between ~(1 - 1/e) k (about k accepted) and k (many more accepted) distinct entries
    assert 0.5 * math.ceil(0.1 * total) < shared <= math.ceil(0.1 * total)
    assert max(float(out[k].abs().max()) for k in out if out[k].is_floating_point()) <= 1e-5


# ----------------------------------------------------------------------------- validation and chains


@pytest.mark.parametrize("spec, message", [
    ({"name": "dp_gaussian", "clip_norm": 0}, "dp_gaussian filter: clip_norm must be > 0, got 0"),
    ({"name": "dp_gaussian", "noise_multiplier": -1}, "noise_multiplier must be >= 0"),
    ({"name": "dp_gaussian", "delta": 0}, "delta must be in"),
    ({"name": "dp_gaussian", "delta": 1.5}, "delta must be in"),
    ({"name": "dp_gaussian", "sample_rate": 0}, "sample_rate must be in"),
    ({"name": "dp_gaussian", "sample_rate": 1.2}, "sample_rate must be in"),
    ({"name": "svt", "fraction": 0}, "svt filter: fraction must be in"),
    ({"name": "svt", "fraction": 1.5}, "svt filter: fraction must be in"),
    ({"name": "svt", "epsilon": 0}, "svt filter: epsilon must be > 0"),
    ({"name": "svt", "noise_var": -0.1}, "svt filter: noise_var must be > 0"),
    ({"name": "svt", "gamma": 0}, "svt filter: gamma must be > 0"),
    ({"name": "svt", "tau": -1}, "svt filter: tau must be >= 0"),
    ({"name": "svt", "replace": "yes"}, "must be true or false"),
    ({"name": "dp_gaussian", "clip": 1.0}, "unknown config key 'privacy.filters.0.clip'"),
    ({"name": "dp_gaussian", "clip_quantile": 1.0}, "clip_quantile must be in"),
    ({"name": "dp_gaussian", "clip_lr": 0}, "clip_lr must be > 0"),
    ({"name": "dp_gaussian", "bit_budget": 1.0}, "bit_budget must be in"),
    ({"name": "dp_gaussian", "noise": "server"}, "must be one of"),
])
def test_bad_parameters_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        FilterChain.from_config([spec])


def test_dp_filters_compose_with_the_existing_ones():
    chain = FilterChain.from_config([
        {"name": "exclude", "regex": ["running_mean$"]},
        {"name": "percentile", "fraction": 0.5, "gamma": 0.0},
        {"name": "dp_gaussian", "clip_norm": 0.05, "noise_multiplier": 0.0, "parts": "all"},
        {"name": "gaussian", "sigma0": 0.0},
        {"name": "svt", "fraction": 0.2, "gamma": 1e-3},
    ])
    assert [f["name"] for f in chain.describe()] == ["exclude", "percentile", "dp_gaussian", "gaussian", "svt"]
    assert chain.describe()[2] == {"name": "dp_gaussian", "clip_norm": 0.05, "clip_quantile": 0.0, "clip_lr": 0.2, "bit_budget": 0.1,
                                   "noise_multiplier": 0.0, "noise": "central", "parts": "all", "delta": 1e-5, "sample_rate": 1.0}
    update = _update()
    out, effects = chain.apply(dict(update), _ctx(1, client=4))
    assert "bn.running_mean" not in out
    assert torch.equal(out["bn.num_batches_tracked"], update["bn.num_batches_tracked"])
    assert [e["filter"] for e in effects] == ["exclude", "percentile", "dp_gaussian", "gaussian", "svt"]
    assert effects[2]["norm_clipped"] == pytest.approx(0.05, rel=1e-6)
    assert set(effects[2]) >= {"norm_before", "norm_clipped", "clip_factor", "noise_std", "epsilon"}
    assert set(effects[4]) >= {"shared_fraction", "threshold"}
    assert all(isinstance(v, float) for e in effects for k, v in e.items() if k != "filter")
    assert all(float(out[k].abs().max()) <= 1e-3 for k in out if out[k].is_floating_point())
    noisy = FilterChain.from_config([{"name": "dp_gaussian", "clip_norm": 1.0, "noise_multiplier": 1.0, "noise": "local"}])
    _, eff = noisy.apply(dict(update), _ctx(1, client=4))
    assert eff[0]["epsilon"] == pytest.approx(epsilon_after(1, 1.0, 1.0, 1e-5))


# ----------------------------------------------------------------------------- dp_gaussian as deployed: parts, central noise, adaptive clip

from privacy.base import ServerContext  # noqa: E402


def _server_ctx(seed: int, rnd: int, bits: list[float], weights: list[float] | None = None, keys=("conv.weight",)) -> ServerContext:
    effects = [[{"filter": "dp_gaussian", "unclipped": b}] for b in bits]
    weights = weights or [1.0 / len(bits)] * len(bits)
    return ServerContext(torch.Generator().manual_seed(seed), rnd, list(range(len(bits))), weights, effects, set(keys))


def test_weights_only_clipping_leaves_the_buffers_and_counts_them_unprotected():
    update = _update(10.0)
    f = _dp(clip_norm=0.5, noise_multiplier=3.0, parts="weights")
    out, effects = f.apply(dict(update), _ctx(4))
    weights = ["conv.weight", "bn.weight", "fc.bias"]
    by_hand = math.sqrt(sum(float((update[k].double() ** 2).sum()) for k in weights))
    assert effects["norm_before"] == pytest.approx(by_hand, rel=1e-9)
    assert torch.equal(out["bn.running_mean"], update["bn.running_mean"])  # sent as it is
    assert effects["unprotected"] == 1.0  # bn.running_mean (the integer counter is no float entry)
    assert effects["clip_factor"] == pytest.approx(0.5 / by_hand, rel=1e-9)
    noise = (out["conv.weight"] - update["conv.weight"] * effects["clip_factor"]).flatten()
    assert noise.std().item() == pytest.approx(1.5, rel=0.05)  # local: z C on each client's weights


def test_central_noise_is_added_once_by_the_server_with_std_z_c_wmax():
    f = _dp(clip_norm=0.5, noise_multiplier=2.0, noise="central", parts="weights")
    update = {"conv.weight": torch.full((300, 300), 1e-4), "bn.running_mean": torch.ones(8)}
    out, effects = f.apply(dict(update), _ctx(1))
    assert torch.equal(out["conv.weight"], update["conv.weight"])  # not clipped (norm 0.03), no noise on the client
    assert effects["noise_std"] == pytest.approx(1.0) and effects["epsilon"] == pytest.approx(epsilon_after(1, 2.0, 1.0, 1e-5))
    delta = {"conv.weight": torch.zeros(300, 300), "bn.running_mean": torch.zeros(8), "fc.weight": torch.zeros(5)}
    noisy, server = f.server_step(dict(delta), _server_ctx(3, 0, [1.0, 1.0, 1.0], [0.5, 0.25, 0.25], keys=("conv.weight", "bn.running_mean")))
    assert server["central_noise_std"] == pytest.approx(2.0 * 0.5 * 0.5)  # z C w_max
    assert noisy["conv.weight"].std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.equal(noisy["bn.running_mean"], delta["bn.running_mean"])  # parts: weights
    assert torch.equal(noisy["fc.weight"], delta["fc.weight"])  # nobody sent it: nothing to protect, no noise
    assert server["epsilon"] == pytest.approx(epsilon_after(1, 2.0, 1.0, 1e-5))
    assert f.epsilon(0, 4) == pytest.approx(epsilon_after(5, 2.0, 1.0, 1e-5))  # the federation's, after rounds 0-4


def test_adaptive_clipping_moves_c_geometrically_toward_the_quantile():
    f = _dp(clip_norm=2.0, noise_multiplier=0.0, noise="central", clip_quantile=0.5, clip_lr=0.2)
    assert f.adaptive and f.server_driven and f.needs_server
    _, effect = f.server_step({"conv.weight": torch.zeros(3)}, _server_ctx(0, 0, [1.0, 1.0, 1.0, 0.0]))
    assert effect["unclipped_fraction"] == 0.75
    assert f.clip == pytest.approx(2.0 * math.exp(-0.2 * (0.75 - 0.5)))  # most were inside: C shrinks
    _, effect = f.server_step({"conv.weight": torch.zeros(3)}, _server_ctx(0, 1, [0.0, 0.0, 0.0, 0.0]))
    assert f.clip == pytest.approx(2.0 * math.exp(-0.05) * math.exp(0.1))  # all clipped: C grows
    _, effects = f.apply(_update(), _ctx(2, rnd=2))
    assert effects["clip_norm"] == pytest.approx(f.clip)  # the clients clip with the server's C
    assert f.server_state() == {"clip_norm": f.clip}
    g = _dp(clip_norm=2.0, noise_multiplier=0.0, noise="central", clip_quantile=0.5)
    g.load_server_state(f.server_state())
    assert g.clip == f.clip
    local = _dp(clip_norm=2.0, noise_multiplier=0.0, noise="local", clip_quantile=0.5)
    _, effect = local.server_step({"conv.weight": torch.zeros(3)}, _server_ctx(0, 0, [1.0, 0.0]))
    assert "epsilon" not in effect and effect["clip_norm"] == 2.0  # local epsilon is per client, never the server's 0


def test_adaptive_clipping_spends_its_share_of_the_budget_on_the_bits():
    z = 1.5
    f = _dp(clip_norm=1.0, noise_multiplier=z, noise="central", clip_quantile=0.5, bit_budget=0.1)
    # Andrew et al.: z_update^-2 + (2 sigma_bits)^-2 = z^-2, the round one Gaussian mechanism of multiplier z
    assert f.update_noise_multiplier ** -2 + (2 * f.bit_noise_std) ** -2 == pytest.approx(z ** -2)
    assert f.update_noise_multiplier == pytest.approx(z / math.sqrt(0.9))
    fractions = []
    for seed in range(400):
        g = _dp(clip_norm=1.0, noise_multiplier=z, noise="central", clip_quantile=0.5)
        fractions.append(g.server_step({"conv.weight": torch.zeros(2)}, _server_ctx(seed, 0, [1.0, 0.0, 1.0, 0.0]))[1]["unclipped_fraction"])
    spread = torch.tensor(fractions).std().item()
    assert spread == pytest.approx(f.bit_noise_std / 4, rel=0.1)  # the count's noise, over 4 clients
    with pytest.raises(UserError, match="needs noise: central"):
        _dp(clip_quantile=0.5, noise_multiplier=1.0, noise="local")
