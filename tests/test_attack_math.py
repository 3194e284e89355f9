"""The attack's mathematics, asserted; each defect of the paper's official code (listed in
docs/attack.md) has its correct behaviour checked here."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from common.config_loader import build
from common.errors import UserError
from federation.run_layout import RunLayout
from inversion.bn_sources import make_bn_source, one_step_inference
from inversion.bn_sources.multi_step import MultiStepSource
from inversion.attack_config import AttackConfig
from inversion.functional import BNStat, FunctionalModel
from inversion.labels import recover_labels
from inversion.objective import conv_layout
from inversion.replay import ClientProcedure, LocalTrainingReplay
from inversion.threat_model import ThreatConfig, load_knowledge
from leakage.ground_truth import load_ground_truth
from inversion.attack_module import GradientInversionAttack
from model.factory import ModelSpec, build_model


def _knowledge(run, rnd, client):
    return load_knowledge(RunLayout(run).update(rnd, client), ThreatConfig())


def _replay_true(kn, gt):
    model = kn.global_model()
    fm = FunctionalModel(model, "exact")
    params0 = {n: p.detach() for n, p in model.named_parameters()}
    proc = ClientProcedure.from_meta(kn.meta)
    x = gt.images.clone().requires_grad_(True)
    return LocalTrainingReplay(fm, params0, proc).run(x, gt.labels, gt.step_positions), fm, x


def _rel(a, b):
    num = sum(float((a[k].detach() - b[k]).pow(2).sum()) for k in a)
    den = sum(float(b[k].pow(2).sum()) for k in a)
    return math.sqrt(num / den)


# ----------------------------------------------------------------------------- replay


def test_replay_reproduces_update_and_running_buffers_from_true_images(tiny_run):
    """Defects 5-7: real CE, the client's normalisation, its batch split and pre-step weights."""
    for client in (0, 1, 2):
        kn = _knowledge(tiny_run, 1, client)
        gt = load_ground_truth(tiny_run, 1, client)
        out, fm, _ = _replay_true(kn, gt)
        assert _rel(out.delta, {k: kn.update[k] for k in out.delta}) < 1e-5
        m = kn.meta["bn_momentum"]
        for layer, name in enumerate(fm.bn_names):
            for buf, stat in (("running_mean", lambda s: s.mean), ("running_var", lambda s: s.var_unbiased)):
                r = kn.global_state[f"{name}.{buf}"].double()
                for step in out.stats:
                    r = (1 - m) * r + m * stat(step[layer]).double()
                observed = kn.global_state[f"{name}.{buf}"].double() + kn.update[f"{name}.{buf}"].double()
                assert torch.allclose(r, observed, atol=1e-5), (client, name, buf)


def test_replay_statistics_use_pre_step_weights(tiny_run):
    """Defect 7: step k's statistics are those the client computed (with the weights of step k-1)."""
    kn = _knowledge(tiny_run, 1, 0)
    gt = load_ground_truth(tiny_run, 1, 0)
    out, fm, _ = _replay_true(kn, gt)
    for t, step in enumerate(out.stats):
        for layer, name in enumerate(fm.bn_names):
            assert torch.allclose(step[layer].mean, gt.bn_stats[f"step_{t}/{name}/mean"], atol=1e-5)
            assert torch.allclose(step[layer].var_unbiased, gt.bn_stats[f"step_{t}/{name}/var_unbiased"], atol=1e-5)


def test_replay_follows_the_client_batch_split(tmp_path):
    """Defect 5: 7 images at batch 3 are three steps of 3, 3 and 1, not one batch of 7."""
    from federation.federation import Federation
    from federation.in_process import InProcessEngine
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config(tmp_path, **{"fl.rounds": 1, "fl.split.clients": [{"images": 7, "batch_size": 3}]})
    InProcessEngine(Federation(cfg)).run(tmp_path)
    kn = _knowledge(tmp_path, 0, 0)
    gt = load_ground_truth(tmp_path, 0, 0)
    proc = ClientProcedure.from_meta(kn.meta)
    assert [len(b) for b in proc.batches()] == [3, 3, 1]
    assert [len(b) for b in gt.step_positions] == [3, 3, 1]
    out, _, _ = _replay_true(kn, gt)
    assert _rel(out.delta, {k: kn.update[k] for k in out.delta}) < 1e-5
    # simulating all local images as one batch (the official code) does not reproduce the update
    model = kn.global_model()
    one_batch = LocalTrainingReplay(FunctionalModel(model), {n: p.detach() for n, p in model.named_parameters()},
                                    ClientProcedure({**proc.optimizer}, 7, 7, 1, 1, proc.bn_momentum))
    wrong = one_batch.run(gt.images, gt.labels, [torch.arange(7)])
    assert _rel(wrong.delta, {k: kn.update[k] for k in wrong.delta}) > 1e-2


