"""FedAvg on state-dict deltas: every entry is averaged, BN running statistics included."""
from __future__ import annotations

import torch

Update = dict[str, torch.Tensor]


def client_weights(num_samples: list[int], local_steps: list[int], weighting: str) -> list[float]:
    """Normalised aggregation weights: by local samples (McMahan et al.) or by local steps (the paper)."""
    if weighting == "samples":
        raw = [float(n) for n in num_samples]
    elif weighting == "steps":
        raw = [float(t) for t in local_steps]
    elif weighting == "uniform":
        raw = [1.0] * len(num_samples)
    else:
        raise ValueError(f"unknown weighting '{weighting}'")
    total = sum(raw)
    return [w / total for w in raw] if total > 0 else [1.0 / len(raw)] * len(raw)


def average_updates(updates: list[Update], weights: list[float], reference: Update) -> Update:
    """Weighted mean of each entry over the clients that sent it (weights renormalised per entry).

    An entry nobody sent (withheld by a filter) averages to zero; integer entries (num_batches_tracked)
    are rounded back to their dtype.
    """
    out: Update = {}
    for key, ref in reference.items():
        present = [(u[key], w) for u, w in zip(updates, weights) if key in u]
        total = sum(w for _, w in present)
        if not present or total <= 0:
            out[key] = torch.zeros_like(ref)
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for value, w in present:
            acc += value.double() * (w / total)
        out[key] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out


def apply_update(state: Update, delta: Update) -> Update:
    return {k: (v + delta[k].to(v.dtype)) if k in delta else v.clone() for k, v in state.items()}
