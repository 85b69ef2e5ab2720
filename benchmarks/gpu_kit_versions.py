"""What the GPU kit runs on: the versions of the packages the GPU benchmarks import, and whether
each meets what pyproject.toml and the installed packages ask of it.

The lent machine's image holds most of them in versions nobody has read before the first call
there (KINDS.md lists names only), so this is read first and printed into the log:

    python3 benchmarks/gpu_kit_versions.py report          # versions, and any requirement missed
    python3 benchmarks/gpu_kit_versions.py spares .whl/spare   # the spare wheels to install

``spares`` prints the path of each spare wheel (gpu_wheels.sh's spare/) whose package is missing
here or misses a requirement on it, one a line: the caller installs those over the machine's own.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

# What gpu_compiled.py and overlap.py --sdxl (with its df worker and the worker's runner child)
# import, read off `python -X importtime`; plus triton, which torch.compile uses on CUDA.
RELIED = """torch triton transformers diffusers accelerate peft safetensors huggingface-hub tokenizers
numpy scipy pillow typer click rich shellingham annotated-doc pyyaml httpx prometheus-client pydantic
pydantic-core pydantic-settings python-dotenv typing-extensions typing-inspection annotated-types
sqlalchemy huey isal alembic mako markupsafe jinja2 torchao regex requests filelock fsspec packaging
psutil tqdm""".split()


def installed(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def requirements() -> list[tuple[str, Requirement]]:
    """(who asks, requirement) from pyproject.toml (core, diffusers and fp8) and from the
    non-extra requirements of every relied-on package installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("pyproject", Requirement(r)) for r in project["dependencies"]]
    for extra in ("diffusers", "fp8"):
        found += [(f"pyproject[{extra}]", Requirement(r)) for r in project["optional-dependencies"][extra]]
    for name in RELIED:
        dist = installed(name)
        if dist is None:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                found.append((f"{name} {dist.version}", req))
    return found


def missed(name: str, asks: list[tuple[str, Requirement]]) -> list[str]:
    """Who asks for a version of ``name`` that the installed one doesn't meet."""
    dist = installed(name)
    wanted = [(who, req) for who, req in asks if canonicalize_name(req.name) == canonicalize_name(name)]
    if dist is None:
        return [f"{who} wants {req}" for who, req in wanted] or ["not installed"]
    version = Version(dist.version)
    return [f"{who} wants {req}" for who, req in wanted if not req.specifier.contains(version, prereleases=True)]


def report() -> None:
    asks = requirements()
    print(f"Python {sys.version.split()[0]} at {sys.executable}")
    for name in RELIED:
        dist = installed(name)
        where = "-" if dist is None else str(Path(str(dist.locate_file(""))))
        problems = missed(name, asks) if dist is not None else ["NOT INSTALLED"]
        print(f"  {name:<20} {dist.version if dist else '-':<16} {where:<45} {'; '.join(problems)}")
    print("(a pin missed above is a finding to note, not an error: the machine's image runs its own versions)",
          flush=True)


def spares(folder: Path) -> None:
    asks = requirements()
    for wheel in sorted(folder.glob("*.whl")):
        name = re.split(r"-\d", wheel.name, maxsplit=1)[0]
        problems = missed(name, asks)
        if problems:
            print(f"spare {wheel.name}: {'; '.join(problems)}", file=sys.stderr)
            print(wheel)
        else:
            print(f"spare {wheel.name}: not needed, {name} {md.version(name)} is here", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("report", "spares"))
    parser.add_argument("folder", nargs="?", type=Path, default=Path(".whl/spare"))
    args = parser.parse_args()
    if args.what == "report":
        report()
    else:
        spares(args.folder)


if __name__ == "__main__":
    main()