def test_every_dummy_image_is_tied_across_epochs():
    """The batch attack's replay of several epochs reuses each dummy once per epoch (the same image, not a
    copy pulled towards it): 4 images at batch 2 for 2 epochs are slots 0-3 in order, then all four again."""
    proc = ClientProcedure({"name": "sgd", "lr": 0.1}, batch_size=2, num_images=4, local_steps=4, local_epochs=2, bn_momentum=0.1)
    steps = proc.batches(seed=3)
    assert [s.tolist() for s in steps[:2]] == [[0, 1], [2, 3]]
    assert sorted(torch.cat(steps[2:]).tolist()) == [0, 1, 2, 3]
    # the replayed update depends on a dummy through both epochs: its gradient is the sum over the two steps that saw it
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    fm = FunctionalModel(model, "exact")
    params0 = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.rand(4, 1, 2, 2, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1])
    out = LocalTrainingReplay(fm, params0, proc).run(x, y, steps)
    probe = torch.arange(8.0).view(2, 4)  # the summed delta is ~0 (softmax gradients sum to 0 over classes): project instead
    (g_all,) = torch.autograd.grad((out.delta["1.weight"] * probe).sum(), x)
    first_epoch_only = LocalTrainingReplay(fm, params0, ClientProcedure(proc.optimizer, 2, 4, 2, 1, 0.1)).run(x, y, steps[:2])
    (g_first,) = torch.autograd.grad((first_epoch_only.delta["1.weight"] * probe).sum(), x)
    assert g_first.abs().min() > 0 and not torch.allclose(g_all, g_first, rtol=1e-2)  # the second epoch's step reaches the same dummies


def test_replay_never_mutates_the_global_model(tiny_run):
    """Defect 3: the global model does not drift while the attack runs."""
    kn = _knowledge(tiny_run, 1, 0)
    before = {k: v.clone() for k, v in kn.global_state.items()}
    cfg = build(AttackConfig, {"objective": {"update_matching": {"weight": 1.0}, "bn_statistics": {"weight": 1.0}}, "optim": {"iterations": 3, "grid": {}}})
    attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
    model_before = {k: v.clone() for k, v in attack.objective.model.state_dict().items()}
    for _ in range(3):
        total, _ = attack.objective(attack.images, attack.label_input())
        total.sum().backward()
    for k, v in attack.objective.model.state_dict().items():
        assert torch.equal(v, model_before[k]), k
    for k, v in kn.global_state.items():
        assert torch.equal(v, before[k]), k


def test_sgd_momentum_nesterov_weight_decay_and_adam_replays_match_torch_optim():
    torch.manual_seed(0)
    spec = ModelSpec("bn_convnet", 1, 3, 8, 0, [0.5], [0.5], 0.1, width=4, depth=2)
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    steps = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([2, 4, 0])]
    for opt_meta in ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": False, "weight_decay": 1e-3},
                     {"name": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0},
                     {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-4}):
        model = build_model(spec).train()
        start = copy.deepcopy(model)
        if opt_meta["name"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=opt_meta["lr"], momentum=opt_meta["momentum"], dampening=opt_meta["dampening"],
                                  nesterov=opt_meta["nesterov"], weight_decay=opt_meta["weight_decay"])
        else:
            opt = torch.optim.Adam(model.parameters(), lr=opt_meta["lr"], betas=tuple(opt_meta["betas"]), eps=opt_meta["eps"], weight_decay=opt_meta["weight_decay"])
        for idx in steps:
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        expected = {n: p.detach() - dict(start.named_parameters())[n].detach() for n, p in model.named_parameters()}
        proc = ClientProcedure(opt_meta, 3, 6, 3, 1, 0.1)
        out = LocalTrainingReplay(FunctionalModel(start), {n: p.detach() for n, p in start.named_parameters()}, proc).run(x, y, steps)
        assert _rel(out.delta, expected) < 1e-5, opt_meta["name"]


