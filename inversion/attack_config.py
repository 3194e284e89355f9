"""The schema of attack.py's config (configs/attack/default.yaml); --help is generated from it."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from common.config_loader import option
from common.errors import UserError
from inversion.convergence import ConvergenceConfig, check_convergence_config
from inversion.escalation import EscalationConfig, check_escalation_config
from inversion.threat_model import ThreatConfig


def default_objective() -> dict[str, dict[str, Any]]:
    """The default attack's objective (configs/attack/default.yaml restates it; docs/attack.md says why each term)."""
    return {
        "bn_statistics": {"weight": 1.0, "source": "auto", "normalize": "layer", "holdout": 4},
        "update_matching": {"weight": 0.0},
        "total_variation": {"weight": 1e-2, "norm": "l1"},
    }


@dataclasses.dataclass
class OptimConfig:
    iterations: int = option(800, "optimisation steps")
    lr: float = option(0.1, "Adam learning rate on the [0, 1] images")
    betas: list[float] = option(help="Adam betas", factory=lambda: [0.9, 0.999])
    warmup: int = option(50, "linear warm-up steps")
    schedule: Literal["cosine", "constant"] = option("cosine", "lr schedule after warm-up: cosine or constant")
    restarts: int = option(4, "independent restarts (an extra batch dimension); each keeps its best iterate by objective, optim.select picks the one returned")
    grid: dict[str, list[float]] = option(help="term weights (and Adam learning rates, axis lr) tried side by side as restarts, e.g. "
                                               "{total_variation: [0.003, 0.03], lr: [0.1, 0.3]}: restart r takes combination r mod the grid size "
                                               "({} = every restart uses the objective's weights and optim.lr)",
                                          factory=lambda: {"total_variation": [0.003, 0.01, 0.03, 0.1]})
    select: Literal["auto", "objective", "holdout"] = option("auto", "which restart is returned: objective (lowest objective with the configured weights, the same for every restart), "
                                 "holdout (lowest mismatch of the BN layers held out of the prior, objective.bn_statistics.holdout), "
                                 "auto (holdout when layers are held out, else objective)")
    init: Literal["prior", "noise"] = option("prior", "start from the prior image (plus init_noise) or from uniform noise")
    init_noise: float = option(0.05, "std of the Gaussian noise added to the prior start (identical starts never separate)")
    langevin: float = option(0.0, "std of Gaussian noise added to the images after each step, decaying with the lr")
    grayscale: bool = option(False, "the client fed one grayscale image repeated to every channel (a torchvision model on X-rays): "
                                    "optimise it as one image, every channel set to the channels' mean at the start and after each step "
                                    "(a constraint, unlike the grayscale_channels penalty)")
    max_seconds: float = option(0.0, "attack time budget: the cosine decay follows whichever of iterations and time runs out first, and the attack stops there (0 = no limit; results then depend on machine speed)")
    vectorize: bool = option(True, "evaluate restarts with torch.func.vmap (False: a Python loop)")
    memory_format: Literal["auto", "channels_last", "contiguous"] = option("auto", "convolution layout: channels_last, contiguous, or auto (channels-last for batch-1 convolutions, i.e. one image and one restart, where it is ~10% faster on CPU; contiguous otherwise); same values to float rounding")
    compile: bool = option(False, "torch.compile the per-restart objective: 1.5-2x faster steps after compiling for ~10 s (warm cache) to ~100 s (cold); pays for attacks of thousands of iterations")
    seed: int = option(0, "seed of the initialisation, the Langevin noise and the later-epoch batch split")
    checkpoint_every: int = option(0, "save a resumable checkpoint every this many steps (0 = never); attack.py --resume continues from it")


@dataclasses.dataclass
class LabelConfig:
    strategy: str = option("auto", "auto (analytic, joint if the classifier update is withheld), analytic, joint (soft labels optimised with the images, starting at the analytic guess), oracle")
    refine_every: int = option(0, "analytic batches: every this many steps, re-estimate the class counts with the dummies' mean prediction and reassign labels to dummies (0 = never)")


@dataclasses.dataclass
class PriorConfig:
    path: str = option("", "safetensors file with the prior image ('' = the run's prior.safetensors)")
    key: str = option("mean", "entry of that file: mean (population mean) or class/<name>")


