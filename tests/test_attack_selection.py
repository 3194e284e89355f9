"""The attack's hyperparameter rule and its scale-free BN prior, asserted with hand-computed values:
per-layer scales, held-out layers, the grid of TV weights as restarts, the selection by held-out BN
mismatch (never by ground truth), and the clip-factor fit of the adaptive attack."""
import math
import shutil

import pytest
import torch

from common.config_loader import build
from common.errors import UserError
from federation.run_layout import RunLayout
from inversion.bn_sources import layer_scales, make_bn_source, weighted_mean_inference
from inversion.bn_sources.multi_step import MultiStepSource
from inversion.attack_config import AttackConfig
from inversion.functional import BNStat
from inversion.objective import Objective
from inversion.replay import ReplayOutput
from inversion.terms import AttackSetting, BNStatistics, BNStatisticsParams, TermInput
from inversion.threat_model import ThreatConfig, load_knowledge
from leakage.ground_truth import load_ground_truth
from model.factory import batch_norm_layers
from pipelines.attack_setup import run_attack
from tests.test_attack_math import _replay_true


def _knowledge(run, rnd, client):
    return load_knowledge(RunLayout(run).update(rnd, client), ThreatConfig())


def _true_stats(kn, gt):
    out, fm, _ = _replay_true(kn, gt)
    return out.stats, fm.bn_names


# ----------------------------------------------------------------------------- scale-free BN prior


def test_layer_scales_by_hand():
    # variances 1, 4, 7: s^2 = 4, s = 2, C = 3 -> mean factor 1 / (2 sqrt 3), variance factor 1 / (4 sqrt 3)
    (mean_factor, var_factor), = layer_scales([torch.tensor([1.0, 4.0, 7.0])], "layer")
    assert mean_factor == pytest.approx(1 / (2 * math.sqrt(3)))
    assert var_factor == pytest.approx(1 / (4 * math.sqrt(3)))
    assert layer_scales([torch.tensor([1.0, 4.0])], "none") == [(1.0, 1.0)]
    with pytest.raises(UserError, match="normalize"):
        layer_scales([torch.tensor([1.0])], "channel")


def test_normalised_multi_step_source_is_the_direct_formula_with_layer_scales(tiny_run):
    """sum_l (|r_T(mean) - r_obs| / (s_l sqrt C_l) + |r_T(var) - r_obs| / (s_l^2 sqrt C_l)) / (1 - (1-m)^T), with s_l^2 the
    mean of the weighted-mean variance target, computed directly in float64."""
    kn = _knowledge(tiny_run, 1, 0)  # 2 local steps
    stats, bn_names = _true_stats(kn, load_ground_truth(tiny_run, 1, 0))
    torch.manual_seed(0)
    stats = [[BNStat(s.mean + 0.1 * torch.randn_like(s.mean), s.var * (1 + 0.2 * torch.rand_like(s.var)), s.count) for s in step]
             for step in stats]
    m, steps = 0.1, len(stats)
    expected = 0.0
    for layer, name in enumerate(bn_names):
        r0m, r0v = kn.global_state[f"{name}.running_mean"].double(), kn.global_state[f"{name}.running_var"].double()
        obs_m, obs_v = r0m + kn.update[f"{name}.running_mean"].double(), r0v + kn.update[f"{name}.running_var"].double()
        s2 = float(((obs_v - (1 - m) ** steps * r0v) / (1 - (1 - m) ** steps)).mean())
        root_c = math.sqrt(r0m.numel())
        pred_m, pred_v = (1 - m) ** steps * r0m, (1 - m) ** steps * r0v
        for k in range(steps):
            w = m * (1 - m) ** (steps - 1 - k)
            pred_m = pred_m + w * stats[k][layer].mean.double()
            pred_v = pred_v + w * stats[k][layer].var_unbiased.double()
        expected += (float((pred_m - obs_m).norm()) / (math.sqrt(s2) * root_c) + float((pred_v - obs_v).norm()) / (s2 * root_c)) / (1 - (1 - m) ** steps)
    source = make_bn_source("multi_step", bn_names, kn.global_state, kn.update, m, steps, normalize="layer")
    assert float(source.loss(stats)) == pytest.approx(expected, rel=1e-5)


