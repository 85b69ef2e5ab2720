"""Fetching a checkpoint over HTTP(S) into the models root, resumable, checked, all or nothing.

The bytes go to ``<root>/<name>.partial``, with ``<name>.partial.json`` beside it saying which
URL (by hash: a URL may carry a token) and which version (ETag or Last-Modified) they are of. A
later try of the same URL asks for the rest (``Range: bytes=<size>-``, with ``If-Range`` so a
changed file comes whole) and takes a 206 as the continuation or a 200 as a fresh start. Only a
download that arrived whole, matches the sha256 given and has a sound SDXL header is renamed to
its final name; a wrong checksum or a file that is not SDXL is deleted, an interrupted one is
kept for the next try. A file lock keeps two downloads of one name apart.

A URL that came over HTTP (POST /v1/models) is an API client's, so it could point the worker at
the cloud's metadata service, at the worker's own host or at the private network: unless
DF_MODELS_ALLOW_PRIVATE=1, its host must resolve, and only to public addresses, at submit and
again at every hop of the download (the first request and each redirect), where the connection
goes to the very address checked (dreamforge/addresses.py). ``df models add URL``, an operator's
own command, is not restricted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dreamforge.addresses import default_port, resolve, why_not_public
from dreamforge.errors import DownloadFailed, InvalidRequest, ModelConflict, ModelRejected
from dreamforge.registry import identify as ident
from dreamforge.registry.records import redact_url
from dreamforge.settings import Settings
from dreamforge.text import cut

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Left free on the models volume beyond the download itself.
DISK_RESERVE = 64 * 1024 * 1024
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MAX_URL = 2048


# Called with the bytes the file holds so far and its size (None when the server doesn't say).
Progress = Callable[[int, int | None], None]


@dataclass
class Fetched:
    sha256: str
    size_bytes: int
    identity: ident.Identity


def check_url(url: str, settings: Settings) -> None:
    """https (or http with DF_MODELS_ALLOW_HTTP=1), a host, and no more than 2048 characters."""
    from urllib.parse import urlsplit

    if len(url) > MAX_URL:
        raise InvalidRequest(f"the URL is over {MAX_URL} characters", details=[{"field": "source"}])
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ in the host: "Invalid IPv6 URL"
        raise InvalidRequest(f"source is not a URL that can be read: {exc}",
                             details=[{"field": "source", "message": str(exc)}]) from None
    shown = cut(redact_url(url), 200)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise InvalidRequest(f"{shown} is not a URL", details=[{"field": "source"}]) from None
    if parts.scheme == "http" and not settings.models_allow_http:
        raise InvalidRequest(f"{shown} is plain http://, which anyone on the way can change: use https://, "
                             "or set DF_MODELS_ALLOW_HTTP=1 for a server you trust",
                             details=[{"field": "source", "message": "https:// only"}])
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidRequest(f"{shown} is not an https:// URL", details=[{"field": "source"}])


def check_public_source(url: str, settings: Settings) -> None:
    """At POST /v1/models, before anything is queued: the URL passes ``check_url``, and its host
    resolves only to public addresses (unless DF_MODELS_ALLOW_PRIVATE=1); InvalidRequest
    otherwise. A name that does not resolve is refused too: its download could not succeed."""
    from urllib.parse import urlsplit

    check_url(url, settings)
    if settings.models_allow_private:
        return
    parts = urlsplit(url)
    assert parts.hostname is not None, "check_url refuses a URL without a host"
    try:
        public_addresses(parts.hostname, default_port(url))
    except DownloadFailed as exc:
        raise InvalidRequest(exc.message, details=[{"field": "source", "message": exc.message}]) from None


def public_addresses(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to now, when every one is public. DownloadFailed naming
    only the host otherwise (the URL may carry a token): ``download_failed`` for an address that
    is not public, ``download_interrupted`` for a name that does not resolve (maybe for now)."""
    shown = cut(host, 100)
    try:
        addresses = resolve(host, port)
    except (OSError, ValueError) as exc:  # socket.gaierror; UnicodeError, a NUL: not a name at all
        raise _failed(f"the download host {shown!r} does not resolve ({cut(str(exc), 100)})",
                      "download_interrupted", host=shown) from None
    if not addresses:
        raise _failed(f"the download host {shown!r} resolves to no address", "download_interrupted", host=shown)
    if (what := why_not_public(host, addresses)) is not None:
        raise _failed(f"the download host {shown!r} {what} (loopback, private, link-local and the like); downloads "
                      "asked for over HTTP reach public hosts only (DF_MODELS_ALLOW_PRIVATE=1 allows a mirror on "
                      "this host or LAN)", host=shown)
    return addresses


