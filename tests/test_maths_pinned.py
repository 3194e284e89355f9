"""The formulas, pinned to hand-computed values (issue 14): each test fails when the code it covers
is changed (a term's form, a direction, a coefficient, a window, a sign)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.signal import correlate2d

from common.config_loader import build
from common.errors import UserError
from federation.run_layout import RunLayout
from inversion.bn_sources import make_bn_source
from inversion.attack_config import AttackConfig
from inversion.functional import BNStat, FunctionalModel, relu_with_smooth_grad
from inversion.labels import recover_labels, summed_gradient
from inversion.objective import Objective
from inversion.replay import ClientProcedure, LocalTrainingReplay, ReplayOutput
from inversion.terms import AttackSetting, TermInput, TotalVariation, TVParams, UpdateMatching, UpdateMatchingParams
from inversion.threat_model import ThreatConfig, load_knowledge
from leakage.ground_truth import load_ground_truth
from leakage.metrics import SSIMSettings, ssim_pairs
from leakage.rdlv import rdlv_client, rdlv_per_image
from leakage.scoring import hungarian, score
from inversion.attack_module import GradientInversionAttack

# ----------------------------------------------------------------------------- objective terms


def _tv(norm, image):
    return float(TotalVariation(TVParams(weight=1.0, norm=norm), None).per_restart(TermInput(image, None)))


def test_total_variation_by_hand_in_both_directions():
    # rows [0 1 3], [2 2 2]: horizontal differences 1, 2, 0, 0 (4 of them), vertical 2, 1, -1 (3)
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]).view(1, 1, 2, 3)
    assert _tv("l1", x) == pytest.approx(3 / 4 + 4 / 3)
    assert _tv("l2", x) == pytest.approx(5 / 4 + 6 / 3)
    # transposed, the directions swap: the same two means, so the same value
    assert _tv("l2", x.transpose(-1, -2)) == pytest.approx(5 / 4 + 6 / 3)


def test_grayscale_channels_term_by_hand():
    from inversion.terms import GrayscaleChannels, WeightOnly

    # channels (0, 1, 2) at one pixel: mean 1, squared deviations 1, 0, 1 -> mean 2/3; a gray image gives 0
    x = torch.tensor([0.0, 1.0, 2.0]).view(1, 3, 1, 1)
    term = GrayscaleChannels(WeightOnly(weight=1.0), None)
    assert float(term.per_restart(TermInput(x, None))) == pytest.approx(2 / 3)
    assert float(term.per_restart(TermInput(torch.full((1, 3, 4, 4), 0.3), None))) == 0.0


def _matching(pred, observed, **params):
    names = list(observed)
    setting = AttackSetting(observed_delta=observed, param_names=names, params0={k: torch.ones_like(v) for k, v in observed.items()},
                            bn_source_factory=None, prior=None, norm_mean=None, norm_std=None)
    term = UpdateMatching(UpdateMatchingParams(**params), setting)
    return float(term.per_restart(TermInput(None, ReplayOutput(pred, []))))


OBSERVED = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0])}
PRED = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 1.0])}


@pytest.mark.parametrize("metric, per_layer, expected", [
    # per tensor: a: 1 - 1/sqrt(2), b: 1 - 1 = 0; mean over the two tensors
    ("cosine", True, (1 - 1 / math.sqrt(2)) / 2),
    # per tensor: a: |(0, 1)|^2 / 1 = 1, b: |(0, -1)|^2 / 4 = 0.25
    ("l2", True, (1 + 0.25) / 2),
    # one flat vector: <p, o> = 3, |p| = sqrt(3), |o| = sqrt(5)
    ("cosine", False, 1 - 3 / math.sqrt(15)),
    # one flat vector: |p - o|^2 / |o|^2 = 2 / 5
    ("l2", False, 2 / 5),
])
def test_update_matching_values_by_hand(metric, per_layer, expected):
    assert _matching(PRED, OBSERVED, metric=metric, per_layer=per_layer, min_snr=0.0) == pytest.approx(expected, rel=1e-6)


def test_update_matching_layer_weights_by_hand():
    # a weighs 3, b 1: (3 (1 - 1/sqrt 2) + 1 * 0) / 4
    got = _matching(PRED, OBSERVED, metric="cosine", layer_weights={"^a$": 3.0}, min_snr=0.0)
    assert got == pytest.approx(3 * (1 - 1 / math.sqrt(2)) / 4, rel=1e-6)


def _knowledge(run, rnd, client):
    return load_knowledge(RunLayout(run).update(rnd, client), ThreatConfig())


def test_forward_only_bn_path_uses_interpolated_weights_per_step(tiny_run):
    """Without update matching, dummy step k is forwarded with theta0 + k/T delta (T = 2: theta0, then theta0 + delta/2)."""
    kn = _knowledge(tiny_run, 1, 0)
    assert kn.meta["local_steps"] == 2
    objective = Objective(kn, {"bn_statistics": {"weight": 1.0}})
    (first, second) = objective.step_params
    for key, p0 in objective.params0.items():
        assert torch.equal(first[key], p0)
        assert torch.allclose(second[key], p0 + 0.5 * kn.update[key], atol=0, rtol=0), key
    glob = Objective(kn, {"bn_statistics": {"weight": 1.0, "weights_per_step": "global"}})
    assert all(torch.equal(step[k], glob.params0[k]) for step in glob.step_params for k in glob.params0)


# ----------------------------------------------------------------------------- replay


def test_smooth_relu_value_and_first_derivative_are_exact_second_is_the_sigmoid_slope():
    beta = 10.0
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = relu_with_smooth_grad(x, beta)
    assert torch.equal(y.detach(), torch.relu(x.detach()))
    (first,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert torch.equal(first.detach(), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    (second,) = torch.autograd.grad(first.sum(), x)
    s = 1 / (1 + np.exp(-beta * np.array([-1.0, 0.5, 2.0])))
    np.testing.assert_allclose(second.numpy(), beta * s * (1 - s), rtol=1e-12)  # 0.066480 at x = 0.5


def test_smooth_relu_replay_reproduces_the_true_update(tiny_run):
    """The smooth ReLU changes only second derivatives: a replay of the true images still gives the client's update."""
    for client in (0, 2):
        kn = _knowledge(tiny_run, 1, client)
        gt = load_ground_truth(tiny_run, 1, client)
        model = kn.global_model()
        params0 = {n: p.detach() for n, p in model.named_parameters()}
        replay = LocalTrainingReplay(FunctionalModel(model, "smooth", 10.0), params0, ClientProcedure.from_meta(kn.meta))
        out = replay.run(gt.images, gt.labels, gt.step_positions)
        num = sum(float((out.delta[k] - kn.update[k]).pow(2).sum()) for k in out.delta)
        den = sum(float(kn.update[k].pow(2).sum()) for k in out.delta)
        assert math.sqrt(num / den) < 1e-5, client


