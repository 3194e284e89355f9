"""The attack objective: the configured terms, evaluated per restart (vectorised with vmap)."""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch.func import vmap

from common.devices import move_to
from common.errors import UserError
from inversion.bn_sources import make_bn_source
from inversion.functional import FunctionalModel
from inversion.replay import ClientProcedure, LocalTrainingReplay, ReplayOutput, forward_steps
from inversion.terms import AttackSetting, BNStatistics, ObjectiveTerm, TermInput, UpdateMatching, make_terms
from inversion.threat_model import AttackerKnowledge
from model.factory import batch_norm_layers




def conv_layout(memory_format: str, conv_batch: int) -> torch.memory_format:
    """Layout of the convolution weights (activations follow them).

    On CPU, PyTorch convolves a batch of one image with its im2col kernels, which run ~10% faster
    channels-last; batches go to oneDNN, which was ~15% slower channels-last here (8 restarts).
    Values agree to float rounding either way (BENCHMARKS.md, precision).
    """
    if memory_format == "auto":
        memory_format = "channels_last" if conv_batch == 1 else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


class WeightGrid:
    """Term weights (and learning rates) tried side by side as restarts: restart r takes combination r
    mod the grid size.

    ``{total_variation: [0.01, 0.1]}`` and 4 restarts -> TV 0.01, 0.1, 0.01, 0.1. Which restart is
    returned is then decided by a criterion that does not depend on the weights (optim.select). The
    axis ``lr`` is not a term: it is the restart's Adam learning rate (the attack applies it), because
    a step size that converges on one update stalls on another (docs/attack.md).
    """

    STEP_AXES = ("lr",)  # axes the optimiser applies, not the objective

    def __init__(self, axes: dict[str, list[float]], spec: dict[str, dict[str, Any]]):
        self.axes = {str(k): [float(v) for v in vs] for k, vs in axes.items()}
        for name, values in self.axes.items():
            if name in self.STEP_AXES:
                if not values or not all(math.isfinite(v) and v > 0 for v in values):
                    raise UserError(f"optim.grid.{name} needs one or more learning rates > 0, got {values}")
                continue
            if name not in (spec or {}):
                raise UserError(f"optim.grid names '{name}', which is not a term of the objective ({', '.join(spec or {})}) "
                                f"or an optimiser axis ({', '.join(self.STEP_AXES)})")
            if not values or min(values) < 0:
                raise UserError(f"optim.grid.{name} needs one or more weights >= 0, got {values}")
        self.combos = list(itertools.product(*self.axes.values())) if self.axes else [()]

    def __bool__(self) -> bool:
        return bool(self.axes)

    def __len__(self) -> int:
        return len(self.combos)

    def spec_with_terms(self, spec: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The objective spec with every grid term built (weight > 0) even if its configured weight is 0."""
        out = {k: dict(v or {}) for k, v in (spec or {}).items()}
        for name, values in self.axes.items():
            if name not in self.STEP_AXES and max(values) > 0:
                out[name]["weight"] = max(values)
        return out

    def weight(self, restart: int, term: str, default: float) -> float:
        if term not in self.axes:
            return default
        return self.combos[restart % len(self.combos)][list(self.axes).index(term)]


# the packages whose objects the objective holds (terms, BN sources, the replay, the model's input path):
# moving the objective walks into these, and leaves anything else (functions, compiled wrappers) as is
WALKED_PACKAGES = ("inversion", "model", "privacy", "federation", "common")  # its own layer and those below: nothing else can be in it


class Objective:
    """``objective(images [R,N,C,H,W], labels) -> (total [R], parts [R, terms])``.

    Terms that need the update replay trigger one differentiable replay per restart; otherwise
    only forward passes of each step's dummy batch are made (BN statistics), which is far cheaper.
    """

    def __init__(self, knowledge: AttackerKnowledge, spec: dict[str, dict[str, Any]], batch_seed: int = 0, vectorize: bool = True,
                 compile: bool = False, memory_format: str = "contiguous", restarts: int = 1,
                 grid: dict[str, list[float]] | None = None, restart_ids: list[int] | None = None):
        model = knowledge.global_model()
        self.grid = WeightGrid(grid or {}, spec)
        configured = {name: float((params or {}).get("weight", 0.0)) for name, params in (spec or {}).items()}
        spec = self.grid.spec_with_terms(spec)
        self.proc = ClientProcedure.from_meta(knowledge.meta)
        oracle_order = knowledge.oracle.batch_positions
        self.steps = oracle_order if oracle_order is not None else self.proc.batches(batch_seed)
        if len(self.steps) != self.proc.local_steps:
            raise UserError(f"batch order has {len(self.steps)} steps, the update {self.proc.local_steps}")
        layout = conv_layout(memory_format, (restarts if vectorize else 1) * self.proc.batch_size)
        self.params0 = {n: p.detach().contiguous(memory_format=layout) if p.dim() == 4 else p.detach() for n, p in model.named_parameters()}
        observed = {k: v for k, v in knowledge.update.items() if k in self.params0}
        self.setting = AttackSetting(
            observed_delta=observed,
            param_names=list(self.params0),
            params0=self.params0,
            bn_source_factory=lambda name, normalize, update_scale, channel_groups=1: make_bn_source(
                name, [n for n, _ in batch_norm_layers(model)], knowledge.global_state, knowledge.update, self.proc.bn_momentum,
                self.proc.local_steps, knowledge.oracle.bn_statistics, normalize, update_scale, channel_groups,
                knowledge.meta.get("local_keys", [])),
            prior=knowledge.prior,
            norm_mean=model.input_path.mean[0],
            norm_std=model.input_path.std[0],
        )
        self.terms: list[ObjectiveTerm] = make_terms(spec, self.setting)
        self.diagnostics = [d for t in self.terms for d in t.diagnostics]
        self.names = [t.name for t in self.terms] + self.diagnostics
        um = self.update_matching
        # the smooth ReLU only changes second derivatives, which only update matching takes; without it the
        # smooth ReLU would be pure cost (identical values and image gradients, bench.restarts)
        self.fmodel = FunctionalModel(model, um.params.relu_grad if um else "exact", um.params.relu_beta if um else 10.0)
        self.needs_replay = any(t.needs_replay for t in self.terms)
        self.replay = LocalTrainingReplay(self.fmodel, self.params0, self.proc)
        bn_terms = [t for t in self.terms if isinstance(t, BNStatistics)]
        mode = bn_terms[0].params.weights_per_step if bn_terms else "global"
        self.step_params = self._params_per_step(observed, mode)
        self.vectorize = vectorize
        # torch.compile sees through the replay (torch.func.grad inside) and the smooth ReLU; it pays
        # off for long attacks (compiling takes tens of seconds), see BENCHMARKS.md
        if compile:
            # a new attack in the same process (a study runs many) would add guards to the previous attacks'
            # compiled code until dynamo's recompile limit sends it back to eager (measured: half the
            # iterations per second from the third attack on); start from a clean cache instead, the
            # on-disk inductor cache still makes the recompile quick
            torch._dynamo.reset()
        self.per_restart = torch.compile(self.restart_values, dynamic=False) if compile else self.restart_values
        ids = restart_ids if restart_ids is not None else list(range(restarts))
        self.restart_ids = ids
        # [R, terms + diagnostics]: restart r's weights (its grid setting); diagnostics weigh 0
        self.weights = torch.tensor([[self.grid.weight(r, t.name, t.weight) for t in self.terms] + [0.0] * len(self.diagnostics)
                                     for r in ids])
        # the configured weights, the same for every restart: objectives of different grid settings compared on one scale
        self.shared_weights = torch.tensor([configured.get(t.name, 0.0) if t.name in self.grid.axes else t.weight for t in self.terms]
                                           + [0.0] * len(self.diagnostics))
        self.model = model
        self.bn_source = bn_terms[0].source.name if bn_terms else "none"

    def _params_per_step(self, observed: dict[str, torch.Tensor], mode: str) -> list[dict[str, torch.Tensor]]:
        """Weights used by step k when the update is not replayed: theta0 + k/T * delta, or theta0."""
        steps = self.proc.local_steps
        if mode == "global" or steps == 1:
            return [self.params0] * steps
        return [{k: p + (t / steps) * observed[k].to(p.dtype) if k in observed else p for k, p in self.params0.items()} for t in range(steps)]

    def run_client(self, x: torch.Tensor, y: torch.Tensor) -> ReplayOutput:
        if self.needs_replay:
            return self.replay.run(x, y, self.steps)
        return forward_steps(self.fmodel, x, self.steps, self.step_params)

    def restart_values(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-restart term values [T]; vmappable."""
        out = self.run_client(x, y)
        inp = TermInput(x, out)
        values, diagnostics = [], []
        for t in self.terms:
            if t.across_restarts:
                values.append(x.new_zeros(()))
                continue
            value, *extra = t.values(inp)  # one pass for a term's value and its diagnostics
            values.append(value)
            diagnostics += extra
        return torch.stack(values + diagnostics)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, restarts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted total [R], per-term values and diagnostics [R, len(names)]) of restarts ``restarts``
        (positions in this objective's restart list; default: all of them, or any number when every
        restart has the same weights)."""
        if restarts is not None:
            weights = self.weights[restarts]
        elif images.shape[0] == self.weights.shape[0]:
            weights = self.weights
        elif not self.grid:
            weights = self.weights[:1].expand(images.shape[0], -1)
        else:
            raise ValueError(f"{images.shape[0]} restarts given for an objective with a grid of {self.weights.shape[0]}: pass restarts")
        if self.vectorize and images.shape[0] > 1:
            parts = vmap(self.per_restart)(images, labels)
        else:
            parts = torch.stack([self.per_restart(x, y) for x, y in zip(images, labels)])
        for i, term in enumerate(self.terms):
            if term.across_restarts:
                parts = parts.clone()
                parts[:, i] = term.all_restarts(images)
        return (parts * weights.to(parts)).sum(1), parts

    def to(self, device: torch.device | str) -> "Objective":
        """Everything the objective holds (weights, targets, masks, batch indices) on ``device``."""
        move_to(self, torch.device(device), WALKED_PACKAGES)
        return self

    def grid_setting(self, restart: int) -> dict[str, float]:
        """The grid setting of the restart at position ``restart`` ({} without a grid)."""
        setting = {name: round(float(self.weights[restart, i]), 6) for i, name in enumerate(t.name for t in self.terms) if name in self.grid.axes}
        setting.update({name: self.grid.weight(self.restart_ids[restart], name, 0.0) for name in WeightGrid.STEP_AXES if name in self.grid.axes})
        return setting

    @property
    def heldout_layers(self) -> int:
        """How many BN layers (or channel groups) are held out of the prior (the convergence signal's denominator)."""
        bn = next((t for t in self.terms if isinstance(t, BNStatistics)), None)
        return int(bn.held_out.sum()) if bn is not None and bn.holding_out else 0

    @property
    def heldout_unit(self) -> str:
        """layer, or channel when one channel group of every BN layer is held out instead (few BN layers)."""
        bn = next((t for t in self.terms if isinstance(t, BNStatistics)), None)
        return "channel" if bn is not None and bn.source.channel_groups > 1 else "layer"

    @property
    def bn_normalized(self) -> bool:
        """Whether the BN mismatch is a relative error per layer (a scale every model shares)."""
        bn = next((t for t in self.terms if isinstance(t, BNStatistics)), None)
        return bn is not None and bn.params.normalize == "layer"

    @property
    def update_matching(self) -> UpdateMatching | None:
        return next((t for t in self.terms if isinstance(t, UpdateMatching)), None)
