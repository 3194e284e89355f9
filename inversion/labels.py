"""Label recovery from the last layer's update.

With cross-entropy, the last-layer bias gradient of a batch is mean_i(p_i - y_i): for one image it
is negative exactly at the true class, and for a batch its sum over steps reveals the class counts
once the predicted probabilities are estimated. Which step each label belongs to is not
identifiable from the final update, so recovered labels are assigned to dummy slots in class order.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from common.errors import UserError
from inversion.replay import ClientProcedure

if TYPE_CHECKING:
    from inversion.threat_model import AttackerKnowledge

STRATEGIES = ("auto", "analytic", "joint", "oracle")


@dataclasses.dataclass
class LabelChoice:
    """How the attack treats labels: fixed (analytic or oracle), or optimised jointly from ``start``."""

    strategy: str
    fixed: torch.Tensor | None
    start: torch.Tensor | None
    warning: str | None  # the update does not determine the labels: what was chosen


def choose_labels(strategy: str, knowledge: "AttackerKnowledge", model: nn.Module, proc: ClientProcedure) -> LabelChoice:
    """The label strategy an attack runs with, from what the attacker holds (``auto``: analytic when
    the classifier's update was sent, else joint)."""
    if strategy not in STRATEGIES:
        raise UserError(f"labels.strategy must be {', '.join(STRATEGIES[:-1])} or {STRATEGIES[-1]}, got {strategy}")
    if strategy == "oracle":
        if knowledge.oracle.labels is None:
            raise UserError("labels.strategy=oracle needs the oracle labels (threat.oracle_labels=true)")
        return LabelChoice("oracle", knowledge.oracle.labels.long(), None, None)
    num_classes = knowledge.spec.num_classes
    labels = recover_labels(knowledge.update, knowledge.global_state, model, num_classes, proc, prior_probs(model, knowledge.prior))
    warning = label_ambiguity(knowledge.update, knowledge.global_state, model, num_classes, proc, labels)
    if strategy == "joint":
        return LabelChoice("joint", None, labels, warning)
    if labels is None:
        if strategy == "analytic":
            raise UserError("analytic label recovery needs the classifier's update, which this update withholds")
        return LabelChoice("joint", None, None, warning)
    return LabelChoice("analytic", labels, None, warning)


@torch.no_grad()
def prior_probs(model: nn.Module, prior: torch.Tensor) -> torch.Tensor:
    """The global model's class probabilities on the prior image (eval mode; the mode is restored)."""
    was = model.training
    model.eval()
    probs = model(prior[None]).softmax(-1)[0]
    model.train(was)
    return probs


def classifier_keys(model: nn.Module, num_classes: int) -> tuple[str, str | None]:
    """The last Linear layer with ``num_classes`` outputs: (weight key, bias key or None)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = (f"{name}.weight", f"{name}.bias" if module.bias is not None else None)
    if found is None:
        raise ValueError("no Linear classifier layer with num_classes outputs")
    return found


def summed_gradient(delta: torch.Tensor, param0: torch.Tensor, proc: ClientProcedure) -> torch.Tensor:
    """Estimate sum_t g_t from an SGD update, assuming similar gradients at every step.

    Delta = -lr * sum_s c_s d_s with c_s = (1 - mu^(T-s)) / (1 - mu) under momentum mu, and
    d_s = g_s + wd * theta. Adam's update keeps only the sign, which is all batch-1 recovery needs.
    """
    opt = proc.optimizer
    steps = proc.local_steps
    if opt["name"] != "sgd":
        return -delta.double()
    lr, mu, wd = float(opt["lr"]), float(opt.get("momentum", 0.0)), float(opt.get("weight_decay", 0.0))
    coeff = sum((1 - mu ** (steps - s)) / (1 - mu) if mu else 1.0 for s in range(steps))
    d_sum = -delta.double() * steps / (lr * coeff)
    return d_sum - steps * wd * param0.double()


def recover_labels(update: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor], model: nn.Module,
                   num_classes: int, proc: ClientProcedure, mean_probs: torch.Tensor) -> torch.Tensor | None:
    """Labels for the N dummy slots, sorted by class, or None when the classifier entries were withheld.

    ``mean_probs``: the attacker's estimate of the client's mean softmax output (e.g. the global
    model's prediction on the prior image).
    """
    w_key, b_key = classifier_keys(model, num_classes)
    if b_key is not None and b_key in update:
        g = summed_gradient(update[b_key], global_state[b_key], proc)
    elif w_key in update:
        # without a bias: rows of the weight gradient are (p - y)_c h^T, and h >= 0 after a ReLU
        g = summed_gradient(update[w_key], global_state[w_key], proc).sum(1)
    else:
        return None
    n = proc.num_images
    if n == 1:
        return g.argmin().view(1)
    # sum_t g_t = (E / B) (n p - counts) when each image is seen E times in batches of B = nE/T
    counts = n * mean_probs.double() - (n / proc.local_steps) * g
    return counts_to_labels(counts, n)


def label_ambiguity(update: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor], model: nn.Module, num_classes: int,
                    proc: ClientProcedure, chosen: torch.Tensor | None) -> str | None:
    """A warning when the classifier's update does not determine the labels, saying what was chosen.

    A confident global model gives a bias update of exactly zero (p = y in float32); the classes
    then tie and the recovery's choice is arbitrary (argmin picks the first class).
    """
    if chosen is None:
        return None
    w_key, b_key = classifier_keys(model, num_classes)
    key = b_key if b_key is not None and b_key in update else w_key
    if key not in update:
        return None
    g = summed_gradient(update[key], global_state[key], proc)
    if key == w_key:
        g = g.sum(1)
    scale = float(g.abs().max())
    ordered = g.sort().values
    tie = num_classes > 1 and float(ordered[1] - ordered[0]) <= 1e-9 * max(scale, 1e-30)
    if scale == 0.0 or (proc.num_images == 1 and tie):
        return (f"the classifier's update does not determine the label{'s' if proc.num_images > 1 else ''} "
                f"({key} update max |.| = {scale:.1e}{', the smallest entries tie' if scale else ''}): "
                f"chose {chosen.tolist()} arbitrarily")
    return None


def counts_to_labels(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Non-negative integer counts summing to n (largest remainder), expanded to sorted labels."""
    c = counts.clamp_min(0)
    c = c * (n / c.sum()) if c.sum() > 0 else torch.full_like(c, n / len(c))
    base = c.floor()
    short = n - int(base.sum())
    if short > 0:
        base[(c - base).argsort(descending=True)[:short]] += 1
    return torch.repeat_interleave(torch.arange(len(c)), base.long())


def count_accuracy(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Order-free label accuracy: the fraction of labels whose class count is matched."""
    p = torch.bincount(predicted.flatten(), minlength=num_classes)
    t = torch.bincount(true.flatten(), minlength=num_classes)
    return float(torch.minimum(p, t).sum()) / max(1, int(true.numel()))


def assign_labels(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Give the multiset ``labels`` to the N dummies so that each is as likely as possible under ``probs`` [N, K]."""
    from scipy.optimize import linear_sum_assignment

    cost = -torch.log(probs.double().clamp_min(1e-12))[:, labels]  # [N dummies, N label slots]
    rows, cols = linear_sum_assignment(cost.numpy())
    out = torch.empty_like(labels)
    out[torch.as_tensor(rows)] = labels[torch.as_tensor(cols)]
    return out