def _public_only_transport() -> httpx.BaseTransport:
    """An httpx transport that sends each request (the first and every redirect) only to a
    public address its host resolves to at that moment, and connects to that very address,
    with TLS still verifying the certificate against the host's name (``sni_hostname``)."""
    import httpx

    # Made here because httpx is imported only when a download runs (about 0.1 s of start-up).
    class PublicOnlyTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            url = request.url
            host = url.raw_host.decode("ascii")
            address = public_addresses(host, default_port(str(url)))[0]
            extensions = dict(request.extensions)
            if url.scheme == "https":
                extensions["sni_hostname"] = host
            # A new request rather than the given one changed: httpx builds a redirect's next hop
            # from the given one, whose URL must keep the name. The copied Host header names it.
            pinned = httpx.Request(request.method, url.copy_with(host=address), headers=request.headers,
                                   stream=request.stream, extensions=extensions)
            return super().handle_request(pinned)

    # No kept-alive connections: a connection made for one name is never reused for another that
    # resolved to the same address (its certificate was checked for the first name only).
    return PublicOnlyTransport(limits=httpx.Limits(max_keepalive_connections=0))


def token_may_go_to(url: str, hosts: list[str]) -> bool:
    """DF_MODELS_DOWNLOAD_TOKEN goes over https only, and only to the hosts DF_MODELS_TOKEN_HOSTS
    names or their subdomains: anyone who may call POST /v1/models picks the URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    return parts.scheme == "https" and any(
        host == allowed or host.endswith("." + allowed)
        for allowed in (h.strip().lower().rstrip(".") for h in hosts) if allowed)


def _failed(message: str, code: str = "download_failed", **details: Any) -> DownloadFailed:
    return DownloadFailed(message, code=code, details=details or None)


class Downloader:
    """``public_only``: the URL came from an API client, so every hop must reach a public
    address (see the module's docstring)."""

    def __init__(self, settings: Settings, root: Path, *, timeout_s: float = 30.0, public_only: bool = False):
        self.settings = settings
        self.root = root
        self.timeout_s = timeout_s
        self.public_only = public_only

    def fetch(self, url: str, name: str, target: Path, *, expected_sha256: str | None = None,
              progress: Progress | None = None) -> Fetched:
        """Download ``url`` to ``target`` (which must not exist); see the module's docstring."""
        check_url(url, self.settings)
        expected = expected_sha256.lower() if expected_sha256 else None
        partial = self.root / f"{name}.partial"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(partial, "ab") as out:
                try:
                    fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ModelConflict(f"a download of {name!r} is already running",
                                        details={"model": name}) from None
                try:
                    digest, size = self._fetch_locked(url, partial, out, progress)
                    return self._finish(url, partial, target, digest, size, expected)
                except BaseException:
                    if out.tell() == 0:  # nothing arrived worth resuming: leave nothing behind
                        self._discard(partial)
                    raise
                finally:
                    fcntl.flock(out, fcntl.LOCK_UN)
        except OSError as exc:
            # The models root read-only (as the compose and Kubernetes workers mount it), or full.
            code = "insufficient_disk" if exc.errno == errno.ENOSPC else "download_failed"
            raise _failed(f"can't write the download in the models folder {self.root}: "
                          f"{exc.strerror or type(exc).__name__}", code) from None

    def _meta_path(self, partial: Path) -> Path:
        return partial.with_name(partial.name + ".json")

    def _resume_point(self, url: str, partial: Path, out: IO[bytes]) -> tuple[int, dict[str, Any]]:
        """How much of this URL's file the partial already holds (0: start over), and what the
        server said about its version last time."""
        meta_path = self._meta_path(partial)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if not isinstance(meta, dict) or meta.get("url_sha256") != _url_hash(url):
            out.truncate(0)
            return 0, {}
        return out.seek(0, 2), meta

    def _fetch_locked(self, url: str, partial: Path, out: IO[bytes],
                      progress: Progress | None) -> tuple[str, int]:
        import httpx

        offset, meta = self._resume_point(url, partial, out)
        digest = hashlib.sha256()
        if offset:
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
        headers = {"Accept-Encoding": "identity"}
        token = self.settings.models_download_token
        if token is not None and token_may_go_to(url, self.settings.models_token_hosts):
            # httpx drops it on a redirect to another host (a hub's signed CDN URL needs none).
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        shown = redact_url(url)
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 15.0))
        # No proxy from the environment for a public-only download: a proxy would connect
        # wherever the name points.
        guard: dict[str, Any] = {"transport": _public_only_transport(), "trust_env": False} \
            if self.public_only else {}
        try:
            with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=10,
                              event_hooks={"request": [self._check_redirect]}, **guard) as client, \
                    client.stream("GET", url, headers=headers) as response:
                start, total = self._start(response, offset, partial, out, shown)
                if start != offset:  # the server sent the whole file: hash it from the start
                    digest = hashlib.sha256()
                self._write_meta(url, partial, response, total)
                if not self._has_space(total, start):
                    needed, free = (total or 0) - start, shutil.disk_usage(self.root).free
                    if not start:
                        self._discard(partial)
                    raise _failed(f"the download needs {needed} bytes and the models folder has {free} "
                                  f"free (keeping {DISK_RESERVE} spare)", "insufficient_disk",
                                  needed=needed, free=free)
                done = offset = start
                if progress is not None:
                    progress(done, total)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except httpx.TooManyRedirects:
            raise _failed(f"{shown} redirected more than 10 times") from None
        except httpx.InvalidURL as exc:
            raise _failed(f"{shown} can't be fetched: {cut(str(exc), 200)}") from None
        except httpx.TransportError as exc:
            out.flush()
            got = out.tell()
            if not got:
                self._discard(partial)
            what = "could not connect" if isinstance(exc, httpx.ConnectError) else "the connection broke"
            raise _failed(f"{what} ({type(exc).__name__}) while downloading {shown}; {got} bytes are kept "
                          "and the same command resumes from there", "download_interrupted",
                          bytes_kept=got) from None
        except httpx.HTTPError as exc:  # a body that can't be decoded, say
            raise _failed(f"{shown} could not be read: {type(exc).__name__}") from None
        out.flush()
        os.fsync(out.fileno())
        if total is not None and done != total:
            raise _failed(f"{shown} ended after {done} of {total} bytes; the same command resumes",
                          "download_interrupted", bytes_kept=done)
        return digest.hexdigest(), done

    def _check_redirect(self, request: Any) -> None:
        """Every hop of a redirect obeys the same scheme rule as the first URL."""
        if request.url.scheme == "http" and not self.settings.models_allow_http:
            raise _failed(f"a redirect led to plain http:// ({cut(redact_url(str(request.url)), 200)}); "
                          "refused without DF_MODELS_ALLOW_HTTP=1")

    def _start(self, response: Any, offset: int, partial: Path, out: IO[bytes],
               shown: str) -> tuple[int, int | None]:
        """Take the response's status: (where its body starts in the file, the file's size)."""
        status = response.status_code
        length = response.headers.get("content-length")
        length = int(length) if length and length.isdigit() else None
        if status == 206 and offset:
            match = CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match and int(match[1]) == offset:
                return offset, int(match[3]) if match[3] != "*" else None
            self._drop(partial, out)
            raise _failed(f"{shown} answered a resume with a range that does not start at byte {offset}; "
                          "the partial download was dropped, try again", "download_interrupted")
        if status == 200:
            if offset:
                log.info("%s sent the whole file again: starting over", shown)
                self._drop(partial, out)
            return 0, length
        if status == 416 and offset:
            self._drop(partial, out)
            raise _failed(f"{shown} could not resume at byte {offset}; the partial download was dropped, "
                          "try again", "download_interrupted")
        hint = ""
        if status in (401, 403):
            if self.settings.models_download_token is None:
                hint = "; set DF_MODELS_DOWNLOAD_TOKEN if the hub wants a token"
            elif "authorization" in response.request.headers:
                hint = "; the token was refused"
            else:
                hint = (f"; DF_MODELS_DOWNLOAD_TOKEN was not sent to {cut(response.request.url.host, 100)!r} "
                        "(over https to the hosts in DF_MODELS_TOKEN_HOSTS only)")
        raise _failed(f"{shown} answered HTTP {status}{hint}", http_status=status)

    def _drop(self, partial: Path, out: IO[bytes]) -> None:
        out.truncate(0)
        out.seek(0)
        self._meta_path(partial).unlink(missing_ok=True)

    def _write_meta(self, url: str, partial: Path, response: Any, total: int | None) -> None:
        meta = {"url_sha256": _url_hash(url), "etag": response.headers.get("etag"),
                "last_modified": response.headers.get("last-modified"), "total": total,
                "written_at": time.time()}
        self._meta_path(partial).write_text(json.dumps(meta))

    def _has_space(self, total: int | None, offset: int) -> bool:
        return total is None or total - offset + DISK_RESERVE <= shutil.disk_usage(self.root).free

    def _finish(self, url: str, partial: Path, target: Path, digest: str, size: int,
                expected: str | None) -> Fetched:
        shown = redact_url(url)
        if expected and digest != expected:
            self._discard(partial)
            raise _failed(f"{shown} has sha256 {digest}, not the {expected} given; the download was deleted",
                          "checksum_mismatch", expected=expected, actual=digest)
        try:
            identity = ident.require(ident.identify(partial), partial, ident.KINDS)
        except ModelRejected as exc:
            self._discard(partial)
            exc.message = f"the download from {cut(shown, 200)}: {exc.message}"
            exc.args = (exc.message,)
            raise
        try:
            os.link(partial, target)  # fails if target exists: never overwrites
        except FileExistsError:
            raise ModelConflict(f"{target.name} appeared in the models folder during the download; the "
                                f"download is kept as {partial.name}") from None
        except OSError:  # a filesystem without hard links
            if target.exists():
                raise ModelConflict(f"{target.name} appeared in the models folder during the download") from None
            os.replace(partial, target)
        self._discard(partial)
        log.info("downloaded %s to %s (%d bytes, sha256 %s)", shown, target, size, digest)
        return Fetched(digest, size, identity)

    def _discard(self, partial: Path) -> None:
        partial.unlink(missing_ok=True)
        self._meta_path(partial).unlink(missing_ok=True)


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()
