"""The threat model: what the attacker is given, declared explicitly and logged with every run.

The attacker holds the global model, the update that left the client, its metadata and a
population prior image. Oracle knowledge (labels, exact BN statistics, batch order) exists only
for ablations and is handed in explicitly by the harness that reads the ground truth; nothing
here reads the ground-truth tree.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from common.config_loader import option
from common.errors import UserError
from common.files import load_tensors
from federation.update_store import load_update, resolve_global_model
from inversion.bn_sources import Targets
from inversion.replay import ClientProcedure
from model.factory import BN_BUFFERS, ClientModel, ModelSpec, batch_norm_layers, build_model, is_import_path


@dataclasses.dataclass
class ThreatConfig:
    oracle_labels: bool = option(False, "ablation: give the attacker the true labels")
    oracle_bn_statistics: bool = option(False, "ablation: give the attacker every step's true BN batch statistics (for bn source exact)")
    oracle_batch_order: bool = option(False, "ablation: give the attacker the true assignment of images to local steps")
    reconstruct_at_input: bool = option(False, "reconstruct at the model's input resolution (its input path's resize_to, e.g. 80 px) "
                                               "instead of the data's size from the update metadata: what a server that knows only the "
                                               "model can do; scored after downsampling to the ground truth's size")


@dataclasses.dataclass
class OracleKnowledge:
    labels: torch.Tensor | None = None
    bn_statistics: list[Targets] | None = None  # per step, per BN layer: (mean, unbiased var)
    batch_positions: list[torch.Tensor] | None = None


@dataclasses.dataclass
class AttackerKnowledge:
    threat: ThreatConfig
    spec: ModelSpec
    global_state: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    meta: dict[str, Any]
    prior: torch.Tensor  # [C, H, W] in [0, 1]
    prior_source: str
    oracle: OracleKnowledge = dataclasses.field(default_factory=OracleKnowledge)
    native_prior: torch.Tensor | None = None  # the prior at the data's size, when the attack reconstructs at another one

    @property
    def scoring_prior(self) -> torch.Tensor:
        """The prior at the data's size: RDLV's reference, whatever size the attack reconstructed at."""
        return self.native_prior if self.native_prior is not None else self.prior

    @property
    def unknown_client_weights(self) -> list[str]:
        """Weights the client kept (FedBN's BN weight and bias): update matching replays its steps with the server's
        values of them, so the replay is approximate. Kept running statistics do not count: train-mode BN never reads them."""
        return [k for k in self.meta.get("local_keys", []) if not k.endswith(BN_BUFFERS)]

    def global_model(self) -> ClientModel:
        model = build_model(self.spec)
        model.load_state_dict(self.global_state)
        return model.train()

    def describe(self) -> dict[str, Any]:
        """The declaration that goes into every log: what was known, and what was not."""
        return {
            "given": ["global model", "update (after privacy filters)", "update metadata", f"prior image ({self.prior_source})"],
            "not_given": [k for k, v in (("true labels", self.threat.oracle_labels), ("true BN batch statistics", self.threat.oracle_bn_statistics),
                                         ("true batch order", self.threat.oracle_batch_order), ("training images", False)) if not v],
            "oracle": {k: v for k, v in dataclasses.asdict(self.threat).items() if v},
            "withheld_by_client": self.meta.get("withheld_keys", []),
            "kept_on_client": self.meta.get("local_keys", []),
            "privacy_filters": self.meta.get("privacy_filters", []),
        }


def load_knowledge(update_directory: str | Path, threat: ThreatConfig, global_model: str | Path | None = None,
                   prior: torch.Tensor | None = None, prior_source: str = "", trusted_models: list[str] | tuple[str, ...] = (),
                   force: bool = False) -> AttackerKnowledge:
    """Read an update folder and its global model, and check that they fit each other."""
    update_directory = Path(update_directory)
    update, meta = load_update(update_directory)
    spec = ModelSpec.from_dict(meta["model"]) if isinstance(meta["model"], dict) else None
    if spec is None:
        raise UserError("update metadata 'model' must be an object")
    if is_import_path(spec.name) and spec.name not in trusted_models:
        raise UserError(f"the update's metadata names its model by import path '{spec.name}': importing it runs its code; "
                        f"if you trust it, pass 'trusted_models=[{spec.name}]'")
    if list(meta["input_shape"]) != [spec.in_chans, spec.image_size, spec.image_size]:
        raise UserError(f"update metadata input_shape {meta['input_shape']} does not fit the model spec ({spec.in_chans}x{spec.image_size}x{spec.image_size})")
    state = load_tensors(resolve_global_model(update_directory, meta, global_model), "global model")
    model = build_model(spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise UserError(f"global model does not fit the metadata's model '{spec.name}' (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"global model entry '{key}' has shape {tuple(value.shape)}: it does not fit the metadata's model "
                            f"'{spec.name}' ({tuple(expected[key].shape)})")
    _check_update(update, meta, expected, spec.name)
    if not force:
        _check_scale(update, state)
    _check_steps(update, meta, model)
    ClientProcedure.from_meta(meta)  # the optimiser and loss must be ones the replay supports
    if prior is None:
        prior, prior_source = torch.full((spec.in_chans, spec.image_size, spec.image_size), 0.5), "uniform grey (no population prior given)"
    if tuple(prior.shape) != (spec.in_chans, spec.image_size, spec.image_size):
        raise UserError(f"prior image has shape {tuple(prior.shape)}, the client's images are {spec.in_chans}x{spec.image_size}x{spec.image_size}")
    return AttackerKnowledge(threat, spec, state, update, meta, prior.float().clamp(0, 1), prior_source)


def _check_update(update: dict[str, torch.Tensor], meta: dict[str, Any], expected: dict[str, torch.Tensor], model_name: str) -> None:
    """Every entry of the model is in the update or declared withheld, with the model's shape and dtype.

    An entry silently missing would be treated as withheld and change what the attack assumes; a
    float64 or integer tensor is not what any client of this model sent (the replay would compare
    it in the wrong precision, and an integer weight escapes the finiteness check).
    """
    withheld = set(meta.get("withheld_keys", []))
    for key, value in update.items():
        if key not in expected:
            raise UserError(f"update entry '{key}' is not in model '{model_name}': metadata and update do not fit")
        if key in withheld:
            raise UserError(f"update entry '{key}' is listed in withheld_keys but present in the update")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"update entry '{key}' has shape {tuple(value.shape)}, the metadata's model has {tuple(expected[key].shape)}")
        if value.dtype != expected[key].dtype:
            raise UserError(f"update entry '{key}' is {str(value.dtype).removeprefix('torch.')}, the model's entry is "
                            f"{str(expected[key].dtype).removeprefix('torch.')}")
    absent = sorted(set(expected) - set(update) - withheld)
    if absent:
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        raise UserError(f"update lacks {', '.join(repr(k) for k in absent[:3])}{more}, which withheld_keys does not list")
    unknown = sorted(withheld - set(expected))
    if unknown:
        raise UserError(f"withheld_keys names '{unknown[0]}', which is not an entry of model '{model_name}'")


MAX_RELATIVE_CHANGE = 1e6


def _check_scale(update: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """An entry that moved more than a million times the size of the global model's entry (plus 1) is not a
    weight update: local training, clipping and DP noise move weights by a fraction to hundreds of times their
    size. Attacked anyway, it would give a complete-looking result from a corrupt update."""
    for key, value in update.items():
        if not value.is_floating_point() or key.endswith("num_batches_tracked") or value.numel() == 0:
            continue
        moved = float(value.abs().max())
        size = float(state[key].abs().max()) if state[key].numel() else 0.0
        if moved > MAX_RELATIVE_CHANGE * (size + 1.0):
            raise UserError(f"update entry '{key}' changes by up to {moved:.3g}, more than {MAX_RELATIVE_CHANGE:.0e} times the global "
                            f"model's entry (max |.| {size:.3g}) plus 1: not a weight update (corrupt or mis-scaled); --force attacks it anyway")


def _check_steps(update: dict[str, torch.Tensor], meta: dict[str, Any], model: ClientModel) -> None:
    """num_batches_tracked counts local steps: it must agree with the metadata's local_steps."""
    for name, _ in batch_norm_layers(model):
        key = f"{name}.num_batches_tracked"
        if key in update:
            counted = int(update[key])
            if counted != int(meta["local_steps"]):
                raise UserError(f"update says {counted} local steps (num_batches_tracked) but metadata says {meta['local_steps']}")
            return


def at_input_resolution(knowledge: AttackerKnowledge) -> AttackerKnowledge:
    """The same knowledge, for an attacker that reconstructs at the size the model sees.

    The model's input path normalises and then resizes to ``resize_to``. A dummy image of that size
    passes the resize unchanged (bilinear at scale 1 is the identity) and builds the same model
    (its backbone is sized by ``resize_to``). The prior image is resized the way the input path
    would resize it. The data's own size, which a server need not know, is then not used."""
    spec = knowledge.spec
    if not spec.resize_to or spec.resize_to == spec.image_size:
        raise UserError("threat.reconstruct_at_input needs a model whose input path resizes its images (model.resize_to); "
                        f"this one sees them at their own size ({spec.image_size} px)")
    import torch.nn.functional as F

    prior = F.interpolate(knowledge.prior[None].float(), size=spec.resize_to, mode="bilinear", align_corners=False)[0]
    return dataclasses.replace(knowledge, spec=dataclasses.replace(spec, image_size=spec.resize_to), prior=prior.clamp(0, 1),
                               native_prior=knowledge.prior)


def prior_description(path: str | Path) -> str:
    """The ``population`` a prior file records (a run's prior.safetensors does), or ''."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("population", "")
    except Exception:  # noqa: BLE001 - a description only; load_prior reports a broken file
        return ""


def load_prior(path: str | Path, key: str = "mean") -> torch.Tensor:
    tensors = load_tensors(path, "prior image file")
    if key not in tensors:
        raise UserError(f"prior image file {path} has no entry '{key}' (has {', '.join(sorted(tensors))})")
    return tensors[key]
