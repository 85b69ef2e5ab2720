"""Artifact stores: where finished images live. A local folder or an S3 bucket, one interface.

Both use the same key layout (``artifact_key``). Keys begin with the bucket's name
(``dreamforge/default/jobs/…``), so the local store writes ``<root>/<key>``; files that an earlier
version wrote under ``<root>/<bucket>/<key>`` are still read from there.
"""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dreamforge.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from dreamforge.settings import Settings

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def artifact_key(job_id: str, created: datetime, item: int, width: int, height: int, seed: int,
                 fmt: str) -> str:
    ts = created.strftime("%Y%m%dT%H%M%SZ")
    return (f"dreamforge/default/jobs/{job_id}/generate/"
            f"{ts}_{item}_{width}x{height}_{seed}.{EXTENSIONS[fmt]}")


class ArtifactStore(Protocol):
    """Stores bytes under a key. ``put`` is all-or-nothing: a reader never sees half an object."""

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool:
        """Whether the object is there; StorageError when the store can't say."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object if it exists."""
        ...

    def locate(self, key: str) -> dict[str, str]:
        """How a client fetches the object: {"url": …} and, for a local file, {"path": …}."""
        ...

    def check(self) -> None:
        """Raise StorageError when the store can't be reached."""
        ...

    def describe(self) -> str: ...


def out_of_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def partial_prefix(path: Path) -> str:
    return f".partial-{path.name}-"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it (named after it, so what a
    killed writer leaves can be found), fsynced, then renamed. The temporary file never outlives
    a failure that this process survives (a full disk included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore:
    def __init__(self, root: Path, bucket: str):
        self.root = root
        self.bucket = bucket
        self._root = os.path.realpath(root)

    def path(self, key: str) -> Path:
        """Where the key lies. Checked by its text (no key may climb out of the store), so a
        listing of a thousand images costs no more than one stat each."""
        normal = os.path.normpath(key)
        if key.startswith("/") or "\\" in key or normal.startswith("..") or normal == ".":
            raise StorageError(f"artifact key escapes the store: {key[:200]!r}")
        path = Path(self._root, normal)
        if not path.exists():
            legacy = Path(self._root, self.bucket, normal)  # where an earlier version wrote it
            if legacy.exists():
                return legacy
        return path

    def put(self, key: str, data: bytes, content_type: str, sha256: str) -> None:
        path = self.path(key)
        try:
            write_atomically(path, data)
        except OSError as exc:
            what = "out of disk space" if out_of_space(exc) else (exc.strerror or str(exc))
            # The key, not the path: the message goes to the job's record and API clients.
            raise StorageError(f"could not write {key}: {what}",
                               details={"out_of_space": out_of_space(exc)}) from exc

    def delete(self, key: str) -> None:
        """Remove the file and any temporary file a killed writer left for it."""
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
            for partial in path.parent.glob(partial_prefix(path) + "*"):
                partial.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not remove {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"could not read {key}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def locate(self, key: str) -> dict[str, str]:
        path = self.path(key)
        return {"url": path.as_uri(), "path": str(path)}

    def check(self) -> None:
        target = self.root
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"artifact folder {target} is not writable: {exc.strerror}") from exc
        if not os.access(target, os.W_OK):
            raise StorageError(f"artifact folder {target} is not writable")

    def describe(self) -> str:
        return f"local folder {self.root}"


def make_artifact_store(settings: Settings) -> ArtifactStore:
    url = settings.storage_url
    if url.startswith("file://"):
        return LocalStore(Path(url[len("file://"):]).expanduser(), settings.bucket)
    if url.startswith("s3://"):
        from dreamforge.s3 import S3Store

        return S3Store.from_settings(settings)
    raise ConfigError(f"unsupported DF_STORAGE_URL scheme: {url.split(':', 1)[0]!r} "
                     "(use file:///PATH or s3://BUCKET)")
