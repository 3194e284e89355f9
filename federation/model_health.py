"""Is the global model still a model? A defence that breaks it (negative or non-finite BN running variances,
non-finite weights, a test loss of NaN) is a bug, not a privacy-utility trade-off, and must never be reported
as an accuracy cost (issue 41: the per-tensor sigma0 filter left half the running variances negative and every
noisy federation at exactly 0.500, and the run ended "done" without a word)."""
from __future__ import annotations

import math

import torch


def model_problems(state: dict[str, torch.Tensor], test_loss: float | None = None) -> list[str]:
    """What is wrong with a global model ([] = nothing): counted, so that the message says how badly."""
    problems = []
    variances = {k: v for k, v in state.items() if k.endswith("running_var")}
    total = sum(v.numel() for v in variances.values())
    negative = sum(int((v < 0).sum()) for v in variances.values())
    if negative:
        problems.append(f"{negative} of {total} BN running variances negative")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        problems.append(f"{sum(bad.values())} non-finite entries in {len(bad)} tensors (first: {first})")
    if test_loss is not None and not math.isfinite(test_loss):
        problems.append(f"test loss {test_loss}")
    return problems