# ----------------------------------------------------------------------------- BN statistics


def test_one_step_inference_recovers_true_batch_statistics_of_a_train_mode_step():
    torch.manual_seed(1)
    bn = torch.nn.BatchNorm2d(16, momentum=0.1).train()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    r_mean, r_var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    bn(x)
    n = 4 * 8 * 8
    true_mean = x.mean((0, 2, 3)).double()
    true_var_unbiased = x.var((0, 2, 3), unbiased=False).double() * n / (n - 1)
    assert torch.allclose(one_step_inference(r_mean, bn.running_mean, 0.1), true_mean, atol=1e-5)
    assert torch.allclose(one_step_inference(r_var, bn.running_var, 0.1), true_var_unbiased, atol=1e-5)
    # comparing the biased dummy variance with this unbiased target would be off by n/(n-1) (defect 7)
    assert not torch.allclose(x.var((0, 2, 3), unbiased=False).double(), true_var_unbiased, atol=1e-5)


def test_multi_step_source_is_zero_at_the_truth_and_one_step_formula_is_not(tiny_run):
    kn = _knowledge(tiny_run, 1, 0)  # 2 local steps
    gt = load_ground_truth(tiny_run, 1, 0)
    out, fm, _ = _replay_true(kn, gt)
    multi = make_bn_source("multi_step", fm.bn_names, kn.global_state, kn.update, 0.1, 2)
    one = make_bn_source("one_step", fm.bn_names, kn.global_state, kn.update, 0.1, 2)
    weighted = make_bn_source("weighted_mean", fm.bn_names, kn.global_state, kn.update, 0.1, 2)
    assert isinstance(multi, MultiStepSource)
    assert float(multi.loss(out.stats)) < 1e-4
    assert float(one.loss(out.stats)) > 100 * float(multi.loss(out.stats))
    assert float(weighted.loss(out.stats)) > 100 * float(multi.loss(out.stats))


def test_multi_step_source_equals_the_predicted_buffer_residuals(tiny_run):
    """The source folds the constant part of the prediction into its targets: same value as
    sum_l scale (|r_T(mean) - r_obs| + |r_T(var) - r_obs|) computed directly, in float64."""
    kn = _knowledge(tiny_run, 1, 0)  # 2 local steps
    gt = load_ground_truth(tiny_run, 1, 0)
    out, fm, _ = _replay_true(kn, gt)
    torch.manual_seed(0)
    stats = [[BNStat(s.mean + 0.1 * torch.randn_like(s.mean), s.var * (1 + 0.2 * torch.rand_like(s.var)), s.count) for s in step]
             for step in out.stats]  # dummy statistics away from the truth
    m, steps = 0.1, len(stats)
    expected = 0.0
    for layer, name in enumerate(fm.bn_names):
        r0m, r0v = kn.global_state[f"{name}.running_mean"].double(), kn.global_state[f"{name}.running_var"].double()
        obs_m, obs_v = r0m + kn.update[f"{name}.running_mean"].double(), r0v + kn.update[f"{name}.running_var"].double()
        pred_m, pred_v = (1 - m) ** steps * r0m, (1 - m) ** steps * r0v
        for k in range(steps):
            w = m * (1 - m) ** (steps - 1 - k)
            pred_m = pred_m + w * stats[k][layer].mean.double()
            pred_v = pred_v + w * stats[k][layer].var_unbiased.double()
        expected += (float((pred_m - obs_m).norm()) + float((pred_v - obs_v).norm())) / (1 - (1 - m) ** steps)
    multi = make_bn_source("multi_step", fm.bn_names, kn.global_state, kn.update, m, steps)
    assert float(multi.loss(stats)) == pytest.approx(expected, rel=1e-5)


