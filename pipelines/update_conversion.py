"""Turn a client's models from any PyTorch code into an update folder (docs/update-format.md).

Input: the global model the client started from and the client's model after local training (or
the delta), as safetensors or ``torch.save``d state dicts (loaded with ``weights_only=True``: no
code in them runs), plus the client's facts (model, input path, optimiser, batch size, images,
epochs). Output: ``update.safetensors`` (after - before), ``global_model.safetensors`` and
``meta.json``, checked by the same loader the attack uses before the folder is put in place.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.files import StagedDir, load_tensors, load_weights_only, save_tensors, write_json
from federation.run_layout import is_update_folder, update_meta, update_tensors
from federation.update_store import FORMAT, sha256
from inversion.threat_model import ThreatConfig, load_knowledge
from federation.client import LOSS
from model.factory import ModelSpec, build_model

PREFIX = "backbone."  # the model's own keys sit under the input path's wrapper (ClientModel.backbone)


@dataclasses.dataclass
class ClientFacts:
    """What the attacker is told about the client's local round."""

    optimizer: dict[str, Any]  # {name: sgd, lr, momentum, ...} or {name: adam, lr, betas, eps, ...}
    num_images: int
    batch_size: int
    epochs: int = 1
    steps: int = 0  # 0 = epochs * ceil(num_images / batch_size)
    round: int = 0
    client: int = 0
    shuffle: bool = True  # the client's data loader reshuffled every epoch

    @property
    def local_steps(self) -> int:
        return self.steps or self.epochs * math.ceil(self.num_images / self.batch_size)


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or torch.save (weights only); a {'state_dict': ...} wrapper is opened."""
    path = Path(path)
    data = load_tensors(path, what) if path.suffix == ".safetensors" else load_weights_only(path, what)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{what} {path} is not a state dict (name -> tensor)")
    return dict(data)


def align_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
               strip_prefix: str = "") -> dict[str, torch.Tensor]:
    """The user's keys under the wrapper's prefix (a DDP 'module.' prefix and ``strip_prefix`` dropped); a one-line
    diff if they do not fit, with the option to pass when one prefix of the user's explains every mismatch."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if strip_prefix:
            key = key.removeprefix(strip_prefix)
        out[key if key.startswith(PREFIX) else PREFIX + key] = value
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or extra:
        raise UserError(f"{what} does not fit the model: missing {[k.removeprefix(PREFIX) for k in missing[:4]]}"
                        f"{f' (+{len(missing) - 4})' if len(missing) > 4 else ''}, unexpected {[k.removeprefix(PREFIX) for k in extra[:4]]}"
                        f"{f' (+{len(extra) - 4})' if len(extra) > 4 else ''}{_prefix_hint(missing, extra)}")
    for key, value in out.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"{what}: '{key.removeprefix(PREFIX)}' has shape {tuple(value.shape)}, the model {tuple(expected[key].shape)}")
    cast = sorted({(str(out[k].dtype), str(expected[k].dtype)) for k in expected if out[k].dtype != expected[k].dtype})
    if cast:
        count = sum(out[k].dtype != expected[k].dtype for k in expected)
        kinds = ", ".join(f"{a.removeprefix('torch.')} -> {b.removeprefix('torch.')}" for a, b in cast)
        print(f"note: {what}: {count} entries cast to the model's dtype ({kinds})", file=sys.stderr)
    return {k: out[k].to(expected[k].dtype) for k in expected}


def _prefix_hint(missing: list[str], extra: list[str]) -> str:
    """'; every unexpected key carries 'net.' ...' when dropping one leading component of the user's keys fits them all."""
    user = [k.removeprefix(PREFIX) for k in extra]
    heads = {k.split(".", 1)[0] for k in user}
    if len(heads) != 1 or not all("." in k for k in user):
        return ""
    head = heads.pop() + "."
    if sorted(PREFIX + k.removeprefix(head) for k in user) == missing:
        return f"; every key of yours carries the prefix '{head}': pass --strip-prefix {head}"
    return ""


