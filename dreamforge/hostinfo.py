"""What `df env inspect` reports: the host and container GPU context, every probe allowed to be
missing. Each probe returns a dict; a probe whose tool is absent says so instead of failing."""

from __future__ import annotations

import grp
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dreamforge.settings import SECRET_NAMES

# Where Docker and containerd look for CDI specs by default; DF_CDI_SPEC_DIRS (colon-separated)
# mirrors a daemon configured with other `cdi-spec-dirs`.
DEFAULT_CDI_DIRS = "/etc/cdi:/var/run/cdi"


def cdi_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get("DF_CDI_SPEC_DIRS", DEFAULT_CDI_DIRS).split(":") if p]
SECRET_HINTS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
TIMEOUT_S = 10


def run(*args: str) -> dict[str, Any]:
    """Run a probe command: {"ok", "stdout"} or {"ok": False, "missing" | "error"}."""
    if shutil.which(args[0]) is None:
        return {"ok": False, "missing": f"{args[0]} not found on PATH"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)  # noqa: S603 - fixed probes
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"ok": False, "error": lines[0][:300] if lines else f"exit {done.returncode}"}
    return {"ok": True, "stdout": done.stdout.strip()}


def os_info() -> dict[str, Any]:
    info: dict[str, Any] = {"system": platform.system(), "kernel": platform.release(),
                            "machine": platform.machine()}
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        info["distribution"] = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        info["distribution"] = None
    return info


def in_container() -> dict[str, Any]:
    markers = [p for p in ("/.dockerenv", "/run/.containerenv") if Path(p).exists()]
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        cgroup = ""
    hints = [w for w in ("docker", "containerd", "kubepods", "libpod") if w in cgroup]
    return {"inside": bool(markers or hints), "evidence": markers + hints}


_VERSION = re.compile(r"v?(\d+\.\d+(?:\.\d+)?[\w.+-]*)")


def compose_version() -> dict[str, Any]:
    """Compose v2 answers `docker compose version --short`; early v2 releases refuse `--short`
    ("unknown flag"), so the long form is parsed; the standalone v1 `docker-compose` comes last."""
    first: dict[str, Any] | None = None
    for args in (("docker", "compose", "version", "--short"), ("docker", "compose", "version"),
                 ("docker-compose", "version", "--short"), ("docker-compose", "version")):
        result = run(*args)
        found = _VERSION.search(result["stdout"]) if result["ok"] else None
        if found:
            return {"ok": True, "stdout": found.group(1)}
        if first is None:
            first = result if not result["ok"] else {"ok": False, "error": "no version in its output"}
    return first or {"ok": False, "error": "not found"}


def docker() -> dict[str, Any]:
    engine = run("docker", "version", "--format", "{{.Server.Version}}")
    compose = compose_version()
    runtimes = run("docker", "info", "--format", "{{json .Runtimes}}")
    out: dict[str, Any] = {
        "engine": engine.get("stdout") if engine["ok"] else None,
        "compose": compose.get("stdout") if compose["ok"] else None,
        "runtimes": sorted(json.loads(runtimes["stdout"]).keys()) if runtimes["ok"] and
        runtimes["stdout"].startswith("{") else None,
    }
    problems = {name: r.get("missing") or r.get("error") for name, r in
                (("engine", engine), ("compose", compose), ("runtimes", runtimes)) if not r["ok"]}
    if problems:
        out["problems"] = problems
    return out


def nvidia() -> dict[str, Any]:
    smi = run("nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,uuid",
              "--format=csv,noheader,nounits")
    if smi["ok"]:
        gpus = []
        for line in smi["stdout"].splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 5:
                gpus.append({"index": int(parts[0]), "name": parts[1], "driver": parts[2],
                             "memory_mib": int(float(parts[3])), "uuid": parts[4]})
        return {"source": "nvidia-smi", "driver": gpus[0]["driver"] if gpus else None, "gpus": gpus}
    nvml = _nvml()
    if nvml is not None:
        return {"source": "nvml", **nvml, "nvidia_smi": smi.get("missing") or smi.get("error")}
    return {"source": None, "driver": None, "gpus": [],
            "problem": f"nvidia-smi: {smi.get('missing') or smi.get('error')}; NVML: not available"}


def _nvml() -> dict[str, Any] | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(handle),
                         "driver": driver,
                         "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
                         "uuid": pynvml.nvmlDeviceGetUUID(handle)})
        return {"driver": driver, "gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


def nvidia_ctk() -> dict[str, Any]:
    r = run("nvidia-ctk", "--version")
    if not r["ok"]:
        return {"version": None, "problem": r.get("missing") or r.get("error")}
    first = r["stdout"].splitlines()[0] if r["stdout"] else ""
    return {"version": first.replace("NVIDIA Container Toolkit CLI version", "").strip() or first}


def cdi_device_names(spec: dict[str, Any]) -> list[str]:
    kind = spec.get("kind", "")
    return [f"{kind}={d['name']}" for d in spec.get("devices", []) if isinstance(d, dict) and "name" in d]


def read_cdi_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        return {"path": str(path), "error": exc.strerror or str(exc)}
    try:
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as exc:  # a broken spec is reported, not raised
        return {"path": str(path), "error": f"unreadable spec: {exc}"}
    if not isinstance(spec, dict):
        return {"path": str(path), "error": "not a CDI spec"}
    return {"path": str(path), "kind": spec.get("kind"), "cdi_version": spec.get("cdiVersion"),
            "devices": cdi_device_names(spec)}


def cdi_specs() -> dict[str, Any]:
    specs, searched = [], []
    for folder in cdi_dirs():
        searched.append(str(folder))
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in (".yaml", ".yml", ".json"):
                    specs.append(read_cdi_spec(path))
    return {"searched": searched, "specs": specs,
            "devices": sorted({d for s in specs for d in s.get("devices", [])})}


def user() -> dict[str, Any]:
    uid = os.getuid()
    groups = []
    for gid in os.getgroups():
        try:
            groups.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            groups.append(str(gid))
    return {"uid": uid, "root": uid == 0, "groups": sorted(set(groups)),
            "in_docker_group": "docker" in groups}


def is_secret(name: str) -> bool:
    return name in SECRET_NAMES or any(h in name.upper() for h in SECRET_HINTS)


def environment() -> dict[str, str]:
    from dreamforge.settings import mask_url

    out = {}
    for name in sorted(os.environ):
        if name.startswith(("DF_", "NVIDIA_")):
            value = os.environ[name]
            out[name] = "***" if is_secret(name) and value else mask_url(value)
    return out


def artifact_store() -> dict[str, Any]:
    from dreamforge.artifact_store import make_artifact_store
    from dreamforge.errors import StorageError
    from dreamforge.settings import Settings

    try:
        store = make_artifact_store(Settings())
        store.check()
        return {"reachable": True, "store": store.describe()}
    except StorageError as exc:
        return {"reachable": False, "problem": exc.message}
    except Exception as exc:  # bad settings: report, never raise
        return {"reachable": False, "problem": f"{type(exc).__name__}: {exc}"}


def inspect() -> dict[str, Any]:
    return {"os": os_info(), "container": in_container(), "docker": docker(), "nvidia": nvidia(),
            "nvidia_container_toolkit": nvidia_ctk(), "cdi": cdi_specs(), "user": user(),
            "artifact_store": artifact_store(), "environment": environment()}