def test_objective_follows_the_module_to_another_device(tiny_run):
    """Every tensor the objective holds moves with it (a GPU attack would otherwise mix devices); the
    meta device stands in for a GPU on this CPU-only machine: any CPU tensor left behind raises."""
    kn = _knowledge(tiny_run, 1, 0)
    for objective in ({"bn_statistics": {"weight": 1.0}, "update_matching": {"weight": 1.0}, "total_variation": {"weight": 0.1}},
                      {"bn_statistics": {"weight": 1.0}, "prior_distance": {"weight": 1.0}, "image_l2": {"weight": 1.0}}):
        cfg = build(AttackConfig, {"objective": objective, "optim": {"restarts": 2, "grid": {}}})
        attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
        attack.objective.to("meta")
        images = attack.images.detach().to("meta").requires_grad_(True)
        total, parts = attack.objective(images, attack.label_input().detach().to("meta"))
        total.sum().backward()
        assert total.device.type == "meta" and images.grad.device.type == "meta" and parts.shape == (2, len(objective))


def test_conv_layout_is_channels_last_for_batch_one_convolutions_only(tiny_run):
    assert conv_layout("auto", 1) == torch.channels_last and conv_layout("auto", 8) == torch.contiguous_format
    assert conv_layout("contiguous", 1) == torch.contiguous_format and conv_layout("channels_last", 8) == torch.channels_last
    with pytest.raises(UserError, match="memory_format"):  # the schema's Literal refuses it before any layout is chosen
        build(AttackConfig, {"optim": {"memory_format": "nhwc"}})
    kn = _knowledge(tiny_run, 1, 2)  # 1 image, batch 1
    for restarts, expected in ((1, True), (2, False)):
        cfg = build(AttackConfig, {"optim": {"restarts": restarts, "grid": {}}})
        objective = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels).objective
        convs = [p for p in objective.params0.values() if p.dim() == 4]
        # 1x1 and single-channel 3x3 kernels are both layouts at once: only the others tell them apart
        layout, other = (torch.channels_last, torch.contiguous_format) if expected else (torch.contiguous_format, torch.channels_last)
        assert all(p.is_contiguous(memory_format=layout) for p in convs)
        assert not all(p.is_contiguous(memory_format=other) for p in convs)


def test_auto_source_falls_back_to_none_when_running_statistics_are_withheld(tiny_run):
    kn = _knowledge(tiny_run, 1, 2)
    fm = FunctionalModel(kn.global_model())
    update = {k: v for k, v in kn.update.items() if "running" not in k}
    assert make_bn_source("auto", fm.bn_names, kn.global_state, update, 0.1, 1).name == "none"
    assert make_bn_source("auto", fm.bn_names, kn.global_state, kn.update, 0.1, 1).name == "multi_step"


# ----------------------------------------------------------------------------- objective terms


@pytest.mark.parametrize("term, params", [
    ("update_matching", {"weight": 1.0, "metric": "cosine"}),
    ("update_matching", {"weight": 1.0, "metric": "l2", "relu_grad": "exact"}),
    ("bn_statistics", {"weight": 1.0, "source": "multi_step"}),
    ("bn_statistics", {"weight": 1.0, "source": "one_step"}),
    ("bn_statistics", {"weight": 1.0, "source": "global"}),
    ("total_variation", {"weight": 1.0, "norm": "l1"}),
    ("total_variation", {"weight": 1.0, "norm": "l2"}),
    ("image_l2", {"weight": 1.0}),
    ("prior_distance", {"weight": 1.0}),
    ("group_consistency", {"weight": 1.0}),
])
def test_every_objective_term_sends_a_nonzero_gradient_to_the_images(tiny_run, term, params):
    """Defect 1: update matching (and every other term) really reaches the images."""
    kn = _knowledge(tiny_run, 1, 0)
    cfg = build(AttackConfig, {"objective": {term: params}, "optim": {"restarts": 2, "init_noise": 0.1, "grid": {}}})
    attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
    total, parts = attack.objective(attack.images, attack.label_input())
    total.sum().backward()
    assert attack.images.grad is not None
    assert float(attack.images.grad.abs().sum()) > 0
    assert torch.isfinite(attack.images.grad).all()


