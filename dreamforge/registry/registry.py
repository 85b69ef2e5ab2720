"""The model registry: which checkpoints and LoRAs jobs can name, where they lie, and which
checkpoint is the default.

Rows live in the job store's database (table ``models``), so every door and every worker sees
the same registry. Files live under the models root (DF_MODELS_ROOT, else ``<DF_DATA_DIR>/models``)
or anywhere a local ``add`` pointed at. Nothing is registered before it was checked: the header
or configs say it is an SDXL base checkpoint and every byte the header promises is there.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from dreamforge.errors import InvalidRequest, ModelConflict, ModelNotFound, ModelRejected
from dreamforge.registry import identify as ident
from dreamforge.registry.records import (
    DEFAULT_NAME,
    ModelRecord,
    check_name,
    name_from,
    redact_url,
    url_filename,
)
from dreamforge.tables import models, utcnow
from dreamforge.text import cut

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from dreamforge.job_store import JobStore
    from dreamforge.registry.download import Progress
    from dreamforge.settings import Settings

log = logging.getLogger(__name__)

# How deep `scan` looks under the models root (the root's own files are depth 1).
SCAN_DEPTH = 4
# A worker resolves the model of every job it runs, and keeps what it read this long: a busy
# worker reads the registry about once a second, not once a job (the read was a tenth of a
# 1-step job's CPU on PostgreSQL, issue 18). What this process changes in the registry it sees at
# once; what another process changes, within this time.
RECENT_S = 1.0


def models_root(settings: Settings) -> Path:
    """Where downloads go and `scan` looks: DF_MODELS_ROOT, else ``<DF_DATA_DIR>/models``."""
    if settings.models_root:
        return Path(settings.models_root).expanduser()
    return settings.data_dir / "models"


@dataclass
class Verified:
    name: str
    ok: bool
    expected: str | None
    actual: str | None
    reason: str | None = None


@dataclass
class ScanReport:
    added: list[ModelRecord] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)


def _lora_as_default(name: str) -> ModelRejected:
    return ModelRejected(f"{name} is a LoRA: only a checkpoint can be the default model", code="not_a_checkpoint",
                         details={"model": name})


def _aware(value: Any) -> Any:
    from dreamforge.job_store import aware

    return aware(value)


class ModelRegistry:
    """The registry's verbs. ``resolve`` is what a job's model choice goes through."""

    def __init__(self, settings: Settings, job_store: JobStore):
        self.settings = settings
        self.store = job_store
        self.root = models_root(settings)
        self._recent: dict[str | None, tuple[float, ModelRecord]] = {}
        self._changes = 0  # so a read that overlapped a change is not kept

    # -- reading --------------------------------------------------------------------------------
    def _record(self, row: Any) -> ModelRecord:
        path = Path(row["path"])
        return ModelRecord(
            name=row["name"], kind=row["kind"], format=row["format"], source=row["source"],
            path=row["path"], location=path if path.is_absolute() else self.root / path,
            sha256=row["sha256"], size_bytes=row["size_bytes"], is_default=bool(row["is_default"]),
            downloaded=bool(row["downloaded"]), details=row["details"] or {},
            added_at=_aware(row["added_at"]), last_used_at=_aware(row["last_used_at"]),
            verified_at=_aware(row["verified_at"]))

    def all(self) -> list[ModelRecord]:
        with self.store.read() as conn:
            rows = conn.execute(sa.select(models).order_by(models.c.name)).mappings().all()
        return [self._record(r) for r in rows]

    def get(self, name: str) -> ModelRecord:
        with self.store.read() as conn:
            row = conn.execute(sa.select(models).where(models.c.name == name)).mappings().first()
        if row is None:
            raise ModelNotFound(f"no model named {cut(name, 80)!r} is registered (df models list)",
                                details={"model": cut(name, 80)})
        return self._record(row)

    def settings_default(self) -> ModelRecord:
        """The model the settings name, as an unregistered record called ``default``."""
        path, chosen_by = self.settings.model_path()
        fmt = ident.DIFFUSERS if path.is_dir() else ident.SINGLE_FILE
        return ModelRecord(name=DEFAULT_NAME, kind=ident.CHECKPOINT, format=fmt, source=str(path),
                           path=str(path), location=path, registered=False, is_default=True,
                           chosen_by=chosen_by)

    def default(self) -> ModelRecord:
        """The registered default, else the model the settings name."""
        with self.store.read() as conn:
            row = conn.execute(sa.select(models).where(models.c.is_default.is_(True))
                               .order_by(models.c.name).limit(1)).mappings().first()
        return self._record(row) if row is not None else self.settings_default()

    def find(self, name: str | None) -> ModelRecord:
        """Any registered model by name, a LoRA included (what `df models show` and GET
        /v1/models/{name} show): None and ``default`` as in ``resolve``."""
        if name is None:
            return self.default()
        try:
            return self.get(name)
        except ModelNotFound:
            if name == DEFAULT_NAME:
                return self.default()
            raise

    def resolve(self, name: str | None) -> ModelRecord:
        """The checkpoint a job names: None for the default; ``default`` for the default too,
        unless a model is registered under that name. ModelNotFound (code unknown_model) for an
        unknown name; ModelRejected (not_a_checkpoint) for a LoRA's."""
        record = self.find(name)
        if record.kind != ident.CHECKPOINT:
            raise ModelRejected(f"{record.name} is a LoRA, not a checkpoint: a job's model is an SDXL checkpoint "
                                "(a LoRA goes in its loras)", code="not_a_checkpoint",
                                details={"model": record.name, "kind": record.kind})
        return record

    def resolve_recent(self, name: str | None) -> ModelRecord:
        """``resolve``, answered from what this registry read in the last RECENT_S: what a
        worker asks for each job it runs."""
        now = time.monotonic()
        kept = self._recent.get(name)
        if kept is not None and now - kept[0] < RECENT_S:
            return kept[1]
        changes = self._changes
        record = self.resolve(name)
        if changes == self._changes:
            self._recent[name] = (now, record)
        return record

    def resolve_lora(self, name: str) -> ModelRecord:
        """The LoRA a job names. ModelNotFound (unknown_model) for an unknown name; ModelRejected
        (not_a_lora) for a checkpoint's."""
        record = self.get(name)
        if record.kind != ident.LORA:
            raise ModelRejected(f"{record.name} is a checkpoint, not a LoRA", code="not_a_lora",
                                details={"model": record.name, "kind": record.kind})
        return record

    def touch(self, name: str) -> None:
        """A job used this model now (last_used_at). Unregistered names are ignored."""
        with self.store.write() as conn:
            conn.execute(models.update().where(models.c.name == name).values(last_used_at=utcnow()))

    # -- changing -------------------------------------------------------------------------------
    @contextmanager
    def _changing(self) -> Iterator[Connection]:
        """A write that changes what ``resolve`` answers: what this process kept is dropped."""
        try:
            with self.store.write() as conn:
                yield conn
        finally:
            self._changes += 1
            self._recent.clear()

    def stored_path(self, location: Path) -> str:
        """``location`` relative to the models root when it lies under it, else absolute."""
        location = location.resolve()
        try:
            return location.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(location)

    def _free_name(self, name: str) -> None:
        with self.store.read() as conn:
            taken = conn.execute(sa.select(models.c.name).where(models.c.name == name)).first()
        if taken:
            raise ModelConflict(f"a model named {name!r} is registered already (df models remove "
                                f"{name}, or choose another name)", details={"model": name})

    def _insert(self, values: dict[str, Any], make_default: bool) -> ModelRecord:
        if make_default and values["kind"] != ident.CHECKPOINT:
            raise _lora_as_default(values["name"])
        try:
            with self._changing() as conn:
                if not values["downloaded"]:
                    same = conn.execute(sa.select(models.c.name).where(models.c.path == values["path"])).first()
                    if same:
                        raise ModelConflict(f"this file is registered already, as {same.name!r}",
                                            details={"model": same.name})
                conn.execute(models.insert().values(**values, added_at=utcnow()))
                if make_default:
                    conn.execute(models.update().values(
                        is_default=sa.case((models.c.name == values["name"], True), else_=False)))
        except sa.exc.IntegrityError:
            raise ModelConflict(f"a model named {values['name']!r} is registered already",
                                details={"model": values["name"]}) from None
        log.info("model %s registered (%s, %s)", values["name"], values["format"], values["path"])
        return self.get(values["name"])

    def add_local(self, path: Path, name: str | None = None, sha256: str | None = None, *,
                  make_default: bool = False, on_bytes: Callable[[int], None] | None = None) -> ModelRecord:
        """Register a file or Diffusers folder that is already on this machine, after checking
        what it is and hashing it (``sha256``, when given, must match)."""
        location = path.expanduser()
        if not location.exists():
            raise InvalidRequest(f"{cut(str(path), 200)} does not exist")
        location = location.resolve()
        name = check_name(name or name_from(location.name))
        self._free_name(name)
        identity = ident.require(ident.identify(location), location, ident.KINDS)
        if make_default and identity.kind != ident.CHECKPOINT:
            raise _lora_as_default(name)
        actual = ident.sha256_of(location, on_bytes)
        if sha256 and actual != sha256.lower():
            raise ModelRejected(f"{location.name} has sha256 {actual}, not the {sha256.lower()} given",
                                code="checksum_mismatch", details={"expected": sha256.lower(), "actual": actual})
        return self._insert({"name": name, "kind": identity.kind, "format": identity.format,
                             "source": str(location), "path": self.stored_path(location), "sha256": actual,
                             "size_bytes": ident.size_of(location), "is_default": False,
                             "downloaded": False, "details": {"looks_like": identity.looks_like,
                                                              **identity.details}}, make_default)

    def plan_download(self, url: str, name: str | None) -> tuple[str, Path]:
        """The name a download registers under and the file it writes, checked before any byte
        moves: the URL's scheme, the name's form, the name and the file both free."""
        from dreamforge.registry.download import check_url

        check_url(url, self.settings)
        name = check_name(name or name_from(url_filename(url) or "model"))
        self._free_name(name)
        target = self.root / f"{name}.safetensors"
        if target.exists():
            raise ModelConflict(f"{target.name} exists in the models folder and is not registered as "
                                f"{name!r}: `df models add {target}` registers it, or choose another name",
                                details={"model": name})
        return name, target

    def add_url(self, url: str, name: str | None = None, sha256: str | None = None, *,
                make_default: bool = False, progress: Progress | None = None,
                before_register: Callable[[], None] | None = None, public_only: bool = False) -> ModelRecord:
        """Download a single-file checkpoint into the models root (resuming an earlier try) and
        register it. Nothing is registered, and no file is left under its final name, unless it
        arrived whole, matches ``sha256`` when one is given, and is an SDXL base checkpoint, and
        ``before_register`` (a download job's check that it still holds the job) did not raise.
        ``public_only``: every hop must reach a public address (a URL an API client gave)."""
        from dreamforge.registry.download import Downloader

        name, target = self.plan_download(url, name)
        fetched = Downloader(self.settings, self.root, public_only=public_only).fetch(
            url, name, target, expected_sha256=sha256, progress=progress)
        try:
            if before_register is not None:
                before_register()
            return self._insert({"name": name, "kind": fetched.identity.kind, "format": ident.SINGLE_FILE,
                                 "source": redact_url(url), "path": self.stored_path(target),
                                 "sha256": fetched.sha256, "size_bytes": fetched.size_bytes,
                                 "is_default": False, "downloaded": True,
                                 "details": {"looks_like": fetched.identity.looks_like,
                                             **fetched.identity.details}}, make_default)
        except BaseException:
            target.unlink(missing_ok=True)  # ours, and registered nowhere: no orphan on disk
            raise

    def remove(self, name: str, *, keep_file: bool = False) -> tuple[ModelRecord, Path | None]:
        """Forget a model. Its file is deleted only when DreamForge downloaded it into the models
        root (and not with ``keep_file``); files added from elsewhere are never touched. Returns
        the record and the path deleted, if any."""
        record = self.get(name)
        with self._changing() as conn:
            conn.execute(models.delete().where(models.c.name == name))
        deleted = None
        if record.downloaded and not keep_file and self._under_root(record.location):
            try:
                if record.location.is_dir():
                    shutil.rmtree(record.location)
                else:
                    record.location.unlink()
                deleted = record.location
            except FileNotFoundError:
                pass
        log.info("model %s removed%s", name, f" and {deleted} deleted" if deleted else "")
        return record, deleted

    def _under_root(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root.resolve())
            return True
        except (ValueError, OSError):
            return False

    def set_default(self, name: str | None) -> ModelRecord:
        """Make ``name`` the default (one statement: exactly one default after it); None: no
        registered default, so the settings' model is the default again."""
        if name is not None and self.get(name).kind != ident.CHECKPOINT:
            raise _lora_as_default(name)
        with self._changing() as conn:
            conn.execute(models.update().values(
                is_default=sa.case((models.c.name == name, True), else_=False) if name else False))
        return self.default()

    def verify(self, name: str, on_bytes: Callable[[int], None] | None = None) -> Verified:
        """Hash the model's file again and compare it with the recorded sha256; check the header
        too. Records verified_at when it matches."""
        record = self.get(name)
        if not record.location.exists():
            return Verified(name, False, record.sha256, None, f"{record.location} is missing")
        try:
            ident.identify(record.location)
        except ModelRejected as exc:
            return Verified(name, False, record.sha256, None, exc.message)
        actual = ident.sha256_of(record.location, on_bytes)
        ok = actual == record.sha256
        if ok:
            with self.store.write() as conn:
                conn.execute(models.update().where(models.c.name == name).values(verified_at=utcnow()))
        return Verified(name, ok, record.sha256, actual, None if ok else "the sha256 differs from the one recorded")

    def scan(self, on_bytes: Callable[[int], None] | None = None) -> ScanReport:
        """Register the SDXL checkpoints and LoRAs under the models root that are not registered
        yet (single .safetensors files and Diffusers folders), named after their file or folder."""
        report = ScanReport()
        if not self.root.is_dir():
            return report
        known = {r.path: r.name for r in self.all()}
        for candidate in self._candidates(self.root, 1):
            stored = self.stored_path(candidate)
            if stored in known:
                report.known.append(known[stored])
                continue
            name = self._unused_name(name_from(candidate.name))
            try:
                record = self.add_local(candidate, name, on_bytes=on_bytes)
            except (ModelRejected, ModelConflict) as exc:
                report.refused.append({"path": stored, "reason": exc.message})
                continue
            known[record.path] = record.name
            report.added.append(record)
        return report

    def _candidates(self, folder: Path, depth: int) -> list[Path]:
        found = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or (entry.is_symlink() and entry.is_dir()):
                continue
            if entry.is_file() and entry.suffix == ".safetensors":
                found.append(entry)
            elif entry.is_dir() and (entry / "model_index.json").is_file():
                found.append(entry)
            elif entry.is_dir() and depth < SCAN_DEPTH:
                found.extend(self._candidates(entry, depth + 1))
        return found

    def _unused_name(self, name: str) -> str:
        taken = {r.name for r in self.all()}
        candidate, n = name, 2
        while candidate in taken:
            candidate = f"{name[:120]}-{n}"
            n += 1
        return candidate

    def ensure_root(self) -> Path:
        os.makedirs(self.root, exist_ok=True)
        return self.root
