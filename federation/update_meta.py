"""The schema of an update's meta.json (docs/update-format.md), checked before anything reads it.

An update may come from another framework or a hand-written converter, so every field is checked
for type and range here, and the local procedure for consistency, so that a wrong file ends in
one line naming the field instead of a traceback deep inside the replay, or worse, an attack that
runs on a misread procedure. Strict types: ``"0.1"`` is not a learning rate and ``true`` is not a
batch size. Unknown extra fields are allowed (they are ignored).
"""
from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import UserError

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ModelMeta(_Strict):
    name: Annotated[str, Field(min_length=1)]
    in_chans: PositiveInt
    num_classes: Annotated[int, Field(ge=2)]
    image_size: PositiveInt
    resize_to: Count
    norm_mean: Annotated[list[Finite], Field(min_length=1)]
    norm_std: Annotated[list[Positive], Field(min_length=1)]
    bn_momentum: Annotated[float, Field(gt=0, le=1)]
    width: PositiveInt = 32
    depth: PositiveInt = 4
    zero_init_last: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LossMeta(_Strict):
    name: str
    reduction: str = "mean"
    label_smoothing: NonNegative = 0.0


class OptimizerMeta(_Strict):
    name: str
    lr: Positive
    momentum: NonNegative = 0.0
    dampening: NonNegative = 0.0
    nesterov: bool = False
    weight_decay: NonNegative = 0.0
    betas: Optional[Annotated[list[NonNegative], Field(min_length=2, max_length=2)]] = None
    eps: Optional[Positive] = None


class UpdateMeta(_Strict):
    format: str
    round: Count
    client: Count
    model: ModelMeta
    input_shape: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)]
    loss: LossMeta
    optimizer: OptimizerMeta
    lr: Optional[Positive] = None
    batch_size: PositiveInt
    num_images: PositiveInt
    local_steps: PositiveInt
    local_epochs: PositiveInt
    bn_momentum: Annotated[float, Field(gt=0, le=1)]
    normalization: Optional[dict[str, Any]] = None
    shuffle: bool = True
    drop_last: bool = False
    privacy_filters: list[Any] = Field(default_factory=list)
    withheld_keys: list[str] = Field(default_factory=list)
    local_keys: list[str] = Field(default_factory=list)  # entries the client keeps (FedBN): its values are not the global model's
    global_model: Optional[Annotated[str, Field(min_length=1)]] = None
    global_model_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None

    @model_validator(mode="after")
    def _procedure_fits(self) -> "UpdateMeta":
        """batch_size, num_images, local_steps and local_epochs describe one procedure, or the replay is wrong."""
        if self.batch_size > self.num_images:
            raise ValueError(f"batch_size {self.batch_size} exceeds num_images {self.num_images}")
        if self.drop_last:
            raise ValueError("drop_last true is not supported (the replay assumes every image is used)")
        per_epoch = math.ceil(self.num_images / self.batch_size)
        if not (self.local_epochs - 1) * per_epoch < self.local_steps <= self.local_epochs * per_epoch:
            raise ValueError(f"local_steps {self.local_steps} does not fit local_epochs {self.local_epochs} of "
                             f"ceil({self.num_images}/{self.batch_size}) = {per_epoch} steps")
        kept_but_sent = sorted(set(self.local_keys) - set(self.withheld_keys))
        if kept_but_sent:
            raise ValueError(f"local_keys names '{kept_but_sent[0]}', which withheld_keys does not list (a kept entry is never sent)")
        # every field is used or checked against the one that is: the replay uses optimizer.lr and model.*
        if self.lr is not None and not math.isclose(self.lr, self.optimizer.lr, rel_tol=1e-6):
            raise ValueError(f"lr {self.lr} differs from optimizer.lr {self.optimizer.lr} (the replay uses optimizer.lr)")
        if self.normalization is not None:
            norm = self.normalization
            for key, used in (("mean", self.model.norm_mean), ("std", self.model.norm_std), ("resize_to", self.model.resize_to)):
                if key in norm and norm[key] != used:
                    raise ValueError(f"normalization.{key} {norm[key]} differs from model.{'norm_' + key if key != 'resize_to' else key} "
                                     f"{used} (the model's values are used)")
            if norm.get("value_range", [0.0, 1.0]) != [0.0, 1.0]:
                raise ValueError(f"normalization.value_range {norm['value_range']} is not supported: images are in [0, 1]")
        return self


def required_fields() -> list[str]:
    """The keys every meta.json must have, in the schema's order."""
    return [name for name, field in UpdateMeta.model_fields.items() if field.is_required()]


def check_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """Validate ``meta`` (as read from ``path``); the first problem becomes a one-line :class:`UserError`."""
    if not isinstance(meta, dict):
        raise UserError(f"update metadata {path} must be a JSON object")
    try:
        UpdateMeta.model_validate(meta)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        problem = first["msg"].removeprefix("Value error, ")
        shown = "" if first["type"] in ("missing", "value_error") else f" (got {reprlib.repr(first['input'])})"
        field = f"'{where}': " if where else ""
        raise UserError(f"update metadata {path}: {field}{problem}{shown}") from None
    return meta
