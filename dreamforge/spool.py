"""The spool: finished images whose upload failed, kept on local disk so none is ever lost.

Each entry is the image file plus a JSON sidecar holding what is needed to finish the job later:
the key, the content type and the artifact row. ``df artifacts retry`` uploads and records them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def keep(self, job_id: str, key: str, data: bytes, content_type: str,
             artifact: dict[str, Any]) -> Path:
        path = self.root / job_id / Path(key).name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, data)
        meta = {"job_id": job_id, "key": key, "content_type": content_type, "artifact": artifact}
        self._write(path.with_name(path.name + ".json"), json.dumps(meta).encode())
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
