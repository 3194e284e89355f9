"""What a client keeps: FedBN's local BN entries (Li et al. 2021), which never leave the site.

The paper's attack reads the batch statistics out of the BN running-statistics update. The defence FL
practitioners deploy against it is not noise but keeping those buffers (and, in FedBN proper, the BN
affine parameters too) on the client: the server averages the rest, and each client trains the averaged
weights with its own BN entries. The server's global model then holds no trained BN statistics, so the
federation's accuracy is measured as FedBN measures it: each client's model (global weights, its own BN
entries) on the test set, averaged over the clients.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from common.files import load_tensors, save_tensors
from federation.run_layout import RunLayout
from model.factory import BN_BUFFERS, batch_norm_layers

State = dict[str, torch.Tensor]

AFFINE = ("weight", "bias")


def local_keys(model: nn.Module, bn_buffers: str, bn_affine: str) -> list[str]:
    """The state-dict entries a client keeps: ``bn_buffers``/``bn_affine`` = 'local' keeps that part of every BN layer."""
    parts = (BN_BUFFERS if bn_buffers == "local" else ()) + (AFFINE if bn_affine == "local" else ())
    state = model.state_dict()
    return sorted(f"{name}.{part}" for name, _ in batch_norm_layers(model) for part in parts if f"{name}.{part}" in state)


class ClientStates:
    """Each client's kept entries, from its first local training on (before it, the global model's values)."""

    def __init__(self, keys: Iterable[str]):
        self.keys = sorted(keys)
        self.kept: dict[int, State] = {}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def start(self, client: int, global_state: State) -> State:
        """The model the client trains this round: the global model with its own kept entries."""
        own = self.kept.get(client)
        if not own:
            return global_state
        return {k: (own[k] if k in own else v) for k, v in global_state.items()}

    def keep(self, client: int, trained: State) -> State:
        """Store the kept entries of a client's trained model; returns them (copies)."""
        kept = {k: trained[k].detach().cpu().clone() for k in self.keys}
        self.kept[client] = kept
        return kept

    def save(self, run: RunLayout, rnd: int, clients: Iterable[int]) -> None:
        """Site-local files (like the ground truth): what the clients of round ``rnd`` keep after it, for --resume."""
        for client in clients:
            if client in self.kept:
                save_tensors(run.local_state(rnd, client), self.kept[client])

    def load(self, run: RunLayout, before_round: int, clients: Iterable[int]) -> None:
        """Each client's latest kept entries from the rounds before ``before_round`` (a resume)."""
        for client in clients:
            for rnd in range(before_round - 1, -1, -1):
                path = run.local_state(rnd, client)
                if path.is_file():
                    self.kept[client] = load_tensors(path, f"client {client}'s local state")
                    break