def test_objective_has_no_hidden_unweighted_term(tiny_run):
    """Defect 2: the replay's own classification loss does not leak gradient into the images."""
    kn = _knowledge(tiny_run, 1, 0)

    def grad(weight):
        cfg = build(AttackConfig, {"objective": {"update_matching": {"weight": weight}}, "optim": {"seed": 3, "grid": {}}})
        attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
        total, _ = attack.objective(attack.images, attack.label_input())
        total.sum().backward()
        return attack.images.grad.clone()

    g1, g2 = grad(1.0), grad(2.0)
    assert torch.allclose(2 * g1, g2, rtol=1e-4, atol=1e-10)


def test_vectorised_restarts_equal_looped_restarts(tiny_run):
    kn = _knowledge(tiny_run, 1, 0)
    spec = {"update_matching": {"weight": 1.0}, "bn_statistics": {"weight": 0.5}, "total_variation": {"weight": 0.1}}
    values = {}
    for vec in (True, False):
        cfg = build(AttackConfig, {"objective": spec, "optim": {"restarts": 3, "vectorize": vec, "grid": {}}})
        attack = GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)
        total, _ = attack.objective(attack.images, attack.label_input())
        total.sum().backward()
        values[vec] = (total.detach(), attack.images.grad.clone())
    assert torch.allclose(values[True][0], values[False][0], rtol=1e-5)
    assert torch.allclose(values[True][1], values[False][1], rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- labels


def test_analytic_label_recovery_is_right_on_50_random_batch_1_cases():
    spec = ModelSpec("bn_convnet", 1, 5, 8, 0, [0.5], [0.5], 0.1, width=4, depth=2)
    correct = 0
    for case in range(50):
        torch.manual_seed(case)
        model = build_model(spec).train()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        x, y = torch.rand(1, 1, 8, 8), torch.randint(0, 5, (1,))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9 if case % 2 else 0.0, weight_decay=1e-4 if case % 3 == 0 else 0.0)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        delta = {k: v - start[k] for k, v in model.state_dict().items()}
        proc = ClientProcedure({"name": "sgd", "lr": 0.1, "momentum": 0.9 if case % 2 else 0.0, "weight_decay": 1e-4 if case % 3 == 0 else 0.0}, 1, 1, 1, 1, 0.1)
        got = recover_labels(delta, start, model, 5, proc, torch.full((5,), 0.2))
        correct += int(got.item() == y.item())
    assert correct == 50


def test_label_counts_for_a_batch_from_the_last_layer(tiny_run):
    kn = _knowledge(tiny_run, 1, 0)
    gt = load_ground_truth(tiny_run, 1, 0)
    model = kn.global_model().eval()
    with torch.no_grad():
        mean_probs = model(gt.images).softmax(-1).mean(0)  # with the true mean prediction, counts are exact
    got = recover_labels(kn.update, kn.global_state, model, kn.spec.num_classes, ClientProcedure.from_meta(kn.meta), mean_probs)
    assert sorted(got.tolist()) == sorted(gt.labels.tolist())


# ----------------------------------------------------------------------------- optimisation


def _attack(kn, **optim):
    cfg = build(AttackConfig, {"objective": {"bn_statistics": {"weight": 1.0}, "total_variation": {"weight": 0.01}},
                               "optim": {"iterations": 5, "warmup": 1, "grid": {}, **optim}, "logging": {"progress": False, "wandb": False}})
    return cfg, GradientInversionAttack(kn, cfg.objective, cfg.optim, cfg.labels)


def test_langevin_noise_changes_the_iterate(tiny_run):
    """Defect 4: the noise acts on the optimised images, not on a copy."""
    from pipelines.attack_setup import make_trainer
    from inversion.attack_module import iteration_loader

    kn = _knowledge(tiny_run, 1, 2)
    finals = {}
    for langevin in (0.0, 0.05):
        cfg, attack = _attack(kn, langevin=langevin)
        make_trainer(cfg).fit(attack, train_dataloaders=iteration_loader(5))
        finals[langevin] = attack.images.detach().clone()
    diff = (finals[0.05] - finals[0.0]).abs()
    assert float(diff.max()) > 1e-3


