#!/usr/bin/env bash
# The wheels the lent GPU machine (kind nvidia-h200: Python 3.12, torch 2.11, transformers 5.17,
# no package registry) lacks for `benchmarks/gpu_compiled.py` (the fp8 variant too) and
# `benchmarks/overlap.py --sdxl full` (a real `df worker` on SQLite and a folder store).
# Run HERE, from the repository root; the device call then names `.whl` in carry.
#
#   benchmarks/gpu_wheels.sh                                   # cp312 wheels into .whl/
#   benchmarks/gpu_wheels.sh --python-version 3.11 --dest /tmp/whl311   # for the CPU check here
#
# The set was read off what those programs import (python -X importtime, the worker's child
# process included), less what the machine's image holds (/work/.library/device/KINDS.md):
#   DreamForge itself   pydantic, pydantic-core, annotated-types, typing-inspection (pydantic's
#                       needs), pydantic-settings, python-dotenv (imported by pydantic-settings),
#                       sqlalchemy (job store; its greenlet is only for asyncio, not imported),
#                       huey (queue), isal (PNG deflate), alembic + mako (the SQLite job store is
#                       migrated when overlap.py opens it)
#   the SDXL runner     diffusers 0.42.1 (the machine's huggingface-hub 1.33 and safetensors 0.8
#                       meet its >=1.32 and >=0.8; its importlib_metadata is only imported below
#                       Python 3.8)
#   DF_FP8=1            torchao
# Not carried, on purpose: transformers 5.24.0 (the machine's 5.17.0 builds and runs every model
# the runner makes; the pin only keeps dev machines on one tested version), torchsde + trampoline
# (only the dpmpp_sde_karras scheduler, which neither benchmark uses: the runner refuses it
# with a clear error), boto3, redis, psycopg, starlette, uvicorn (S3, Redis, PostgreSQL and the
# HTTP server: neither benchmark starts them; huey and accelerate import redis/boto3 only if present).
#
# spare/ holds wheels of packages the machine HAS, in a version nobody has read there, where our
# pins or our carried wheels' need a recent one: gpu_session.sh installs a spare only when the
# machine's own version misses the requirement, so the README's `.whl/*.whl` line stays exact.
set -euo pipefail

python_version=3.12
dest=.whl
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) python_version="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    *) echo "usage: $0 [--python-version 3.12] [--dest .whl]" >&2; exit 2 ;;
  esac
done
if [ ! -f pyproject.toml ] || [ ! -d dreamforge ]; then echo "run from the repository root" >&2; exit 2; fi

# One version of each; each satisfies pyproject.toml (diffusers==0.42.1, the fp8 extra's
# torchao>=0.18) and is the version the dev venv runs its tests with.
WHEELS=(
  diffusers==0.42.1
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  pydantic-settings==2.16.3
  python-dotenv==1.2.4
  sqlalchemy==2.1.9
  huey==3.5.4
  isal==1.9.1
  alembic==1.20.1
  mako==1.4.3
  torchao==0.18.0
)
# name==version of the spare, and the requirement the machine's own version must meet.
SPARES=(
  "typer==0.29.2"              # pyproject: typer>=0.29,<0.30 (df worker's CLI)
  "typing-extensions==4.16.0"  # pydantic 2.14.4 and pydantic-core 2.50.5: >=4.16.0
)

if [ "$dest" = .whl ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fi
mkdir -p "$dest/spare"

abi="cp${python_version/./}"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done

# A wheel's file name starts with its name normalised (PEP 427: runs of -_. become _), any case.
wheel_prefix() { local n="${1%%==*}"; n="${n//[-.]/_}"; echo "${n,,}-${1##*==}-"; }
# This host's pip configuration names local index folders that may not exist: a warning per package.
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; }
has_wheel() { [ -n "$(find "$1" -maxdepth 1 -type f -iname "$2*.whl")" ]; }  # folder prefix

fetch() {  # spec folder
  local spec="$1" into="$2" prefix
  prefix="$(wheel_prefix "$spec")"
  # Another version of the same package stops the whole install there: drop it first.
  find "$into" -maxdepth 1 -type f -iname "${prefix%%-*}-*" ! -iname "${prefix}*.whl" -print -delete
  if has_wheel "$into" "$prefix"; then return; fi
  if ! python3 -m pip download -q --no-deps --no-cache-dir --only-binary=:all: --python-version "$python_version" \
         --implementation cp --abi "$abi" --abi abi3 --abi none "${platforms[@]}" -d "$into" "$spec" 2>&1 | quiet; then
    # Published as a source archive only: build its pure-Python wheel here, still alone.
    echo "no wheel of $spec for $abi; building one from its source archive" >&2
    python3 -m pip wheel -q --no-deps --no-cache-dir --no-build-isolation --no-binary :all: -w "$into" "$spec" 2>&1 | quiet
  fi
  has_wheel "$into" "$prefix" || { echo "FAILED: no wheel of $spec in $into" >&2; exit 1; }
}

for spec in "${WHEELS[@]}"; do fetch "$spec" "$dest"; done
for spare in "${SPARES[@]}"; do fetch "${spare%% *}" "$dest/spare"; done

# Nothing but the wheels asked for: a stray download (a source archive, an old version) goes.
remove_strays() {  # folder spec...: what in the folder is no wheel of a spec (the spare folder aside)
  local into="$1" f base keep prefix spec prefixes=()
  shift
  for spec in "$@"; do prefixes+=("$(wheel_prefix "$spec")"); done
  for f in "$into"/*; do
    [ "$into" = "$dest" ] && [ -d "$f" ] && continue
    base="$(basename "$f")"; keep=
    for prefix in "${prefixes[@]}"; do
      if [[ "${base,,}" == "${prefix}"*.whl ]]; then keep=1; fi
    done
    [ -n "$keep" ] || { echo "removing stray $f" >&2; rm -rf -- "$f"; }
  done
}
remove_strays "$dest" "${WHEELS[@]}"
spare_specs=()
for spare in "${SPARES[@]}"; do spare_specs+=("${spare%% *}"); done
remove_strays "$dest/spare" "${spare_specs[@]}"

echo "wheels in $dest (Python $python_version):"
(cd "$dest" && find . -name '*.whl' -printf '%s %P\n' | sort -k2 | awk '{printf "  %7.0fK  %s\n", $1 / 1024, $2}')
wheels_bytes=$(du -cb "$dest"/*.whl "$dest"/spare/*.whl | tail -1 | cut -f1)

# What a device call sends: tracked and untracked-not-ignored files, shared/ if the checkout has
# one, and the carried .whl. The limit is 64 MiB for all of it together.
tree_bytes=$( { git ls-files -z --cached --others --exclude-standard; \
                if [ -d shared ]; then find shared -type f -print0; fi; } | sort -zu | \
              xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
total=$((tree_bytes + wheels_bytes))
awk -v w="$wheels_bytes" -v t="$tree_bytes" 'BEGIN {
  printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB carried (limit 64 MiB)\n",
         w / 1048576, t / 1048576, (w + t) / 1048576 }'
if [ "$total" -gt "$limit" ]; then
  echo "OVER THE 64 MiB LIMIT: the device call would be refused" >&2
  exit 1
fi
