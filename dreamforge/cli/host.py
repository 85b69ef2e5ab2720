"""``df env inspect`` and ``df gpu cdi-generate``: the host side of running workers in containers."""


import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from dreamforge.cli.common import EXIT_FAILED, EXIT_USAGE, TYPER_OPTIONS, console, fail, note, print_json
from dreamforge.text import inert

env_app = typer.Typer(help="The host and container context.", **TYPER_OPTIONS)
gpu_app = typer.Typer(help="GPU access for containers (CDI).", **TYPER_OPTIONS)

INSTALL_HINT = ("install the NVIDIA Container Toolkit "
                "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/"
                "install-guide.html), "
                "then run this again")


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    """Label and value columns, the labels padded to the longest so that no value touches one.
    Values come from tools, spec files and the environment: shown inert."""
    from rich.text import Text

    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        console.print(Text(f"{label + ':':<{width}}{inert(value)}"))


@env_app.command("inspect")
def inspect(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """OS, Docker and Compose, runtimes, NVIDIA driver and GPUs, nvidia-ctk, CDI specs, groups and
    DF_*/NVIDIA_* variables (secrets masked). Missing pieces are reported; this always exits 0."""
    from dreamforge import hostinfo

    info = hostinfo.inspect()
    if as_json:
        print_json(info)
        return
    rows: list[tuple[str, Any]] = []

    def _line(label: str, value: Any) -> None:
        rows.append((label, value))

    o, d, n = info["os"], info["docker"], info["nvidia"]
    _line("os", f"{o.get('distribution') or o['system']} · kernel {o['kernel']} · {o['machine']}")
    _line("inside a container", "yes (" + ", ".join(info["container"]["evidence"]) + ")"
          if info["container"]["inside"] else "no")
    _line("docker engine", d["engine"] or f"missing ({d.get('problems', {}).get('engine')})")
    _line("docker compose", d["compose"] or f"missing ({d.get('problems', {}).get('compose')})")
    _line("docker runtimes", ", ".join(d["runtimes"]) if d["runtimes"] else "unknown")
    if n["gpus"]:
        _line("nvidia driver", f"{n['driver']} (via {n['source']})")
        for g in n["gpus"]:
            _line(f"  gpu {g['index']}", f"{g['name']} · {g['memory_mib']} MiB · {g['uuid']}")
    else:
        _line("nvidia driver", f"missing ({n.get('problem')})")
    ctk = info["nvidia_container_toolkit"]
    _line("nvidia-ctk", ctk["version"] or f"missing ({ctk.get('problem')})")
    cdi = info["cdi"]
    if cdi["specs"]:
        for spec in cdi["specs"]:
            devices = ", ".join(spec.get("devices", [])) or spec.get("error", "")
            _line("cdi spec", f"{spec['path']}: {devices}")
    else:
        _line("cdi specs", "none under " + " and ".join(cdi["searched"]) + " (run `df gpu cdi-generate`)")
    u = info["user"]
    _line("user", f"uid {u['uid']}{' (root)' if u['root'] else ''} · groups {', '.join(u['groups']) or '-'}")
    store = info["artifact_store"]
    _line("artifact store", store.get("store") if store["reachable"] else f"unreachable ({store['problem']})")
    for name, value in info["environment"].items():
        _line(f"  {inert(name)}", value)
    _print_rows(rows)


def spec_devices(path: Path) -> list[str]:
    from dreamforge import hostinfo

    spec = hostinfo.read_cdi_spec(path)
    if "error" in spec:
        fail(f"nvidia-ctk ran, but its spec at {path} could not be read: {spec['error']}", EXIT_FAILED)
    return spec["devices"]


@gpu_app.command("cdi-generate")
def cdi_generate(
    output: Annotated[Path, typer.Option(help="Where to write the CDI spec.")] = Path("/etc/cdi/nvidia.yaml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands, run nothing.")] = False,
) -> None:
    """Write the CDI spec for this host's GPUs with `nvidia-ctk cdi generate`, then list its devices."""
    from rich.text import Text

    if shutil.which("nvidia-ctk") is None:
        fail(f"nvidia-ctk not found on PATH: {INSTALL_HINT}", EXIT_USAGE)
    command = ["nvidia-ctk", "cdi", "generate", "--output-file", str(output)]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            fail("writing the CDI spec needs root, and sudo is not available: run this as root", EXIT_USAGE)
        command = ["sudo", *command]
        note("not root: running nvidia-ctk through sudo")
    if dry_run:
        typer.echo(" ".join(command))
        typer.echo(f"nvidia-ctk cdi list  # then: the devices named in {output}")
        return
    done = subprocess.run(command, capture_output=True, text=True)  # noqa: S603 - a fixed argv, no shell
    if done.returncode != 0:
        fail(f"`{' '.join(command)}` failed (exit {done.returncode}): "
             f"{(done.stderr or done.stdout).strip()[-500:]}", EXIT_FAILED)
    devices = spec_devices(output)
    console.print(Text(f"wrote {inert(output)}"))
    for name in devices:
        console.print(Text(inert(name)))
    if not devices:
        fail(f"{output} names no devices: is the NVIDIA driver loaded?", EXIT_FAILED)
