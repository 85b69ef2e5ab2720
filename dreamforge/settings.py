"""Settings, read once at the edges (CLI, server, worker) and passed down."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_PATH = "~/.cache/dream-forge/civitai/epicrealismXL_working.safetensors"
SECRET_NAMES = ("DF_API_TOKEN", "DF_S3_SECRET_ACCESS_KEY", "DF_S3_ACCESS_KEY_ID", "DF_MODELS_DOWNLOAD_TOKEN",
                "DF_WEBHOOK_SECRET")


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(xdg).expanduser() / "dreamforge"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DF_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    queue_url: str = ""
    storage_url: str = ""
    bucket: str = "dreamforge"

    s3_endpoint_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = True
    s3_presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    s3_retries: int = Field(default=4, ge=1, le=20)
    s3_timeout_s: float = Field(default=10.0, gt=0)
    s3_retry_backoff_s: float = Field(default=0.5, ge=0)

    fake_runner: bool = False
    fake_step_delay_s: float = Field(default=0.02, ge=0)
    # `df worker` serves its own metrics here (prometheus-client); unset: off.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # The fake runner fails on demand, as the SDXL child can (see runners/fake.py).
    fake_failure: Literal["", "crash-once", "crash", "hang"] = ""
    generate_model_path: str | None = None
    models_root: str | None = None
    default_model_dir: str | None = None
    # Model downloads (`df models add URL`, POST /v1/models): a bearer token for hubs that want
    # one (sent over https only, never logged), and whether plain http:// URLs are allowed.
    models_download_token: SecretStr | None = None
    # The hosts that token goes to (and their subdomains): a download URL comes from whoever calls
    # POST /v1/models, and any other host would be handed the operator's token.
    models_token_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["huggingface.co", "civitai.com"])
    models_allow_http: bool = False
    # Whether a download asked for over HTTP (POST /v1/models) may reach loopback, private and
    # link-local addresses: a mirror on the same host or LAN (registry/download.py).
    models_allow_private: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    vae_path: str | None = None
    # For single-file checkpoints: the Diffusers-layout folder of configs and tokenizers. Unset:
    # SDXL base's, shipped with DreamForge.
    model_config_dir: Path | None = None
    compile: bool = False
    # -- the GPU's options (issue 18): each is checked when the model loads, and a machine that
    # can't do it refuses with the setting's name (runners/sdxl_options.py); every job's record
    # says which were on. torch.compile's mode, with DF_COMPILE=1: reduce-overhead adds CUDA
    # graphs, max-autotune searches kernels (and adds CUDA graphs unless -no-cudagraphs).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"] = "default"
    # float8 dynamic activation and weight quantisation of the UNet's linear layers (torchao, the
    # fp8 extra; a CUDA GPU of compute capability 8.9 or newer).
    fp8: bool = False
    # The dtype the VAE decodes in. auto: float32 for the SDXL VAE in a float16 model (it overflows
    # in float16), the model's dtype for DF_VAE_PATH's fixed VAE. float16: say so explicitly (needs
    # DF_VAE_PATH). float32: upcast even DF_VAE_PATH's VAE.
    vae_dtype: Literal["auto", "float16", "float32"] = "auto"
    # The scaled-dot-product attention kernel the UNet prefers (torch.nn.attention.sdpa_kernel);
    # where the chosen one can't run a call (the VAE's 512-wide head on flash), torch's next one does.
    attention_backend: Literal["default", "flash", "efficient", "cudnn", "math"] = "default"
    # Before each job on CUDA, predict its peak memory and refuse (gpu_out_of_memory_predicted) or
    # make fewer items a call when it won't fit (dreamforge/gpu_memory.py); 0: don't predict.
    gpu_memory_check: bool = True
    # The most items of a batch one pipeline call makes (the SDXL runner halves it when the GPU
    # runs out of memory). 1: each item alone, bit for bit the image of a count-1 job with its seed.
    max_batch: int = Field(default=8, ge=1, le=8)
    # How the PNGs a worker writes are made: "isal" (dreamforge/png.py: one filter, ISA-L's
    # deflate, 10-25 ms at 1024x1024) or "pillow" (Pillow's adaptive filters and zlib, 60-210 ms,
    # a few per cent smaller). benchmarks/png_levels.py measures both.
    png_encoder: Literal["isal", "pillow"] = "isal"
    # 0 fastest .. 9 smallest: zlib's level for "pillow"; "isal" maps it onto ISA-L's 0-3.
    png_compress_level: int = Field(default=4, ge=0, le=9)
    # The child reports after every step; this much silence means it hung. Loading gets longer.
    step_timeout_s: float = Field(default=600.0, gt=0)
    load_timeout_s: float = Field(default=1800.0, gt=0)
    compile_cache_dir: Path | None = None
    compile_warmup_size: int = Field(default=1024, ge=64, le=2048, multiple_of=8)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8001, ge=1, le=65535)
    api_token: SecretStr | None = None
    # Set: the CLI is an HTTP client of the `df serve` there (DF_API_TOKEN its bearer token) and
    # opens no job store, queue or artifact store of its own.
    api_url: str | None = None
    # Each HTTP request's limit; and how long the CLI goes on retrying when the server can't be
    # reached (reads, and writes that carry an Idempotency-Key), before it gives up.
    api_timeout_s: float = Field(default=30.0, gt=0)
    api_retry_s: float = Field(default=30.0, ge=0)

    # A worker is "live" while its heartbeat is younger than worker_timeout_s.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    worker_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # SIGTERM lets a running job finish for this long before it is handed back to the queue.
    shutdown_grace_s: float = Field(default=600.0, ge=0)
    queue_name: str = "dreamforge"
    # How long a worker holds a message or a finished image while the job store is away.
    store_wait_s: float = Field(default=300.0, ge=0)
    # Jobs whose images may still be encoding and uploading while the runner makes the next
    # job's, so the GPU never waits on that CPU work; 0: each job is stored before the next starts.
    finishing_jobs: int = Field(default=1, ge=0, le=4)
    orphan_sweep_interval_s: float = Field(default=30.0, gt=0)
    # How fast an idle consumer polls a queue that cannot block (SQLite).
    poll_interval_s: float = Field(default=0.02, gt=0)
    # How often an API process reads new events when the job store can't wake it (SQLite).
    event_poll_s: float = Field(default=0.05, gt=0)

    # Connections each process keeps to PostgreSQL (see README, "Sizing the database"). Pre-ping
    # costs a round trip per checkout and finds connections a restarted server dropped.
    db_pool_size: int = Field(default=5, ge=1, le=1000)
    db_max_overflow: int = Field(default=10, ge=0, le=1000)
    db_pool_pre_ping: bool = True
    # Every process upgrades the schema when it opens the job store (under a lock); 0: only
    # `df db upgrade` does, and processes refuse to start on an older schema.
    db_auto_upgrade: bool = True

    # An Idempotency-Key names one job for this long (seconds, or ISO 8601 such as PT24H); after
    # that the same key makes a new job. Keys are scoped per API token (per client without one).
    idempotency_ttl: timedelta = timedelta(hours=24)
    # Jobs that ended longer ago than this many days are pruned, with their images, by the
    # workers (one of them an hour); 0 keeps everything (`df jobs prune` still works).
    retention_days: float = Field(default=0, ge=0)

    # -- webhooks (dreamforge/webhooks) ---------------------------------------------------------
    # Signs every delivery (Standard Webhooks: whsec_ and base64). Unset: no webhooks at all; a
    # job that asks for one is refused, and DF_WEBHOOK_URLS is a configuration error.
    webhook_secret: SecretStr | None = None
    # Endpoints that receive every job's events (comma-separated, or a JSON list), those named
    # in webhook_events (comma-separated too).
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_events: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["running", "succeeded", "failed", "canceled"])
    # Targets on loopback, private, link-local and other non-public addresses are refused unless 1.
    webhook_allow_private: bool = False
    # The waits between attempts, as durations (5s, 5m, 2h) or seconds; jittered by ±20 %. After
    # the last one the delivery is failed. The default spans about a day (Standard Webhooks').
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    # Bounds one attempt, connecting and answering together.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # How often a deliverer looks for due deliveries, and how many it sends at once.
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_concurrency: int = Field(default=4, ge=1, le=64)
    # POST /v1/images/generations answers when its job ends, or after this long with a 504.
    openai_wait_s: float = Field(default=600.0, gt=0)
    # POST /v1/uploads: the largest image file taken, and the longest side (SDXL's largest size).
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    upload_max_side: int = Field(default=2048, ge=64, le=4096)

    @field_validator("webhook_urls", "webhook_events", "models_token_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        from dreamforge.webhooks.config import split_list

        return split_list(value)

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        from dreamforge.webhooks.config import parse_schedule

        return parse_schedule(value)

    @model_validator(mode="after")
    def _webhooks(self) -> Settings:
        from dreamforge.webhooks.config import check_settings

        check_settings(self)
        return self

    @model_validator(mode="after")
    def _fill_urls(self) -> Settings:
        if self.heartbeat_interval_s * 2 > self.worker_timeout_s:
            # One late beat would let another worker reclaim a job that is still running.
            raise ValueError(f"DF_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s:g}) must be at most "
                             f"half of DF_WORKER_TIMEOUT_S ({self.worker_timeout_s:g})")
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'dreamforge.db'}"
        if not self.queue_url:
            self.queue_url = f"sqlite:///{self.data_dir / 'queue.db'}"
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'artifacts'}"
        return self

    @property
    def spool_dir(self) -> Path:
        """Finished images whose upload failed wait here for `df artifacts retry`."""
        return self.data_dir / "spool"

    def model_path(self) -> tuple[Path, str]:
        """The checkpoint to load and the setting that chose it."""
        if self.generate_model_path:
            return Path(self.generate_model_path).expanduser(), "DF_GENERATE_MODEL_PATH"
        if self.models_root:
            root = Path(self.models_root).expanduser()
            if self.default_model_dir:
                return root / self.default_model_dir, "DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR"
            # The models volume is the host's ~/.cache/dream-forge, so the default file keeps its place.
            return root / "civitai" / Path(DEFAULT_MODEL_PATH).name, "DF_MODELS_ROOT"
        return Path(DEFAULT_MODEL_PATH).expanduser(), "the default DF_GENERATE_MODEL_PATH"


def mask_url(url: str) -> str:
    """Hide a password inside a URL (postgresql://user:pw@host → user:***@host)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
