"""The S3 artifact store: AWS S3, MinIO or any S3-compatible server, through boto3.

Path-style addressing and SigV4 whenever an endpoint is set (what MinIO wants). The bucket is
private: created without any ACL or policy, objects uploaded without ACLs, and clients fetch
through presigned GET URLs. Failures are retried with backoff here and surface as StorageError,
whose messages name the endpoint and bucket but never a credential.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dreamforge.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from dreamforge.settings import Settings

log = logging.getLogger(__name__)

# Client errors worth another try; anything else 4xx (bad credentials, no such bucket) is final.
RETRYABLE_CODES = {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable",
                   "RequestTimeTooSkewed", "Throttling", "503", "500", "502", "504"}


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{err.get('Code', 'error')} (HTTP {status}): {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in RETRYABLE_CODES or status >= 500
    return isinstance(exc, BotoCoreError)  # connection refused, timeouts, DNS


class S3Store:
    def __init__(self, bucket: str, *, endpoint_url: str | None, access_key_id: str | None,
                 secret_access_key: str | None, region: str, create_bucket: bool = True,
                 presign_expiry_s: int = 3600, attempts: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 10.0):
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.create_bucket = create_bucket
        self.presign_expiry_s = presign_expiry_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        config = Config(signature_version="s3v4", region_name=region,
                        s3={"addressing_style": "path" if endpoint_url else "auto"},
                        connect_timeout=timeout_s, read_timeout=timeout_s,
                        retries={"max_attempts": 1, "mode": "standard"})
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key, config=config)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        bucket = settings.storage_url[len("s3://"):].strip("/").split("/", 1)[0]
        if not bucket:
            raise ConfigError("DF_STORAGE_URL must name a bucket: s3://BUCKET")
        secret = settings.s3_secret_access_key
        key_id = settings.s3_access_key_id
        return cls(bucket, endpoint_url=settings.s3_endpoint_url,
                   access_key_id=key_id.get_secret_value() if key_id else None,
                   secret_access_key=secret.get_secret_value() if secret else None,
                   region=settings.s3_region, create_bucket=settings.s3_create_bucket,
                   presign_expiry_s=settings.s3_presign_expiry_s, attempts=settings.s3_retries,
                   backoff_s=settings.s3_retry_backoff_s, timeout_s=settings.s3_timeout_s)

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url or 'AWS S3'}"

    def _public(self, text: str) -> str:
        """Text fit for the job's record: the endpoint's address replaced by a word."""
        return text.replace(self.endpoint_url, "the endpoint") if self.endpoint_url else text

    def _with_retries(self, what: str, call: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except (ClientError, BotoCoreError) as exc:
                if attempt == self.attempts or not _retryable(exc):
                    # The message travels to the job's record and API clients: it names the
                    # bucket, never the endpoint (the log line has that).
                    log.error("%s at %s failed after %d attempt(s): %s", what, self.describe(), attempt,
                              _describe_error(exc))
                    raise StorageError(
                        f"{what} in bucket {self.bucket!r} failed after {attempt} attempt(s): "
                        f"{self._public(_describe_error(exc))}",
                        details={"bucket": self.bucket, "attempts": attempt}) from None
                log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s", what, attempt,
                            self.attempts, delay, _describe_error(exc))
                time.sleep(delay)
                delay *= 2

    def ensure_bucket(self) -> None:
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._with_retries("checking the bucket",
                                   lambda: self.client.head_bucket(Bucket=self.bucket))
            except StorageError as exc:
                if "(HTTP 404)" not in exc.message:
                    raise
                if not self.create_bucket:
                    raise StorageError(
                        f"bucket {self.bucket!r} does not exist "
                        "and DF_S3_CREATE_BUCKET is off: create it (private) or allow creating it",
                        details={"bucket": self.bucket}) from None
                # No ACL argument: the bucket is private, as S3 and MinIO make it by default.
                self._with_retries("creating the bucket", self._create)
                log.info("created private bucket %s", self.describe())
            self._bucket_ready = True

    def _create(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                  "BucketAlreadyExists"):
                raise

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None:
        self.ensure_bucket()
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        # The server checks ChecksumSHA256 against the bytes it received: a torn upload is refused.
        self._with_retries(f"uploading {key}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
            ChecksumSHA256=checksum, Metadata={"sha256": sha256}))

    def get(self, key: str) -> bytes:
        response = self._with_retries(f"downloading {key}",
                                      lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        try:
            return response["Body"].read()
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"downloading {key} from {self.describe()} broke off: {exc}") from None

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is no error (S3's DELETE is idempotent)."""
        self._with_retries(f"deleting {key}", lambda: self.client.delete_object(
            Bucket=self.bucket, Key=key))

    def head(self, key: str) -> dict[str, Any]:
        return self._with_retries(f"reading {key}", lambda: self.client.head_object(
            Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"))

    def exists(self, key: str) -> bool:
        def probe() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False  # no such key, or no bucket yet: either way, not there
                raise
            return True

        return bool(self._with_retries(f"looking for {key}", probe))

    def locate(self, key: str) -> dict[str, str]:
        url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                 ExpiresIn=self.presign_expiry_s)
        return {"url": url}

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 and self.create_bucket:
                return  # reachable; the first upload creates the bucket
            raise StorageError(f"{self.describe()}: {_describe_error(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.describe()} unreachable: {_describe_error(exc)}") from None
