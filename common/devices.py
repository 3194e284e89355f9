"""Moving an object graph of plain Python objects, containers and tensors to a device.

The attack objective is built on the CPU from the update (weights, targets, masks, index tensors)
and held in small plain objects (terms, BN sources, the replay); Lightning only moves a
LightningModule's own parameters and buffers. Walking the graph once keeps a new term or source
from having to implement its own ``to``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

def move_to(obj: Any, device: torch.device | str, packages: tuple[str, ...], _memo: dict[int, Any] | None = None) -> Any:
    """``obj`` with every reachable tensor on ``device``; lists, dicts and objects are updated in place,
    so references shared between them stay shared. ``packages``: the top-level packages whose objects
    are walked into (the caller names its own; anything else, such as functions, compiled wrappers
    and generators, is left as is)."""
    memo = {} if _memo is None else _memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, (torch.Tensor, nn.Module)):
        out = obj.to(device)
    elif isinstance(obj, list):
        memo[key] = obj
        obj[:] = [move_to(v, device, packages, memo) for v in obj]
        return obj
    elif isinstance(obj, dict):
        memo[key] = obj
        for k in list(obj):
            obj[k] = move_to(obj[k], device, packages, memo)
        return obj
    elif isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        out = tuple(move_to(v, device, packages, memo) for v in obj)
    elif _walked(obj, packages):
        memo[key] = obj
        for name, value in list(vars(obj).items()):
            setattr(obj, name, move_to(value, device, packages, memo))
        return obj
    else:
        out = obj
    memo[key] = out
    return out


def _walked(obj: Any, packages: tuple[str, ...]) -> bool:
    package = (type(obj).__module__ or "").split(".")[0]
    return package in packages and hasattr(obj, "__dict__") and not isinstance(obj, type)
