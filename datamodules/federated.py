"""The federated split: a held-out test set and K clients, each with its own size and batch size."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from common.config_loader import option
from common.errors import UserError
from datamodules.sources import ImagePool

# The paper's 9-client layout (images, batch size); client 9 is the 1-image "high-risk" client.
PAPER9 = [(8, 4), (32, 4), (128, 4), (512, 4), (8, 8), (32, 8), (128, 8), (512, 8), (1, 1)]


@dataclasses.dataclass
class ClientSpec:
    images: int = option(8, "number of local training images")
    batch_size: int = option(4, "local batch size")
    classes: list[str] = option(help="draw this client's images only from these class names (empty = any)", factory=list)


@dataclasses.dataclass
class SplitConfig:
    clients: list[ClientSpec] = option(help="one entry per client (ignored when preset is set)", factory=lambda: [ClientSpec(64, 8), ClientSpec(40, 8), ClientSpec(8, 4), ClientSpec(1, 1, ["face"])])
    preset: str = option("", "'' or paper9: the paper's 9-client layout, scaled down to the data available")
    partition: str = option("iid", "iid, or dirichlet: label skew with class proportions ~ Dirichlet(alpha)")
    dirichlet_alpha: float = option(0.5, "concentration of the Dirichlet label skew (smaller = more skewed)")


@dataclasses.dataclass
class FederatedSplit:
    client_indices: list[torch.Tensor]  # pool indices of each client's images
    test_indices: torch.Tensor
    train_indices: torch.Tensor  # the whole training pool (the clients' images and the ones dealt to no client)
    specs: list[ClientSpec]

    @property
    def public_indices(self) -> torch.Tensor:
        """The images no client holds: the test split and the training images dealt to no client.

        What a server has besides the clients' updates (it evaluates on the test split), so the
        attacker's prior image is built from these and never from a client's private images."""
        dealt = torch.cat(self.client_indices) if self.client_indices else torch.zeros(0, dtype=torch.int64)
        undealt = self.train_indices[~torch.isin(self.train_indices, dealt)]
        return torch.sort(torch.cat([self.test_indices, undealt])).values


def paper9_layout(available: int) -> list[ClientSpec]:
    """The paper's layout; the image counts shrink by one factor until they fit ``available``.

    A client never gets fewer images than its batch size, and the 1-image client stays at 1.
    """
    scale = min(1.0, available / sum(n for n, _ in PAPER9))
    while scale > 0:
        sizes = [n if n == 1 else max(b, int(round(n * scale))) for n, b in PAPER9]
        if sum(sizes) <= available:
            return [ClientSpec(images=n, batch_size=b) for n, (_, b) in zip(sizes, PAPER9)]
        scale *= 0.97
    raise UserError(f"the paper9 preset needs at least {sum(b for _, b in PAPER9)} training images, the pool holds {available}")


def resolve_specs(cfg: SplitConfig, available: int) -> list[ClientSpec]:
    if cfg.preset == "paper9":
        return paper9_layout(available)
    if cfg.preset:
        raise UserError(f"unknown split preset '{cfg.preset}' (known: paper9)")
    if not cfg.clients:
        raise UserError("the federation needs at least one client (fl.clients is empty)")
    return cfg.clients


def validate_specs(specs: list[ClientSpec]) -> None:
    for i, spec in enumerate(specs):
        if spec.images < 1:
            raise UserError(f"client {i} must have at least 1 image, got {spec.images}")
        if spec.batch_size < 1:
            raise UserError(f"client {i} batch size must be at least 1, got {spec.batch_size}")
        if spec.batch_size > spec.images:
            raise UserError(f"client {i}: batch size {spec.batch_size} is larger than its {spec.images} image(s)")


def split_test(labels: torch.Tensor, test_fraction: float, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of the pool."""
    if not 0 < test_fraction < 1:
        raise UserError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    y = labels.numpy()
    for c in np.unique(y):
        idx = gen.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.array(sorted(train)), np.array(sorted(test))