# ----------------------------------------------------------------------------- best iterate


def test_the_best_iterate_over_the_run_is_returned_not_the_last(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    cfg = build(AttackConfig, {"objective": {"bn_statistics": {"weight": 1.0}, "total_variation": {"weight": 0.01}},
                               "optim": {"iterations": 3, "restarts": 1, "select": "objective"},
                               "logging": {"progress": False, "wandb": False}})
    attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
    gen = torch.Generator().manual_seed(0)
    candidates = torch.rand(3, *attack.images.shape, generator=gen)
    with torch.no_grad():
        values = [float(attack.objective(c, attack.label_input())[0][0]) for c in candidates]
    order = sorted(range(3), key=lambda i: values[i])
    best, middle, worst = order
    for step, i in enumerate((worst, best, middle)):  # the best comes second, the last is not the best
        with torch.no_grad():
            attack.images.copy_(candidates[i])
        attack.training_step(None, step)
    result = attack.result()
    assert result.objective == pytest.approx(values[best], rel=1e-6)
    assert torch.equal(result.images, candidates[best][0])


# ----------------------------------------------------------------------------- scoring


def test_hungarian_maximises_the_total_not_greedily():
    # greedy takes 0.9 then 0.1 (total 1.0); the assignment takes 0.8 + 0.85 = 1.65
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(hungarian(sim)) == [(0, 1), (1, 0)]


def test_score_matches_reconstructions_given_in_a_permuted_order():
    gen = torch.Generator().manual_seed(1)
    origs = torch.rand(3, 1, 16, 16, generator=gen)
    perm = [2, 0, 1]
    out = score(origs[perm], None, origs, torch.tensor([0, 1, 0]), torch.full((1, 16, 16), 0.5), 2, SSIMSettings.for_size(16))
    assert out.ssim == pytest.approx(1.0, abs=1e-6)
    assert [row["matched_reconstruction"] for row in out.per_image] == [1, 2, 0]


def test_rdlv_per_image_is_the_max_over_reconstructions_and_the_client_the_max_over_images():
    ssim_rec = torch.tensor([[0.5, 0.2], [0.3, 0.6]])  # [reconstruction j, image i]
    prior = torch.tensor([0.25, 0.4])
    # RDLV_ji = (s - p) / p: [[1.0, -0.5], [0.2, 0.5]]
    assert rdlv_per_image(ssim_rec, prior).tolist() == pytest.approx([1.0, 0.5])
    assert rdlv_client(ssim_rec, prior) == pytest.approx(1.0)


def _ssim_reference(a, b, window, sigma):
    """SSIM as torchmetrics computes it, written independently: reflect padding, a Gaussian
    window of ``window`` taps, the map averaged over every pixel."""
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-x**2 / (2 * sigma**2))
    g /= g.sum()
    w = np.outer(g, g)
    pad = (window - 1) // 2

    def f(z):
        return correlate2d(np.pad(z, pad, mode="reflect"), w, mode="valid")

    ma, mb = f(a), f(b)
    va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())