def test_normalised_prior_does_not_change_when_a_layer_input_is_rescaled():
    """BN is blind to its input's scale; so is the normalised prior (the raw one is not)."""
    torch.manual_seed(0)
    r0 = (torch.randn(4), torch.rand(4) + 0.5)
    batch = (torch.randn(4), torch.rand(4) + 0.5)
    dummy = BNStat(torch.randn(4), torch.rand(4) + 0.5, 64)
    m, n = 0.1, 64

    def loss(scale: float, normalize: str) -> float:
        initial = [(r0[0].double() * scale, r0[1].double() * scale**2)]
        observed = [((1 - m) * initial[0][0] + m * batch[0].double() * scale, (1 - m) * initial[0][1] + m * batch[1].double() * scale**2 * n / (n - 1))]
        source = MultiStepSource(initial, observed, m, 1, normalize)
        return float(source.loss([[BNStat(dummy.mean * scale, dummy.var * scale**2, n)]]))

    assert loss(100.0, "layer") == pytest.approx(loss(1.0, "layer"), rel=1e-4)
    assert loss(100.0, "none") > 50 * loss(1.0, "none")


# ----------------------------------------------------------------------------- held-out layers


class _FixedSource:
    def __init__(self, losses):
        self.losses = torch.tensor(losses)
        self.layers = len(losses)

    def layer_losses(self, stats):
        return self.losses


def _bn_term(holdout: int, losses) -> BNStatistics:
    setting = AttackSetting({}, [], {}, lambda *a: _FixedSource(losses), torch.zeros(1, 2, 2), torch.zeros(1), torch.ones(1))
    return BNStatistics(BNStatisticsParams(weight=1.0, holdout=holdout), setting)


def test_holdout_keeps_every_kth_layer_out_of_the_prior_and_scores_it():
    losses = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]  # 10 layers; k = 4 holds out layers 3 and 7
    term = _bn_term(4, losses)
    assert term.held_out.nonzero().flatten().tolist() == [3, 7]
    kept, held = term.values(TermInput(torch.zeros(1, 1, 2, 2), ReplayOutput(None, [])))
    assert float(held) == 8.0 + 128.0
    assert float(kept) == sum(losses) - 136.0
    assert term.diagnostics == ["bn_holdout"]
    plain = _bn_term(0, losses)
    assert plain.values(TermInput(torch.zeros(1, 1, 2, 2), ReplayOutput(None, [])))[0] == pytest.approx(sum(losses))
    assert plain.diagnostics == []
    with pytest.raises(UserError, match="holdout"):
        _bn_term(1, losses)
    # fewer layers than k: the last one is held out; a single layer cannot be held out and optimised
    assert _bn_term(4, [1.0, 2.0, 3.0]).held_out.tolist() == [False, False, True]
    assert _bn_term(4, [1.0]).diagnostics == []


# ----------------------------------------------------------------------------- the grid and the selection


GRID = {"objective": {"bn_statistics": {"weight": 1.0, "holdout": 2}, "total_variation": {"weight": 0.01, "norm": "l1"}},
        "optim": {"restarts": 3, "grid": {"total_variation": [0.0, 0.5]}, "iterations": 6, "lr": 0.05},
        "logging": {"wandb": False, "progress": False}, "scoring": {"lpips": False}}


def test_grid_gives_each_restart_its_weights_and_the_objective_uses_them(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    cfg = build(AttackConfig, GRID)
    obj = Objective(kn, cfg.objective, grid=cfg.optim.grid, restarts=3)
    assert obj.names == ["bn_statistics", "total_variation", "bn_holdout"]
    # restart r takes grid entry r mod 2: TV 0, 0.5, 0; the held-out diagnostic weighs 0
    assert obj.weights.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 0.0, 0.0]]
    assert [obj.grid_setting(r) for r in range(3)] == [{"total_variation": 0.0}, {"total_variation": 0.5}, {"total_variation": 0.0}]
    torch.manual_seed(0)
    x = torch.rand(3, *kn.prior.shape)[:, None]
    labels = torch.zeros(3, 1, dtype=torch.long)
    total, parts = obj(x, labels)
    assert torch.allclose(total, parts[:, 0] + torch.tensor([0.0, 0.5, 0.0]) * parts[:, 1])
    total_1, _ = obj(x[[1]], labels[[1]], torch.tensor([1]))
    assert torch.allclose(total_1, total[[1]])