def make_split(pool: ImagePool, cfg: SplitConfig, test_fraction: float, seed: int) -> FederatedSplit:
    """Deterministic under ``seed``; every client gets exactly its number of images, disjoint."""
    gen = np.random.default_rng(seed)
    train, test = split_test(pool.labels, test_fraction, gen)
    specs = resolve_specs(cfg, len(train))
    validate_specs(specs)
    need = sum(s.images for s in specs)
    if need > len(train):
        raise UserError(f"the clients need {need} images but the training pool holds {len(train)} (after holding out {len(test)} for testing)")
    y = pool.labels.numpy()
    remaining = {int(c): list(gen.permutation(train[y[train] == c])) for c in np.unique(y[train])}
    names = {name: i for i, name in enumerate(pool.class_names)}
    assigned: list[list[int] | None] = [None] * len(specs)
    # constrained clients first, so that free clients cannot exhaust the classes they need
    order = sorted(range(len(specs)), key=lambda i: (not specs[i].classes, i))
    for i in order:
        spec = specs[i]
        allowed = _allowed_classes(spec, names, i)
        if cfg.partition == "dirichlet":
            assigned[i] = _draw_dirichlet(remaining, allowed, spec.images, cfg.dirichlet_alpha, gen, i)
        elif cfg.partition == "iid":
            assigned[i] = _draw_iid(remaining, allowed, spec.images, gen, i)
        else:
            raise UserError(f"unknown fl.split.partition '{cfg.partition}' (iid, dirichlet)")
    clients = [torch.tensor(sorted(a), dtype=torch.int64) for a in assigned if a is not None]
    return FederatedSplit(clients, torch.from_numpy(test).long(), torch.from_numpy(train).long(), specs)


def _allowed_classes(spec: ClientSpec, names: dict[str, int], i: int) -> list[int]:
    if not spec.classes:
        return sorted(names.values())
    unknown = [c for c in spec.classes if c not in names]
    if unknown:
        raise UserError(f"client {i}: unknown class name(s) {unknown} (classes: {sorted(names)})")
    return [names[c] for c in spec.classes]


def _take(remaining: dict[int, list[int]], c: int, k: int) -> list[int]:
    got, remaining[c] = remaining[c][:k], remaining[c][k:]
    return got


def _draw_iid(remaining: dict[int, list[int]], allowed: list[int], n: int, gen: np.random.Generator, i: int) -> list[int]:
    candidates = [(c, idx) for c in allowed for idx in remaining.get(c, [])]
    if len(candidates) < n:
        raise UserError(f"client {i} needs {n} images of classes {allowed} but only {len(candidates)} remain")
    picked = gen.choice(len(candidates), size=n, replace=False)
    out = []
    for p in picked:
        c, idx = candidates[p]
        remaining[c].remove(idx)
        out.append(int(idx))
    return out


def _draw_dirichlet(remaining: dict[int, list[int]], allowed: list[int], n: int, alpha: float, gen: np.random.Generator, i: int) -> list[int]:
    if alpha <= 0:
        raise UserError(f"fl.split.dirichlet_alpha must be positive, got {alpha}")
    props = gen.dirichlet([alpha] * len(allowed))
    counts = gen.multinomial(n, props)
    out: list[int] = []
    for c, k in zip(allowed, counts):
        out.extend(int(v) for v in _take(remaining, c, int(k)))
    if len(out) < n:  # a class ran out: fill from the others, most plentiful first
        for c in sorted(allowed, key=lambda c: -len(remaining.get(c, []))):
            out.extend(int(v) for v in _take(remaining, c, n - len(out)))
    if len(out) < n:
        raise UserError(f"client {i} needs {n} images of classes {allowed} but only {len(out)} remain")
    return out


def local_steps(images: int, batch_size: int, epochs: int, steps: int = 0) -> int:
    """Optimiser steps a client takes: a fixed number, or ceil(n/b) per epoch (no drop_last)."""
    return steps if steps > 0 else epochs * math.ceil(images / batch_size)
