"""The gradient-inversion attack as a LightningModule: its parameters are the dummy images.

One ``Trainer.fit`` is one attack. Restarts are an extra leading dimension of the images; each
restart's best iterate is kept by objective value (never by comparison with any training image),
and a restart whose objective is not finite is never selected.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from common.errors import UserError
from inversion.attack_config import LabelConfig, OptimConfig
from inversion.labels import assign_labels, choose_labels, recover_labels
from inversion.objective import Objective
from inversion.threat_model import AttackerKnowledge


class Iterations(Dataset):
    """A dataset of step numbers: the Trainer's loop drives the optimisation, one step per item."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def iteration_loader(n: int) -> DataLoader:
    return DataLoader(Iterations(n), batch_size=None, shuffle=False, num_workers=0)


@dataclasses.dataclass
class AttackResult:
    images: torch.Tensor  # [N, C, H, W] of the chosen restart
    labels: torch.Tensor  # [N]
    objective: float
    restart: int  # global restart id
    restart_objectives: dict[int, float]
    selection: str  # objective or holdout: what chose the restart
    restart_scores: dict[int, float]  # the selection criterion of every restart's best iterate
    restart_settings: dict[int, dict[str, float]]  # each restart's grid setting ({} without a grid)
    restart_images: torch.Tensor  # [R, N, C, H, W] best iterate of every local restart
    label_strategy: str
    iterations: int
    seconds: float
    trace: list[dict[str, Any]]
    label_warning: str | None = None  # the update did not determine the labels (what was chosen)
    # the held-out BN mismatch of every restart's best iterate and of its starting image ({} without held-out layers)
    restart_heldout: dict[int, float] = dataclasses.field(default_factory=dict)
    restart_heldout_start: dict[int, float] = dataclasses.field(default_factory=dict)


def selection(requested: str, objective: Objective) -> str:
    """The criterion that chooses among restarts. Each restart's own weighted objective is not comparable
    across grid settings (a larger TV weight inflates it), so restarts are scored on a scale they share:
    the mismatch of the BN layers no restart optimised (holdout), which the attacker computes from the
    update alone, or the objective with the configured weights, the same for every restart (objective)."""
    held_out = "bn_holdout" in objective.names
    if requested == "auto":
        requested = "holdout" if held_out else "objective"
    if requested == "holdout" and not held_out:
        raise UserError("optim.select=holdout needs BN layers held out of the prior (objective.bn_statistics.holdout >= 2, "
                        "a BN source with targets and at least 2 BN layers)")
    return requested


LABEL_LOGIT_START = 2.0  # joint labels start at softmax([2, 0]) ~ [0.88, 0.12] on the analytic guess