@dataclasses.dataclass
class ScoringConfig:
    ssim_kernel: int = option(0, "SSIM Gaussian window size, a check only: torchmetrics derives it from sigma (11 for 1.5, 9 for 1.0); 0 = no check")
    ssim_sigma: float = option(0.0, "SSIM Gaussian sigma (0 = 1.5 for images >= 64 px, else 1.0)")
    lpips: bool = option(True, "report LPIPS when its weights are available locally (skipped with a message otherwise)")
    leak_ssim: float = option(0.75, "verdict 'leaks' when a reconstructed image reaches this SSIM with its matched training image")
    leak_rdlv: float | None = option(None, "verdict 'leaks' also when the RDLV (maximum over images) exceeds this (null = SSIM alone)")
    reid_alpha: float = option(0.01, "verdict 'leaks' also when the attack re-identifies the client's images in the run's image pool more "
                                     "often than chance: exact one-sided binomial p below this (leakage/reidentification.py)")


@dataclasses.dataclass
class AttackLoggingConfig:
    wandb: bool = option(True, "log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    project: str = option("fl-leakage", "W&B project")
    progress: bool = option(True, "show a progress bar with the objective")
    log_every: int = option(10, "log the objective every this many steps")


@dataclasses.dataclass
class AttackConfig:
    DEFAULT_FILE: ClassVar[Path] = Path(__file__).resolve().parent.parent / "configs" / "attack" / "default.yaml"  # attack.py's base

    run: str = option("runs/default", "run directory whose latest round's high-risk client is attacked when update is empty")
    update: str = option("", "update folder (RUN/updates/round_<r>/client_<c>); '' = the high-risk client of the run's latest round")
    global_model: str = option("", "global model file ('' = the one named in the update's metadata)")
    trusted_models: list[str] = option(help="import paths (package.module:callable) the update's metadata may name as its model: "
                                            "importing one runs its code, so none is imported unless listed here", factory=list)
    out: str = option("", "output folder ('' = RUN/attacks/round_<r>_client_<c>)")
    ground_truth: str = option("", "images.safetensors ('images' [N, C, H, W] in [0, 1], 'labels' optional) to score an update "
                                   "that has no run around it; '' = the run's ground truth, if any (scoring only: the attack never reads it)")
    force: bool = option(False, "attack an update with entries no training step produces (moved more than 1e6 times their global "
                                "entry's size plus 1), which is otherwise refused as corrupt or mis-scaled")
    accelerator: str = option("cpu", "cpu, gpu or auto")
    devices: int = option(1, "processes (GPUs, or CPU processes with gloo) for Lightning DDP: restarts are spread over them and the best is gathered")
    threat: ThreatConfig = option(help="oracle knowledge for ablations", factory=ThreatConfig)
    objective: dict[str, dict[str, Any]] = option(help="objective terms and their parameters (see docs/attack.md)", factory=default_objective)
    optim: OptimConfig = option(help="optimisation", factory=OptimConfig)
    convergence: ConvergenceConfig = option(help="when the attack counts as converged (judged without ground truth)", factory=ConvergenceConfig)
    escalation: EscalationConfig = option(help="what the attack tries when it did not converge", factory=EscalationConfig)
    labels: LabelConfig = option(help="labels", factory=LabelConfig)
    prior: PriorConfig = option(help="prior image", factory=PriorConfig)
    scoring: ScoringConfig = option(help="scoring (reads the ground truth, after the attack)", factory=ScoringConfig)
    logging: AttackLoggingConfig = option(help="logging", factory=AttackLoggingConfig)


def check_attack_config(cfg: AttackConfig) -> None:
    """Every check of an attack config that needs no update, in one place and before any work (as
    ``check_train_config`` for training); the objective's terms check their own parameters when built."""
    from inversion.terms import REGISTRY as TERMS  # the terms import the sources and the replay: loaded when checked

    optim = cfg.optim
    if optim.iterations < 1:
        raise UserError(f"optim.iterations must be at least 1, got {optim.iterations}")
    if not (math.isfinite(optim.lr) and optim.lr > 0):
        raise UserError(f"optim.lr must be a positive number, got {optim.lr}")
    if optim.restarts < 1:
        raise UserError(f"optim.restarts must be at least 1, got {optim.restarts}")
    if cfg.devices < 1:
        raise UserError(f"devices must be at least 1, got {cfg.devices}")
    if cfg.devices > 1:
        coupled = [name for name, params in (cfg.objective or {}).items()
                   if name in TERMS and TERMS[name].across_restarts and float((params or {}).get("weight", 0.0)) > 0]
        if coupled:
            raise UserError(f"objective term {coupled[0]} couples the restarts, which devices={cfg.devices} spreads over processes "
                            "that do not see each other's: use devices=1 (or set its weight to 0)")
    if not 0 < cfg.scoring.reid_alpha < 1:
        raise UserError(f"scoring.reid_alpha must be between 0 and 1, got {cfg.scoring.reid_alpha}")
    check_convergence_config(cfg.convergence)
    check_escalation_config(cfg.escalation)
