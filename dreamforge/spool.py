"""The spool: finished images whose upload failed, kept on local disk so none is ever lost.

Each entry is the image file plus a JSON sidecar holding what is needed to finish the job later:
the key, the content type and the artifact row. ``df artifacts retry`` uploads and records them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamforge.artifact_store import out_of_space, write_atomically
from dreamforge.errors import StorageError


@dataclass
class Spooled:
    path: Path
    job_id: str
    key: str
    content_type: str
    artifact: dict[str, Any]

    def read(self) -> bytes:
        return self.path.read_bytes()


class Spool:
    def __init__(self, root: Path):
        self.root = root

    def keep(self, job_id: str, key: str, data: bytes, content_type: str,
             artifact: dict[str, Any]) -> Path:
        """Keep the image and its sidecar, both or neither; StorageError when that fails."""
        path = self.root / job_id / Path(key).name
        sidecar = path.with_name(path.name + ".json")
        meta = {"job_id": job_id, "key": key, "content_type": content_type, "artifact": artifact}
        try:
            write_atomically(path, data)
            write_atomically(sidecar, json.dumps(meta).encode())
        except OSError as exc:
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            what = "out of disk space" if out_of_space(exc) else (exc.strerror or str(exc))
            raise StorageError(f"could not keep the image in the spool at {self.root}: {what}",
                               details={"out_of_space": out_of_space(exc)}) from exc
        return path

    def entries(self) -> list[Spooled]:
        out = []
        for sidecar in sorted(self.root.glob("*/*.json")):
            meta = json.loads(sidecar.read_text())
            image = sidecar.with_name(sidecar.name[: -len(".json")])
            if image.exists():
                out.append(Spooled(image, meta["job_id"], meta["key"], meta["content_type"],
                                   meta["artifact"]))
        return out

    def remove(self, entry: Spooled) -> None:
        entry.path.with_name(entry.path.name + ".json").unlink(missing_ok=True)
        entry.path.unlink(missing_ok=True)
        try:
            entry.path.parent.rmdir()
        except OSError:
            pass
