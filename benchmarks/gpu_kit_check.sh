#!/usr/bin/env bash
# Proof, on this CPU machine, that gpu_wheels.sh's set is complete: a bare virtual environment
# (no system site-packages) holding ONLY what the GPU machine's image has and the benchmarks rely
# on, plus the carried wheels installed with the device README's own line, runs
#   benchmarks/gpu_compiled.py --cpu-smoke --budget-s 300
#   benchmarks/overlap.py --sdxl tiny --size 64 --steps 4 --jobs 2 --singles 1
# to the end, and then runs gpu_session.sh itself the same way (GPU_SESSION_SMOKE=1). Python 3.11
# here (the machine has 3.12), so the wheels are fetched for 3.11.
#
#   benchmarks/gpu_kit_check.sh        # from the repository root; about 10 minutes, ~1.5 GB in /tmp
#
# The image's packages stand in as: torch 2.13.0+cpu from the local wheel (theirs is 2.11.0+cu130),
# the versions KINDS.md read there (transformers 5.17.0, huggingface-hub 1.33.0, tokenizers 0.23.2,
# accelerate 1.15.0, safetensors 0.8.0, numpy 2.5.2 where this Python has it) and, for the names
# it lists without a version, the dev venv's. Writes docs/measurements/gpu-kit-cpu-check.log.
set -euo pipefail
if [ ! -f pyproject.toml ] || [ ! -d dreamforge ]; then echo "run from the repository root" >&2; exit 2; fi

venv=/tmp/gpukit-venv   # the stand-in for the machine's image
site=/tmp/gpukit-site   # the stand-in for the device's /tmp/site
whl=/tmp/whl311         # the carried wheels, built for this Python
log=docs/measurements/gpu-kit-cpu-check.log
torch_wheel=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

# Each a name on KINDS.md's list of the image's packages, and each something the benchmarks
# import or an installed package needs (pip check below names any left out).
IMAGE=(
  transformers==5.17.0 huggingface-hub==1.33.0 tokenizers==0.23.2 accelerate==1.15.0 safetensors==0.8.0
  peft==0.21.2 pillow==13.0.0 scipy==1.17.1 typer==0.29.2 click==8.5.1 rich==15.0.0 shellingham==1.5.4
  annotated-doc==0.0.7 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 pyyaml==6.0.4
  prometheus-client==0.26.0 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 sniffio==1.3.1
  idna==3.20 certifi==2026.10.19.post1 requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3
  hf-xet==1.8.0 filelock==4.3.1 fsspec==2026.9.0 packaging==26.4 psutil==7.2.2 tqdm==4.70.1
  regex==2026.11.19 jinja2==3.1.6 markupsafe==3.0.4 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1
  setuptools==84.2.1 typing-extensions==4.16.0
)

mkdir -p "$(dirname "$log")"
exec > >(tee "$log") 2>&1
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }  # this host's pip config
echo "== $(date -u +%FT%TZ) · $(uptime | sed 's/.*load/load/') · commit $(git rev-parse --short HEAD)"

echo "== the image's stand-in: a bare venv at $venv"
rm -rf "$venv" "$site"
/usr/bin/python3.11 -m venv "$venv"
py="$venv/bin/python3"
"$py" -m pip install -q --no-index --no-deps --no-cache-dir "$torch_wheel" 2>&1 | quiet
if ! "$py" -m pip install -q --no-deps --no-cache-dir numpy==2.5.2 2>&1 | quiet; then
  echo "numpy 2.5.2 has no wheel for Python 3.11: the dev venv's numpy stands in"
  "$py" -m pip install -q --no-deps --no-cache-dir numpy==2.4.6 2>&1 | quiet
fi
"$py" -m pip install -q --no-deps --no-cache-dir "${IMAGE[@]}" 2>&1 | quiet

echo "== the carried wheels, for Python 3.11"
rm -rf "$whl"
bash benchmarks/gpu_wheels.sh --python-version 3.11 --dest "$whl" 2>&1 | quiet

echo "== installed with the device README's line"
# Exactly the README's line, with this check's folders for .whl and /tmp/site.
unset PYTHONHOME
export PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1 PATH="$venv/bin:$PATH"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$whl"/*.whl
export PYTHONPATH="$site"
spare=$(python3 benchmarks/gpu_kit_versions.py spares "$whl/spare")
if [ -n "$spare" ]; then
  # shellcheck disable=SC2086  # one path a line, no spaces
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $spare
fi
python3 -c 'import dreamforge, sys; print("dreamforge from", dreamforge.__file__, "·", sys.prefix)'
echo "== pip check (requirements unmet in this environment; not every one is imported)"
python3 -m pip check 2>&1 | quiet || true
python3 benchmarks/gpu_kit_versions.py report

echo "== python benchmarks/gpu_compiled.py --cpu-smoke --budget-s 300"
python3 benchmarks/gpu_compiled.py --cpu-smoke --budget-s 300
echo "== python benchmarks/overlap.py --sdxl tiny --size 64 --steps 4 --jobs 2 --singles 1"
python3 benchmarks/overlap.py --sdxl tiny --size 64 --steps 4 --jobs 2 --singles 1
echo "== both ran to the end · $(date -u +%FT%TZ) · $(uptime | sed 's/.*load/load/')"

# The device command's own plumbing (install into a fresh site, spares, versions, the order, the
# budget arithmetic, the logs in $OUT and its exit code), with the tiny model and three variants.
echo "== GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh (into a fresh site and OUT)"
rm -rf /tmp/gpukit-session-site /tmp/gpukit-session-out
rc=0
(unset PYTHONPATH
 GPU_SESSION_SMOKE=1 GPU_SESSION_WHEELS="$whl" GPU_SESSION_SITE=/tmp/gpukit-session-site \
   VARIANTS=eager,fp8,vae-fp16 OUT=/tmp/gpukit-session-out bash benchmarks/gpu_session.sh >/dev/null) || rc=$?
echo "gpu_session.sh exit $rc; its \$OUT: $(cd /tmp/gpukit-session-out && echo *)"
echo "== gpu_session.sh's log:"
cat /tmp/gpukit-session-out/session.log
[ "$rc" = 0 ] || { echo "== gpu_session.sh FAILED"; exit 1; }
echo "== the kit checked · $(date -u +%FT%TZ) · $(uptime | sed 's/.*load/load/')"
