"""A registered model as the doors and the runner see it, and names and sources made safe to keep."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from dreamforge.errors import InvalidRequest

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
# What a name made from a file name may keep.
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# Query parameters that carry credentials on model hubs (civitai's ?token=, signed CDN URLs).
_SECRET_PARAM = re.compile(r"token|key|sig|signature|auth|secret|password|credential|policy", re.I)
# The name that means "whichever model is the default" when no model is registered under it.
DEFAULT_NAME = "default"


@dataclass
class ModelRecord:
    """One model. ``location`` is where this process finds it: ``path`` under the models root
    when relative, ``path`` itself when absolute. ``registered`` is False only for the model
    the settings name (DF_GENERATE_MODEL_PATH, or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) when no
    registered model is the default: its name is ``default`` and it has no hash or times."""

    name: str
    kind: str
    format: str
    source: str
    path: str
    location: Path
    sha256: str | None = None
    size_bytes: int | None = None
    is_default: bool = False
    downloaded: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    added_at: datetime | None = None
    last_used_at: datetime | None = None
    verified_at: datetime | None = None
    registered: bool = True
    # The unregistered default: the setting that chose it.
    chosen_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (`df models show --json`)."""
        data = asdict(self)
        data["location"] = str(self.location)
        for name in ("added_at", "last_used_at", "verified_at"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value else None
        return data

    def public(self) -> dict[str, Any]:
        """What an HTTP client gets: no absolute path of the server's (a path under the models
        root is kept: it names the model's place on the shared volume)."""
        data = self.to_dict()
        data.pop("location")
        if Path(self.path).is_absolute():
            data["path"] = None
        if not self.source.startswith(("https://", "http://")):
            data["source"] = "local"
        return data


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(f"a model name is 1-128 letters, digits, '.', '_' or '-' and starts with a "
                             f"letter or digit, not {name[:80]!r}",
                             details=[{"field": "name", "message": "1-128 of A-Z a-z 0-9 . _ -"}])
    return name


def name_from(filename: str) -> str:
    """A registry name from a file or folder name: its stem, unsafe characters made '-'."""
    stem = filename[: -len(".safetensors")] if filename.endswith(".safetensors") else filename
    name = _UNSAFE_IN_NAME.sub("-", stem).strip("-._")[:128].rstrip("-._")
    return name or "model"


def redact_url(url: str) -> str:
    """The URL as it may be stored, shown and logged: a password in it and the values of query
    parameters that look like credentials become ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        netloc = (creds.split(":", 1)[0] + ":***@" if ":" in creds else creds + "@") + host
    query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def has_credentials(url: str) -> bool:
    """A password in the URL, or a query parameter that looks like a credential."""
    parts = urlsplit(url)
    creds = parts.netloc.rpartition("@")[0]
    return ":" in creds or any(_SECRET_PARAM.search(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True))


def url_filename(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