def warmup_cosine(warmup: int, total: int, schedule: str, time_progress: Callable[[], float] | None = None):
    """Linear warm-up, then cosine decay over the iterations, or over the time budget if that ends first."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if time_progress is not None:
            progress = max(progress, time_progress())
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def restart_generator(seed: int, restart: int) -> torch.Generator:
    """One generator per restart id, so that a restart is the same wherever (and with whom) it runs."""
    return torch.Generator().manual_seed(seed * 100_003 + restart * 7_919 + 1)


class GradientInversionAttack(pl.LightningModule):
    def __init__(self, knowledge: AttackerKnowledge, objective: dict[str, dict[str, Any]], optim: OptimConfig,
                 labels: LabelConfig, trace_every: int = 0):
        super().__init__()  # the settings were checked by inversion.attack_config.check_attack_config (pipelines.attack_job)
        self.knowledge = knowledge
        self.optim_cfg = optim
        self.restart_ids = list(range(optim.restarts))
        self.objective = Objective(knowledge, objective, batch_seed=optim.seed, vectorize=optim.vectorize, compile=optim.compile,
                                   memory_format=optim.memory_format, restarts=len(self.restart_ids), grid=optim.grid,
                                   restart_ids=self.restart_ids)
        self.select = selection(optim.select, self.objective)
        # each restart's learning rate relative to optim.lr (the grid's lr axis); None when all share optim.lr
        scale = [self.objective.grid.weight(r, "lr", optim.lr) / optim.lr for r in self.restart_ids]
        self.lr_scale = torch.tensor(scale) if any(v != 1.0 for v in scale) else None
        spec = knowledge.spec
        n = self.objective.proc.num_images
        self.shape = (n, spec.in_chans, spec.image_size, spec.image_size)
        init = torch.stack([self._initial(r) for r in self.restart_ids])
        self.images = nn.Parameter(init)
        self.label_cfg = labels
        choice = choose_labels(labels.strategy, knowledge, self.objective.model, self.objective.proc)
        self.label_strategy, self.label_warning, fixed, start = choice.strategy, choice.warning, choice.fixed, choice.start
        if fixed is not None:
            self.register_buffer("fixed_labels", fixed.expand(len(self.restart_ids), n).clone())
            self.label_logits = None
        else:
            self.fixed_labels = None
            logits = torch.zeros(len(self.restart_ids), n, spec.num_classes)
            if start is not None:  # soft labels start at the analytic guess and may move away from it
                logits += LABEL_LOGIT_START * torch.nn.functional.one_hot(start, spec.num_classes).float()
            self.label_logits = nn.Parameter(logits)
        self.register_buffer("best_images", init.clone())
        self.register_buffer("best_values", torch.full((len(self.restart_ids),), math.inf))
        # the selection score (held-out BN mismatch) of each restart's best iterate
        self.register_buffer("best_scores", torch.full((len(self.restart_ids),), math.inf))
        self.register_buffer("best_labels", self.current_labels().detach().clone())
        # the held-out BN mismatch (the convergence signal, inversion.convergence) of each best iterate and of the start
        self.register_buffer("best_heldout", torch.full((len(self.restart_ids),), math.nan))
        self.register_buffer("start_heldout", torch.full((len(self.restart_ids),), math.nan))
        self.local = torch.arange(len(self.restart_ids))  # the restarts this process optimises (all, unless DDP)
        self.world_size = 1
        self.trace_every = trace_every
        self.trace: list[dict[str, Any]] = []
        self.objective_trace: list[tuple[int, float, float]] = []
        self.log_every = 10
        self._started = 0.0
        self.seconds = 0.0
        self.steps_done = 0

    # ------------------------------------------------------------------ setup

    def _initial(self, restart: int) -> torch.Tensor:
        gen = restart_generator(self.optim_cfg.seed, restart)
        if self.optim_cfg.init == "noise":
            return self._project(torch.rand(self.shape, generator=gen))
        prior = self.knowledge.prior.expand(self.shape)
        return self._project((prior + self.optim_cfg.init_noise * torch.randn(self.shape, generator=gen)).clamp(0, 1))

    def _project(self, images: torch.Tensor) -> torch.Tensor:
        """Onto the grayscale images repeated to every channel (optim.grayscale), else unchanged."""
        if not self.optim_cfg.grayscale:
            return images
        return images.mean(-3, keepdim=True).expand_as(images).contiguous()

    def current_labels(self) -> torch.Tensor:
        """Hard labels [R, N] (soft ones argmax-ed)."""
        if self.fixed_labels is not None:
            return self.fixed_labels
        return self.label_logits.argmax(-1)

    def label_input(self) -> torch.Tensor:
        if self.fixed_labels is not None:
            return self.fixed_labels
        return self.label_logits.softmax(-1)

    # ------------------------------------------------------------------ Lightning

    def configure_optimizers(self):
        params = [self.images] + ([self.label_logits] if self.label_logits is not None else [])
        opt = torch.optim.Adam(params, lr=self.optim_cfg.lr, betas=tuple(self.optim_cfg.betas))
        total = self.optim_cfg.iterations
        budget = self.optim_cfg.max_seconds
        clock = (lambda: (time.perf_counter() - self._started) / budget if self._started else 0.0) if budget > 0 else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.optim_cfg.warmup, total, self.optim_cfg.schedule, clock))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def setup(self, stage: str) -> None:
        """Under DDP each rank optimises every world_size-th restart; all ranks hold all images."""
        self.world_size = int(self.trainer.world_size) if self._trainer is not None else 1
        rank = int(self.trainer.global_rank) if self._trainer is not None else 0
        self.local = torch.arange(rank, len(self.restart_ids), self.world_size)
        if len(self.local) == 0:
            raise UserError(f"{len(self.restart_ids)} restart(s) cannot be spread over {self.world_size} processes: use optim.restarts >= devices")

    def on_fit_start(self) -> None:
        # Lightning moves the module's own tensors; the objective's (weights, targets) follow here
        self.objective.to(self.device)

    def on_train_start(self) -> None:
        self._started = time.perf_counter() - self.seconds

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        local = self.local
        total, parts = self.objective(self.images[local], self.label_input()[local], local)
        values = total.detach()
        finite = torch.isfinite(values)
        with torch.no_grad():  # masked updates: no host-device sync on a GPU
            better = finite & (values < self.best_values[local])
            self.best_values[local] = torch.where(better, values, self.best_values[local])
            if self.select == "holdout":
                score = parts[:, self.objective.names.index("bn_holdout")].detach()
            else:
                score = (parts.detach() * self.objective.shared_weights.to(parts)).sum(1)
            self.best_scores[local] = torch.where(better, score, self.best_scores[local])
            if "bn_holdout" in self.objective.names:
                heldout = parts[:, self.objective.names.index("bn_holdout")].detach()
                self.best_heldout[local] = torch.where(better, heldout, self.best_heldout[local])
                if self.steps_done == 0:
                    self.start_heldout[local] = heldout
            mask = better.view(-1, *([1] * (self.images.dim() - 1)))
            # the images are already in [0, 1]: they start there and every optimiser step ends with a clamp
            self.best_images[local] = torch.where(mask, self.images.detach()[local], self.best_images[local])
            self.best_labels[local] = torch.where(better[:, None], self.current_labels()[local], self.best_labels[local])
        # DDP averages gradients over ranks and each restart lives on one rank: scale back to its own gradient
        loss = torch.where(finite, total, torch.zeros_like(total)).sum() * self.world_size
        step = self.steps_done
        if step % self.log_every == 0 or step == self.optim_cfg.iterations - 1:
            sync = self.world_size > 1
            self.log("objective", self.best_values[local].min(), prog_bar=True, on_step=True, on_epoch=False, batch_size=1,
                     sync_dist=sync, reduce_fx="min")
            for i, name in enumerate(self.objective.names):
                self.log(f"terms/{name}", parts[:, i].detach().min(), on_step=True, on_epoch=False, batch_size=1,
                         sync_dist=sync, reduce_fx="min")
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # a diverged restart must not feed NaN into Adam's state; the others are unaffected
        for p in (self.images, self.label_logits):
            if p is not None and p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        before = self.images.detach().clone() if self.lr_scale is not None else None
        optimizer.step(closure=optimizer_closure)
        if before is not None:
            # Adam's step is linear in its lr and its moments do not depend on it: scaling restart r's step by
            # lr_r / lr is exactly Adam at lr_r for that restart, on the one stacked parameter
            with torch.no_grad():
                scale = self.lr_scale.to(self.images).view(-1, *([1] * (self.images.dim() - 1)))
                self.images.copy_(torch.lerp(before, self.images, scale))
        self.after_step()

    def after_step(self) -> None:
        """Projection, Langevin noise and bookkeeping, inside the optimiser step so that a checkpoint
        written at the end of the batch holds the finished step."""
        with torch.no_grad():
            if self.optim_cfg.langevin > 0:
                opt = self.optimizers()
                scale = opt.param_groups[0]["lr"] / self.optim_cfg.lr
                noise = torch.stack([torch.randn(self.shape, generator=self._noise_gen(r)) for r in range(len(self.restart_ids))])
                self.images.add_(noise.to(self.images) * (self.optim_cfg.langevin * scale))
            self.images.clamp_(0, 1)
            if self.optim_cfg.grayscale:
                self.images.copy_(self._project(self.images))
        self.steps_done += 1
        every = self.label_cfg.refine_every
        if every and self.label_strategy == "analytic" and self.shape[0] > 1 and self.steps_done % every == 0:
            self.refine_labels()
        self.seconds = time.perf_counter() - self._started
        if (self.steps_done - 1) % self.log_every == 0 or self.steps_done == self.optim_cfg.iterations:
            self.objective_trace.append((self.steps_done, round(self.seconds, 3), float(self.best_values.min())))
        if self.trace_every and (self.steps_done % self.trace_every == 0 or self.steps_done == self.optim_cfg.iterations):
            k = self.chosen()
            self.trace.append({"step": self.steps_done, "seconds": self.seconds, "objective": float(self.best_values[k]),
                               "images": self.best_images[k].detach().to("cpu", copy=True)})

    @torch.no_grad()
    def refine_labels(self) -> None:
        """Re-estimate class counts with the dummies' own mean prediction (the client's p is unknown to the
        attacker; the dummies are its best guess of the client's images) and reassign labels to dummies."""
        obj = self.objective
        for r in self.local.tolist():
            x = self.images[r].detach()
            probs = torch.cat([obj.fmodel(obj.step_params[t], x[idx])[0].softmax(-1) for t, idx in enumerate(obj.steps)])
            order = torch.cat(obj.steps)
            per_dummy = torch.empty_like(probs)
            per_dummy[order] = probs  # a dummy seen in several epochs keeps its last prediction
            per_dummy = per_dummy.cpu()  # the update the counts come from stays on the CPU
            counts = recover_labels(self.knowledge.update, self.knowledge.global_state, obj.model, self.knowledge.spec.num_classes,
                                    obj.proc, per_dummy.mean(0))
            if counts is not None:
                self.fixed_labels[r] = assign_labels(per_dummy, counts).to(self.fixed_labels.device)

    def _noise_gen(self, local: int) -> torch.Generator:
        if not hasattr(self, "_noise_gens"):
            self._noise_gens = [restart_generator(self.optim_cfg.seed + 1, r) for r in self.restart_ids]
        return self._noise_gens[local]

    def on_train_end(self) -> None:
        """Gather every restart's best iterate from the rank that optimised it."""
        if self.world_size <= 1:
            return
        values = self.all_gather(self.best_values)  # [W, R]
        scores = self.all_gather(self.best_scores)
        images = self.all_gather(self.best_images)
        labels = self.all_gather(self.best_labels)
        heldout, start = self.all_gather(self.best_heldout), self.all_gather(self.start_heldout)
        owner = torch.arange(len(self.restart_ids)) % self.world_size
        r = torch.arange(len(self.restart_ids))
        with torch.no_grad():
            self.best_values.copy_(values[owner, r])
            self.best_scores.copy_(scores[owner, r])
            self.best_images.copy_(images[owner, r])
            self.best_labels.copy_(labels[owner, r])
            self.best_heldout.copy_(heldout[owner, r])
            self.start_heldout.copy_(start[owner, r])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attack_state"] = {"seconds": self.seconds, "steps_done": self.steps_done, "objective_trace": self.objective_trace,
                                      "noise_gens": [g.get_state() for g in getattr(self, "_noise_gens", [])]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("attack_state", {})
        self.seconds = float(state.get("seconds", 0.0))
        self.steps_done = int(state.get("steps_done", 0))
        self.objective_trace = [tuple(t) for t in state.get("objective_trace", [])]
        gens = state.get("noise_gens", [])
        if gens:
            self._noise_gens = [restart_generator(0, 0) for _ in gens]
            for g, s in zip(self._noise_gens, gens):
                g.set_state(s)

    # ------------------------------------------------------------------ result

    def chosen(self) -> int:
        """Position of the restart the attack returns: the lowest selection score among finite restarts."""
        finite = torch.isfinite(self.best_values) & torch.isfinite(self.best_scores)
        return int(torch.where(finite, self.best_scores, torch.full_like(self.best_scores, math.inf)).argmin())

    def result(self) -> AttackResult:
        values = self.best_values
        if not (torch.isfinite(values) & torch.isfinite(self.best_scores)).any():
            raise UserError("every restart diverged (non-finite objective): lower optim.lr or change the objective weights")
        k = self.chosen()
        return AttackResult(  # on the CPU, where scoring and saving happen
            images=self.best_images[k].detach().to("cpu", copy=True), labels=self.best_labels[k].detach().to("cpu", copy=True), objective=float(values[k]),
            restart=self.restart_ids[k], restart_objectives={r: float(v) for r, v in zip(self.restart_ids, values)},
            selection=self.select, restart_scores={r: float(v) for r, v in zip(self.restart_ids, self.best_scores)},
            restart_settings={r: self.objective.grid_setting(i) for i, r in enumerate(self.restart_ids)},
            restart_images=self.best_images.detach().to("cpu", copy=True), label_strategy=self.label_strategy, iterations=self.steps_done,
            seconds=self.seconds, trace=self.trace, label_warning=self.label_warning,
            restart_heldout=self._per_restart(self.best_heldout), restart_heldout_start=self._per_restart(self.start_heldout),
        )

    def _per_restart(self, values: torch.Tensor) -> dict[int, float]:
        if "bn_holdout" not in self.objective.names:
            return {}
        return {r: float(v) for r, v in zip(self.restart_ids, values)}