def test_best_iterate_is_kept_by_objective_and_a_nan_restart_is_never_selected(tiny_run):
    """Defect 8: best by objective value, restarts, and a diverged restart never wins."""
    kn = _knowledge(tiny_run, 1, 2)
    cfg, attack = _attack(kn, restarts=3)
    with torch.no_grad():
        attack.images[1] = float("nan")  # restart 1 diverges: its objective is NaN
    for step in range(4):
        loss = attack.training_step(None, step)
        loss.backward()
        attack.on_before_optimizer_step(None)
        assert torch.isfinite(attack.images.grad[0]).all()
        with torch.no_grad():
            attack.images -= 0.01 * attack.images.grad.sign()
            attack.images.grad = None
    result = attack.result()
    assert result.restart != 1
    assert math.isinf(result.restart_objectives[1])
    assert result.objective == min(v for v in result.restart_objectives.values())
    # the kept images are the ones that had the kept objective
    with torch.no_grad():
        total, _ = attack.objective(result.restart_images[[result.restart]], attack.label_input()[[result.restart]])
    assert float(total) == pytest.approx(result.objective, rel=1e-5)


def test_identical_reconstruction_scores_ssim_1_and_rdlv_from_prior():
    from leakage.metrics import SSIMSettings, ssim_pairs
    from leakage.scoring import score

    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32)
    prior = torch.rand(1, 32, 32)
    st = SSIMSettings.for_size(32)
    out = score(x.clone(), torch.tensor([0, 1, 0]), x, torch.tensor([0, 1, 0]), prior, 2, st)
    s = ssim_pairs(prior[None].expand_as(x), x, st)
    assert out.ssim == pytest.approx(1.0, abs=1e-5)
    for i, row in enumerate(out.per_image):
        assert row["ssim"] == pytest.approx(1.0, abs=1e-5)
        assert row["rdlv"] == pytest.approx((1 - float(s[i])) / float(s[i]), rel=1e-4)
    assert out.label_accuracy == 1.0


def test_registration_undoes_a_permutation_of_the_restarts_images_exactly():
    from inversion.terms import register_restarts

    gen = torch.Generator().manual_seed(0)
    base = torch.rand(5, 1, 6, 6, generator=gen)
    shuffles = [torch.tensor([3, 0, 4, 1, 2]), torch.tensor([1, 2, 3, 4, 0])]
    # restart r holds the same five images in another order (plus a little noise that must not confuse the assignment)
    images = torch.stack([base] + [base[p] + 0.01 * torch.randn(base.shape, generator=gen) for p in shuffles])
    perm = register_restarts(images)
    assert perm[0].tolist() == [0, 1, 2, 3, 4]
    for r, p in enumerate(shuffles, start=1):
        assert torch.equal(p[perm[r]], torch.arange(5))  # images[r, perm[r]][i] is base[i]


def test_group_consistency_compares_the_same_image_across_restarts():
    from inversion.terms import GroupConsistency, WeightOnly

    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 4, 4, generator=gen), torch.rand(2, 1, 4, 4, generator=gen)
    term = GroupConsistency(WeightOnly(1.0), None)
    # restart 1 = restart 0's two images swapped: after registration they agree, the term is 0
    same = torch.stack([torch.stack([a[0], b[0]]), torch.stack([b[0], a[0]])])
    assert torch.allclose(term.all_restarts(same), torch.zeros(2), atol=1e-12)
    # hand-computed: restart 1 = restart 0 + 0.2 in one image (2 images of 16 px): consensus is +0.1 there,
    # each restart is 0.1 away on 16 of its 32 pixels -> mean squared distance 0.01 / 2
    moved = torch.stack([torch.stack([a[0], b[0]]), torch.stack([a[0] + 0.2, b[0]])])
    assert torch.allclose(term.all_restarts(moved), torch.full((2,), 0.005), atol=1e-7)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """The tiny federation on grayscale faces repeated to 3 channels (data.channels: 3)."""
    from federation.federation import Federation
    from federation.in_process import InProcessEngine
    from tests.conftest import tiny_train_config

    out = tmp_path_factory.mktemp("rgb") / "run"
    out.mkdir()
    cfg = tiny_train_config(out, **{"data.channels": 3, "fl.rounds": 1, "model.norm_mean": [0.5, 0.5, 0.5], "model.norm_std": [0.5, 0.5, 0.5]})
    InProcessEngine(Federation(cfg)).run(out)
    return out


