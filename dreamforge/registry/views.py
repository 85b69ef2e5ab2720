"""The registry's wire shape: OpenAI's model object (``id``, ``object``, ``created``,
``owned_by``) with the registry's own fields besides. GET /v1/models and `df models list --json`
both emit it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from dreamforge.registry.records import ModelRecord


class ModelObject(BaseModel):
    id: str = Field(description="The registry name; a job's `model` field takes it.")
    object: Literal["model"] = "model"
    created: int = Field(description="When it was registered, in Unix seconds (0: not registered).")
    owned_by: str = "dreamforge"
    kind: str = Field(description="sdxl_checkpoint, or sdxl_lora (a job's loras name these).")
    format: str = Field(description="single_file or diffusers.")
    source: str = Field(description="The URL it was downloaded from, or `local`.")
    path: str | None = Field(description="Where it lies under the models root (DF_MODELS_ROOT); null "
                                         "when it lies elsewhere.")
    sha256: str | None
    size_bytes: int | None
    is_default: bool
    downloaded: bool
    registered: bool = Field(description="False for the model the server's settings name, listed as "
                                         "`default` while no registered model is the default.")
    details: dict[str, Any]
    added_at: datetime | None
    last_used_at: datetime | None
    verified_at: datetime | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def model_object(record: ModelRecord) -> dict[str, Any]:
    data = record.public()
    data.pop("chosen_by", None)
    data.pop("name")
    created = int(record.added_at.timestamp()) if record.added_at else 0
    return ModelObject.model_validate({"id": record.name, "created": created, **data}).model_dump(mode="json")