@pytest.mark.parametrize("size, window, sigma", [(25, 9, 1.0), (32, 9, 1.0), (63, 9, 1.0), (64, 11, 1.5), (80, 11, 1.5)])
def test_ssim_window_and_sigma_per_image_size_against_an_independent_formula(size, window, sigma):
    settings = SSIMSettings.for_size(size)
    assert (settings.kernel_size, settings.sigma) == (window, sigma)
    assert f"{window}x{window}" in settings.describe()
    gen = torch.Generator().manual_seed(size)
    a = torch.rand(1, 1, size, size, generator=gen)
    b = 0.6 * a + 0.4 * torch.rand(1, 1, size, size, generator=gen)
    got = float(ssim_pairs(a, b, settings)[0])
    assert got == pytest.approx(_ssim_reference(a[0, 0].double().numpy(), b[0, 0].double().numpy(), window, sigma), abs=1e-6)


def test_ssim_window_that_sigma_cannot_give_is_refused():
    assert SSIMSettings.for_size(32, kernel_size=9).kernel_size == 9
    with pytest.raises(UserError, match="ssim_kernel 7 is not possible with sigma 1.0"):
        SSIMSettings.for_size(32, kernel_size=7)
    assert SSIMSettings.for_size(32, sigma=1.5) == SSIMSettings(11, 1.5)


# ----------------------------------------------------------------------------- labels


def test_label_counts_of_a_batch_with_sgd_momentum_by_hand():
    """4 images (labels 0, 0, 0, 1), batches of 2, 2 steps, SGD lr 0.1 momentum 0.9, 3 classes.

    With mean prediction p = (0.2, 0.3, 0.5) at both steps the bias gradients are g0 = p - (1, 0, 0)
    and g1 = p - (0.5, 0.5, 0). The client's update is -lr ((1 + mu) g0 + g1) (momentum buffer);
    the momentum-aware estimate of g0 + g1 is ((1 + mu) g0 + g1) * 2 / 2.9 = (-1.2552, 0.2552, 1.0),
    and the counts n p - (n / T) sum g = (3.31, 0.69, 0.0) round to (3, 1, 0).
    """
    p = torch.tensor([0.2, 0.3, 0.5])
    layer = nn.Linear(2, 3)
    start = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    for target in (torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 0.5, 0.0])):
        opt.zero_grad()
        layer.bias.grad = (p - target).clone()
        layer.weight.grad = torch.zeros_like(layer.weight)
        opt.step()
    delta = {k: v.detach() - start[k] for k, v in layer.state_dict().items()}
    model = nn.Sequential(layer)
    update = {f"0.{k}": v for k, v in delta.items()}
    state = {f"0.{k}": v for k, v in start.items()}
    proc = ClientProcedure({"name": "sgd", "lr": 0.1, "momentum": 0.9}, 2, 4, 2, 1, 0.1)
    g = summed_gradient(update["0.bias"], state["0.bias"], proc)
    np.testing.assert_allclose(g.numpy(), [-1.82 * 2 / 2.9, 0.37 * 2 / 2.9, 1.45 * 2 / 2.9], rtol=1e-5)
    assert recover_labels(update, state, model, 3, proc, p).tolist() == [0, 0, 0, 1]


