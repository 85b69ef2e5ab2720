"""A model download as a job (``POST /v1/models``): the request, and the run a worker makes of it.

The job's one step is ``download``; its progress counts MiB (the step's counters are 32-bit
integers, too small for the bytes of a 7 GB checkpoint). A download that succeeds has no
artifact: the model is registered, and the job's last status event names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dreamforge.progress import LostJob, ProgressReporter
from dreamforge.registry.download import MAX_URL
from dreamforge.registry.records import NAME_PATTERN

if TYPE_CHECKING:
    from dreamforge.moves import Fence
    from dreamforge.registry.records import ModelRecord
    from dreamforge.service import JobService

MIB = 1024 * 1024
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
# An https URL with a host: what the schema can say. The server checks more (the host's form, the
# port's range, no credential in the URL) and answers 422 for what fails.
URL_PATTERN = r"^https://[^\s/?#@:]+(:[0-9]{1,5})?([/?][^\s#]*)?$"


class DownloadRequest(BaseModel):
    """Download a single-file SDXL checkpoint into the models root and register it."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"source": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                   "sd_xl_base_1.0.safetensors", "name": "sdxl-base"}]})

    type: Literal["download"] = "download"
    source: str = Field(min_length=1, max_length=MAX_URL, json_schema_extra={"pattern": URL_PATTERN},
                        description="An https:// URL of a .safetensors file (http:// only where the server "
                                    "sets DF_MODELS_ALLOW_HTTP=1). Its host must resolve, and only to public "
                                    "addresses, unless the server sets DF_MODELS_ALLOW_PRIVATE=1.")
    name: str | None = Field(default=None, json_schema_extra={"pattern": NAME_PATTERN},
                             description="The registry name; the URL's file name without .safetensors "
                                         "when absent.")
    sha256: str | None = Field(default=None, json_schema_extra={"pattern": SHA256_PATTERN},
                               description="Checked when given; recorded always.")
    default: bool = Field(default=False, description="Make it the default model once registered.")


def parse_download(data: Any) -> DownloadRequest:
    from dreamforge.schemas import parse_as

    return parse_as(DownloadRequest, data)


class DownloadProgress:
    """Bytes downloaded, as MiB of the job's step (written as every job's progress is, see
    dreamforge/progress.py). Of a size the server did not say, the bar stays one MiB short
    until the end."""

    def __init__(self, reporter: ProgressReporter):
        self.reporter = reporter

    def __call__(self, done: int, total: int | None) -> None:
        current = done // MIB
        if total is None:
            self.reporter.report(current, current + 1)
        else:
            whole = max(1, -(-total // MIB))
            self.reporter.report(whole if done >= total else min(current, whole - 1), whole)


def run_download(service: JobService, fence: Fence, params: dict[str, Any]) -> ModelRecord:
    """Download and register the model a download job asks for. Raises the registry's errors
    (their codes become the job's), or LostJob when the job was canceled meanwhile. Every download
    job comes from POST /v1/models (``df models add`` downloads in its own process, queuing
    nothing), so its URL is an API client's: each hop must reach a public address unless
    DF_MODELS_ALLOW_PRIVATE=1."""
    request = DownloadRequest.model_validate(params)
    with ProgressReporter(service, fence) as reporter:
        def still_held() -> None:
            # The last progress write is fenced: a cancel that came while the bytes arrived shows
            # here, before the model is registered (a canceled download registers nothing).
            if not reporter.wait():
                raise LostJob(fence.job_id)

        return service.models.add_url(request.source, request.name, request.sha256, make_default=request.default,
                                      progress=DownloadProgress(reporter), before_register=still_held,
                                      public_only=not service.settings.models_allow_private)