def test_grid_rejects_unknown_terms(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    with pytest.raises(UserError, match="not a term"):
        Objective(kn, build(AttackConfig, GRID).objective, grid={"image_l2": [0.1]})
    with pytest.raises(UserError, match="weights >= 0"):
        Objective(kn, build(AttackConfig, GRID).objective, grid={"total_variation": [-0.1]})


def test_grid_lr_axis_is_a_restart_setting_not_a_term(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    cfg = build(AttackConfig, GRID)
    obj = Objective(kn, cfg.objective, grid={"total_variation": [0.0, 0.5], "lr": [0.1, 0.3]}, restarts=4)
    assert obj.names == ["bn_statistics", "total_variation", "bn_holdout"]  # no term called lr
    # the product TV x lr; the last axis varies fastest
    assert [obj.grid_setting(r) for r in range(4)] == [{"total_variation": 0.0, "lr": 0.1}, {"total_variation": 0.0, "lr": 0.3},
                                                      {"total_variation": 0.5, "lr": 0.1}, {"total_variation": 0.5, "lr": 0.3}]
    assert obj.weights[:, 1].tolist() == [0.0, 0.0, 0.5, 0.5]
    with pytest.raises(UserError, match="learning rates > 0"):
        Objective(kn, cfg.objective, grid={"lr": [0.1, 0.0]})


def test_a_restart_of_the_lr_axis_follows_the_same_path_as_an_attack_run_at_that_lr(tiny_run):
    """Restart r of grid {lr: [0.02, 0.2]} (optim.lr 0.05) takes exactly the steps of restart r of a plain attack at lr 0.02
    or 0.2: Adam's step is linear in lr and its moments do not see it, so rescaling the step per restart is Adam at that lr."""
    kn = _knowledge(tiny_run, 1, 2)
    base = {**GRID, "objective": {"bn_statistics": {"weight": 1.0, "holdout": 2}, "total_variation": {"weight": 0.01, "norm": "l1"}}}
    optim = {"restarts": 2, "iterations": 6, "warmup": 0, "grid": {}}
    grid, attack = run_attack(kn, build(AttackConfig, {**base, "optim": {**optim, "lr": 0.05, "grid": {"lr": [0.02, 0.2]}}}))
    assert attack.lr_scale.tolist() == pytest.approx([0.4, 4.0])
    assert [grid.restart_settings[r] for r in (0, 1)] == [{"lr": 0.02}, {"lr": 0.2}]
    slow, _ = run_attack(kn, build(AttackConfig, {**base, "optim": {**optim, "lr": 0.02}}))
    fast, _ = run_attack(kn, build(AttackConfig, {**base, "optim": {**optim, "lr": 0.2}}))
    assert torch.allclose(grid.restart_images[0], slow.restart_images[0], atol=1e-5)
    assert torch.allclose(grid.restart_images[1], fast.restart_images[1], atol=1e-5)
    assert not torch.allclose(slow.restart_images[1], fast.restart_images[1], atol=1e-3)  # the two rates do differ here


def test_objective_selection_scores_every_restart_with_the_configured_weights(tiny_run):
    """With select=objective a grid's restarts are compared on the configured weights (TV 0.01 here),
    not on each restart's own (0 or 0.5), which would favour the restarts without TV."""
    kn = _knowledge(tiny_run, 1, 2)
    cfg = build(AttackConfig, {**GRID, "optim": {**GRID["optim"], "select": "objective"}})
    result, attack = run_attack(kn, cfg)
    assert result.selection == "objective"
    assert attack.objective.shared_weights.tolist() == pytest.approx([1.0, 0.01, 0.0])
    _, parts = attack.objective(result.restart_images, attack.label_input(), torch.arange(3))
    expected = parts[:, 0] + 0.01 * parts[:, 1]
    assert torch.allclose(attack.best_scores, expected, rtol=1e-5)
    assert result.restart == int(expected.argmin())


def test_the_restart_with_the_lowest_heldout_mismatch_is_returned_not_the_lowest_objective(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    result, attack = run_attack(kn, build(AttackConfig, GRID))
    scores = attack.best_scores.tolist()
    assert result.selection == "holdout"
    assert result.restart == min(range(3), key=lambda r: scores[r])
    assert result.restart_scores == {r: pytest.approx(s) for r, s in enumerate(scores)}
    assert torch.equal(result.images, result.restart_images[result.restart])
    # the held-out score is the diagnostic column of the objective at the returned iterate
    _, parts = attack.objective(result.restart_images[[result.restart]], attack.label_input()[[result.restart]],
                                torch.tensor([result.restart]))
    assert float(parts[0, -1]) == pytest.approx(result.restart_scores[result.restart], rel=1e-5)


def test_chosen_restart_is_the_lowest_score_among_finite_ones(tiny_run):
    from pipelines.attack_setup import build_attack

    attack = build_attack(_knowledge(tiny_run, 1, 2), build(AttackConfig, GRID))
    with torch.no_grad():
        attack.best_values.copy_(torch.tensor([1.0, 5.0, 3.0]))  # restart 0 has the lowest objective ...
        attack.best_scores.copy_(torch.tensor([9.0, 2.0, 4.0]))  # ... restart 1 the lowest held-out mismatch
    assert attack.chosen() == 1 and attack.result().restart == 1
    with torch.no_grad():
        attack.best_values[1] = math.nan  # a diverged restart is never chosen, whatever its score
    assert attack.chosen() == 2


def test_selection_reads_no_ground_truth(tiny_run, tmp_path):
    """The same attack with the ground-truth folder removed picks the same restart and the same images
    (a grid over TV weights and learning rates: every hyperparameter the rule chooses)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    cfg = build(AttackConfig, {**GRID, "optim": {**GRID["optim"], "restarts": 4, "grid": {"total_variation": [0.0, 0.5], "lr": [0.05, 0.15]}}})
    with_truth, _ = run_attack(_knowledge(copy, 1, 2), cfg)
    shutil.rmtree(copy / "ground_truth")
    assert not (copy / "ground_truth").exists()
    without_truth, _ = run_attack(_knowledge(copy, 1, 2), cfg)
    assert without_truth.restart == with_truth.restart
    assert without_truth.restart_settings == with_truth.restart_settings
    assert torch.equal(without_truth.images, with_truth.images)


# ----------------------------------------------------------------------------- adaptive attack on clipping


def test_fitted_scale_by_hand():
    one = torch.ones(())
    # one residual d = [2, 4] against the change b = [1, 2]: k = (2 + 8) / (1 + 4) = 2
    assert float(MultiStepSource.fitted_scale([torch.tensor([2.0, 4.0])], [torch.tensor([1.0, 2.0])], torch.stack([one]))) == pytest.approx(2.0)
    # two residuals with weights 1 and 2: k = (1*3*1 + 4*1*1) / (1*1 + 4*1) = 7 / 5
    k = MultiStepSource.fitted_scale([torch.tensor([3.0]), torch.tensor([1.0])], [torch.tensor([1.0]), torch.tensor([1.0])], torch.tensor([1.0, 2.0]))
    assert float(k) == pytest.approx(1.4)
    # clipping only shrinks an update: k = 1/c is at least 1
    assert float(MultiStepSource.fitted_scale([torch.tensor([0.5])], [torch.tensor([1.0])], torch.stack([one]))) == 1.0


def test_fitted_scale_undoes_a_clipped_update(tiny_run):
    """The whole update multiplied by c = 0.25 (what clipping does): the fitted source is zero at the
    true statistics and its factor is 1/c = 4; the source that trusts the scale is far off."""
    kn = _knowledge(tiny_run, 1, 0)  # 2 local steps
    stats, bn_names = _true_stats(kn, load_ground_truth(tiny_run, 1, 0))
    clipped = {k: v * 0.25 if v.is_floating_point() else v for k, v in kn.update.items()}
    fit = make_bn_source("multi_step", bn_names, kn.global_state, clipped, 0.1, 2, normalize="layer", update_scale="fit")
    known = make_bn_source("multi_step", bn_names, kn.global_state, clipped, 0.1, 2, normalize="layer")
    true = make_bn_source("multi_step", bn_names, kn.global_state, kn.update, 0.1, 2, normalize="layer")
    assert float(fit.loss(stats)) < 1e-3
    assert float(known.loss(stats)) > 100 * float(fit.loss(stats))
    assert float(true.loss(stats)) < 1e-3
    assert float(fit.scale(stats)) == pytest.approx(4.0, rel=1e-3)
    assert float(known.scale(stats)) == 1.0


def test_update_scale_fit_needs_the_multi_step_source(tiny_run):
    kn = _knowledge(tiny_run, 1, 0)
    names = [n for n, _ in batch_norm_layers(kn.global_model())]
    with pytest.raises(UserError, match="update_scale"):
        make_bn_source("one_step", names, kn.global_state, kn.update, 0.1, 2, update_scale="fit")
    with pytest.raises(UserError, match="update_scale"):
        make_bn_source("multi_step", names, kn.global_state, kn.update, 0.1, 2, update_scale="guess")


def test_weighted_mean_inference_by_hand():
    # r_0 = 1, two steps with m = 0.5 and statistics 3 then 5: r_2 = 0.25 * 1 + 0.25 * 3 + 0.5 * 5 = 3.5
    # (r_2 - 0.25 r_0) / (1 - 0.25) = 3.25 / 0.75
    assert float(weighted_mean_inference(torch.tensor(1.0), torch.tensor(3.5), 0.5, 2)) == pytest.approx(3.25 / 0.75)