# ----------------------------------------------------------------------------- BN-statistics sources


def test_weighted_mean_and_one_step_sources_targets_by_hand():
    """r0 = 1, r_T = 3.5, m = 0.5, T = 2 steps: weighted mean (3.5 - 0.25) / 0.75, one-step (3.5 - 0.5) / 0.5 = 6."""
    global_state = {"bn.running_mean": torch.tensor([1.0]), "bn.running_var": torch.tensor([2.0])}
    update = {"bn.running_mean": torch.tensor([2.5]), "bn.running_var": torch.tensor([1.0])}  # r_T = 3.5 and 3.0
    source = make_bn_source("weighted_mean", ["bn"], global_state, update, 0.5, 2)
    assert len(source.targets) == 2
    for mean, var in (step[0] for step in source.targets):
        assert float(mean) == pytest.approx(3.25 / 0.75)
        assert float(var) == pytest.approx((3.0 - 0.25 * 2.0) / 0.75)
    one = make_bn_source("one_step", ["bn"], global_state, update, 0.5, 2)
    assert float(one.targets[0][0][0]) == pytest.approx(6.0)
    assert float(one.targets[0][0][1]) == pytest.approx((3.0 - 0.5 * 2.0) / 0.5)
    # the prior's value (normalize none): |mu - mu*| + |var_unbiased - var*|, averaged over the 2 steps
    stat = BNStat(torch.tensor([4.0]), torch.tensor([1.5]), 4)  # unbiased var 1.5 * 4 / 3 = 2
    expected = abs(4.0 - 3.25 / 0.75) + abs(2.0 - 2.5 / 0.75)
    assert float(source.loss([[stat], [stat]])) == pytest.approx(expected, rel=1e-6)


def test_identification_chance_is_what_reconstructions_that_know_nothing_reach():
    """n / N, by hand (8 of 40 -> 0.2; 32 of 160 -> 0.2, i.e. 6.4 images), and against a simulation: reconstructions
    drawn independently of the client's images, scored by the real scoring, identify n / N of them on average."""
    from leakage.scoring import identification_chance, score

    assert identification_chance(8, 40) == pytest.approx(0.2) and identification_chance(32, 160) * 32 == pytest.approx(6.4)
    assert identification_chance(1, 160) == pytest.approx(1 / 160)
    gen = torch.Generator().manual_seed(0)
    n, population_size, trials = 8, 40, 60
    settings = SSIMSettings.for_size(16)
    rates = []
    for _ in range(trials):
        population = torch.rand(population_size, 1, 16, 16, generator=gen)
        client = population[torch.randperm(population_size, generator=gen)[:n]]
        recs = torch.rand(n, 1, 16, 16, generator=gen)  # knows nothing of the client
        out = score(recs, None, client, None, population.mean(0), 2, settings, [], population)
        rates.append(out.identification_top1)
        assert out.identification_chance == pytest.approx(n / population_size)
    mean = sum(rates) / trials
    assert abs(mean - n / population_size) < 3 * math.sqrt(0.2 * 0.8 / (n * trials)), mean  # within 3 standard errors


def test_score_reports_the_pinned_rdlv_functions():
    """The RDLV score() reports (per image and per client) is leakage/rdlv.py's, which the test above pins by hand."""
    from leakage.metrics import ssim_matrix
    from leakage.scoring import score

    gen = torch.Generator().manual_seed(1)
    origs, recs = torch.rand(3, 1, 16, 16, generator=gen), torch.rand(2, 1, 16, 16, generator=gen)
    prior = torch.rand(1, 16, 16, generator=gen)
    settings = SSIMSettings.for_size(16)
    out = score(recs, None, origs, None, prior, 2, settings, [])
    sim = ssim_matrix(recs, origs, settings)
    prior_ssim = ssim_pairs(prior[None].expand_as(origs), origs, settings)
    assert out.rdlv == pytest.approx(rdlv_client(sim, prior_ssim))
    assert [r["rdlv"] for r in out.per_image] == pytest.approx(rdlv_per_image(sim, prior_ssim).tolist())