def test_grayscale_constraint_keeps_every_channel_one_image(rgb_run):
    from pipelines.attack_setup import run_attack

    kn = _knowledge(rgb_run, 0, 2)
    assert kn.spec.in_chans == 3
    base = {"optim": {"iterations": 6, "restarts": 2, "warmup": 0, "init_noise": 0.2, "grid": {}}, "logging": {"progress": False, "wandb": False},
            "escalation": {"enabled": False}}
    free, _ = run_attack(kn, build(AttackConfig, base))
    tied, attack = run_attack(kn, build(AttackConfig, {**base, "optim": {**base["optim"], "grayscale": True}}))
    spread = lambda x: float((x - x.mean(-3, keepdim=True)).abs().max())  # noqa: E731
    assert spread(free.images) > 1e-3  # without the constraint the channels drift apart (noisy start, per-channel gradients)
    assert spread(tied.images) == 0.0 and spread(attack.images.detach()) == 0.0 and spread(tied.restart_images) == 0.0


def test_update_matching_on_an_all_zero_weight_delta_says_why_not_withheld():
    from inversion.terms import AttackSetting, UpdateMatching, UpdateMatchingParams

    params0 = {"w": torch.ones(3, 3), "b": torch.ones(3)}
    zero = AttackSetting({k: torch.zeros_like(v) for k, v in params0.items()}, list(params0), params0, None, None, None, None)
    with pytest.raises(UserError, match="2 parameter entries moved by zero or by less than float32 rounding noise \\(0 withheld"):
        UpdateMatching(UpdateMatchingParams(), zero)
    withheld = AttackSetting({}, list(params0), params0, None, None, None, None)
    with pytest.raises(UserError, match="all withheld or weighted 0"):
        UpdateMatching(UpdateMatchingParams(), withheld)


def test_channel_groups_score_every_kth_channel_of_every_layer_on_its_own(tiny_run):
    """holdout_unit: channel. Group j of a layer is channels j, j+k, ...; its loss is the one-step
    source's distance over those channels alone, and the groups' squared distances add up to the layer's."""
    kn = _knowledge(tiny_run, 1, 0)
    gt = load_ground_truth(tiny_run, 1, 0)
    out, fm, _ = _replay_true(kn, gt)
    torch.manual_seed(0)
    stats = [[BNStat(s.mean + 0.1 * torch.randn_like(s.mean), s.var * (1 + 0.2 * torch.rand_like(s.var)), s.count) for s in step]
             for step in out.stats]
    whole = make_bn_source("one_step", fm.bn_names, kn.global_state, kn.update, 0.1, 2)
    split = make_bn_source("one_step", fm.bn_names, kn.global_state, kn.update, 0.1, 2, channel_groups=4)
    layers = len(fm.bn_names)
    assert split.channel_groups == 4 and split.layers == 4 * layers
    losses = split.layer_losses(stats)
    assert losses.shape == (4 * layers,)
    for i, name in enumerate(fm.bn_names):  # by hand: the paper's one-step targets, channel j::4, averaged over the steps
        r0m, r0v = kn.global_state[f"{name}.running_mean"].double(), kn.global_state[f"{name}.running_var"].double()
        tm = ((r0m + kn.update[f"{name}.running_mean"].double()) - 0.9 * r0m) / 0.1
        tv = ((r0v + kn.update[f"{name}.running_var"].double()) - 0.9 * r0v) / 0.1
        for j in range(4):
            want = sum(float((step[i].mean[j::4].double() - tm[j::4]).norm() + (step[i].var_unbiased[j::4].double() - tv[j::4]).norm())
                       for step in stats) / len(stats)
            assert float(losses[4 * i + j]) == pytest.approx(want, rel=1e-4), (name, j)
    # the squared mean distances of the groups add up to the whole layer's, step by step (normalize none)
    for i in range(layers):
        s = stats[0][i]
        tm = whole.targets[0][i][0]
        groups = sum(float((s.mean[j::4] - tm[j::4]).pow(2).sum()) for j in range(4))
        assert groups == pytest.approx(float((s.mean - tm).pow(2).sum()), rel=1e-5)
    # a layer narrower than the groups: the source stays whole
    assert make_bn_source("one_step", fm.bn_names, kn.global_state, kn.update, 0.1, 2, channel_groups=10**6).channel_groups == 1
