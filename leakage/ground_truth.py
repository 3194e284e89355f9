"""Reading the ground-truth tree: for scoring, and for handing oracle knowledge to ablations.

The attack itself never imports this module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from common.errors import UserError
from common.files import load_tensors, read_json
from federation.run_layout import RunLayout
from inversion.threat_model import OracleKnowledge, ThreatConfig


@dataclasses.dataclass
class GroundTruth:
    images: torch.Tensor  # [N, C, H, W] in [0, 1]
    labels: torch.Tensor | None  # None: not given (a foreign update scored on its images alone)
    pool_indices: torch.Tensor
    step_positions: list[torch.Tensor]  # per local step: positions into images
    bn_stats: dict[str, torch.Tensor]  # step_<t>/<layer>/<mean|var|var_unbiased>
    bn_layers: list[str]
    directory: Path


def load_ground_truth(run: RunLayout | Path, rnd: int, client: int) -> GroundTruth:
    run = run if isinstance(run, RunLayout) else RunLayout(run)
    d = run.ground_truth(rnd, client)
    if not d.is_dir():
        raise UserError(f"no ground truth at {d}")
    imgs = load_tensors(run.ground_truth_images(rnd, client), "ground-truth images")
    batches_file = run.batches(rnd, client)
    batches = read_json(batches_file, "ground-truth batch order") if batches_file.is_file() else {"steps": []}
    stats_file = d / "bn_stats.safetensors"
    stats = load_tensors(stats_file, "ground-truth BN statistics") if stats_file.is_file() else {}
    return GroundTruth(imgs["images"], imgs["labels"], imgs["indices"],
                       [torch.tensor(s["positions"], dtype=torch.long) for s in batches["steps"]], stats,
                       list(batches.get("bn_layers", [])), d)


def ground_truth_for_update(update_directory: str | Path) -> GroundTruth | None:
    where = RunLayout.of_update(update_directory)
    if where is None or not where.run.ground_truth(where.round, where.client).is_dir():
        return None
    return load_ground_truth(*where)


def oracle_knowledge(gt: GroundTruth, threat: ThreatConfig, bn_names: list[str]) -> OracleKnowledge:
    """Only what the threat config grants, in the attacker's (image-position) order."""
    oracle = OracleKnowledge()
    if threat.oracle_labels:
        oracle.labels = gt.labels.clone()
    if threat.oracle_batch_order:
        oracle.batch_positions = [p.clone() for p in gt.step_positions]
    if threat.oracle_bn_statistics:
        if not gt.bn_stats:
            raise UserError(f"the ground truth at {gt.directory} has no BN statistics (capture.bn_statistics was off)")
        oracle.bn_statistics = [[(gt.bn_stats[f"step_{t}/{layer}/mean"], gt.bn_stats[f"step_{t}/{layer}/var_unbiased"]) for layer in bn_names]
                                for t in range(len(gt.step_positions))]
    return oracle


def load_image_file(path: str | Path, input_shape: list[int], num_images: int) -> GroundTruth:
    """A foreign update's ground truth: ``images`` [N, C, H, W] in [0, 1] and optional ``labels`` [N].

    Checked before the attack starts, so that a wrong file costs a second, not an attack.
    """
    path = Path(path)
    tensors = load_tensors(path, "ground-truth file")
    if "images" not in tensors:
        raise UserError(f"ground-truth file {path} has no 'images' entry (has {', '.join(sorted(tensors)) or 'nothing'})")
    images = tensors["images"]
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or list(images.shape[1:]) != list(input_shape) or images.shape[0] != num_images:
        raise UserError(f"ground-truth images have shape {tuple(tensors['images'].shape)}; the update's client had "
                        f"{num_images} image(s) of {tuple(input_shape)}")
    if not images.is_floating_point() or not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise UserError(f"ground-truth images in {path} must be finite floats in [0, 1]")
    labels = tensors.get("labels")
    if labels is not None and (labels.dtype.is_floating_point or tuple(labels.shape) != (num_images,)):
        raise UserError(f"ground-truth labels in {path} must be {num_images} integers, got {labels.dtype} {tuple(labels.shape)}")
    return GroundTruth(images.float(), labels, torch.arange(num_images), [], {}, [], path.parent)