NORM_BUFFERS = ("mean", "std", "pixel_mean", "pixel_std", "norm_mean", "norm_std")


def _check_single_normalisation(spec: ModelSpec, expected: dict[str, torch.Tensor]) -> None:
    """A model that carries its own normalisation buffers normalises inside; --norm-mean/--norm-std on top would
    have the replay normalise twice, and every reconstruction would be wrong without a word."""
    inside = [k.removeprefix(PREFIX) for k in expected if k.rsplit(".", 1)[-1] in NORM_BUFFERS]
    if inside and (list(spec.norm_mean) != [0.0] or list(spec.norm_std) != [1.0]):
        raise UserError(f"the model normalises its input itself ({', '.join(inside[:2])}), and --norm-mean/--norm-std "
                        f"({spec.norm_mean}, {spec.norm_std}) would normalise it again: leave them at their defaults (0, 1)")


def _check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """A NaN or infinity in the model or its update is the client's bug, said here in one line: the attack would
    otherwise start from it and blame its own learning rate."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{what} has non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. "
                        f"'{bad[0].removeprefix(PREFIX)}': fix the client's model before converting")


def convert(spec: ModelSpec, facts: ClientFacts, global_path: str | Path, out: str | Path, local_path: str | Path | None = None,
            delta_path: str | Path | None = None, overwrite: bool = False, strip_prefix: str = "") -> Path:
    if (local_path is None) == (delta_path is None):
        raise UserError("give the client's model after training (--local) or its delta (--delta), one of them")
    if min(facts.num_images, facts.batch_size, facts.epochs) < 1 or facts.batch_size > facts.num_images:
        raise UserError(f"num_images {facts.num_images}, batch_size {facts.batch_size}, epochs {facts.epochs}: not a local procedure")
    expected = build_model(spec).state_dict()
    _check_single_normalisation(spec, expected)
    before = align_keys(load_state_dict(global_path, "global model"), expected, "the global model", strip_prefix)
    if delta_path is not None:
        delta = align_keys(load_state_dict(delta_path, "delta"), expected, "the delta", strip_prefix)
    else:
        after = align_keys(load_state_dict(local_path, "local model"), expected, "the local model", strip_prefix)
        delta = {k: after[k] - before[k] for k in expected}
    _check_finite(before, "the global model")
    _check_finite(delta, "the delta" if delta_path is not None else "the delta (local model - global model)")
    counters = {int(v) for k, v in delta.items() if k.endswith("num_batches_tracked")}
    if counters and counters != {facts.local_steps}:
        raise UserError(f"the BN counters say {sorted(counters)} local steps, the facts {facts.local_steps} "
                        f"(epochs {facts.epochs} of ceil({facts.num_images}/{facts.batch_size}))")
    meta = {
        "format": FORMAT, "round": facts.round, "client": facts.client, "model": spec.to_dict(),
        "input_shape": [spec.in_chans, spec.image_size, spec.image_size],
        "normalization": {"mean": spec.norm_mean, "std": spec.norm_std, "resize_to": spec.resize_to, "value_range": [0.0, 1.0]},
        "loss": dict(LOSS), "optimizer": dict(facts.optimizer), "lr": facts.optimizer["lr"],
        "batch_size": facts.batch_size, "num_images": facts.num_images, "local_steps": facts.local_steps,
        "local_epochs": math.ceil(facts.local_steps / math.ceil(facts.num_images / facts.batch_size)),
        "shuffle": facts.shuffle, "drop_last": False, "bn_momentum": spec.bn_momentum, "privacy_filters": [], "withheld_keys": [],
    }
    staged = StagedDir(out, overwrite=overwrite, own=is_update_folder, what="an update folder")
    with staged.staged() as work:
        save_tensors(work / "global_model.safetensors", before)
        save_tensors(update_tensors(work), delta)
        meta.update(global_model="global_model.safetensors", global_model_sha256=sha256(work / "global_model.safetensors"))
        write_json(update_meta(work), meta)
        load_knowledge(work, ThreatConfig(), trusted_models=[spec.name])  # what the attack will check, checked now
    return staged.final
