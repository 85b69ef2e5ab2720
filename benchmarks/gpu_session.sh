#!/usr/bin/env bash
# The ONE command of a session lent the nvidia-h200 machine (docs/measurements/GPU-SESSION.md):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# after benchmarks/gpu_wheels.sh filled .whl here. Installs the carried wheels as the device
# README says, prints the GPU and the versions, then runs
#   1. benchmarks/overlap.py --sdxl full --jobs 6 --singles 2     (about 170 s, capped at 240 s)
#   2. benchmarks/gpu_compiled.py --budget-s <what is left less 120 s of headroom>
# and ends by about 545 s, inside the call's 600. Every log is tee'd into $OUT (7 files).
#
# Why overlap.py first: it prints a row only when a worker round is done, so cut short it gives
# little, and it has no budget of its own (only --job-timeout-s); its cost is fixed (one model save, one bare
# model, two worker starts, 6 + 2 jobs each: ~170 s on an H100's figures in gpu-sdxl-h100-run*.log).
# gpu_compiled.py is the elastic one: it skips any variant that would end after --budget-s and
# writes its JSON after every variant, so it takes whatever time is left and loses at most the
# variant in flight. Its guess for a compiled variant is the largest compiled cost so far (a cold
# compile: 139 s on the H100, 40 s cache-warm), and 120 s of headroom stays for the variant in
# flight. With ~330 s left it runs eager and compiled (cold), and vae-fp16 if the
# compile is quick; the variants come in the order below, most wanted first.
#
# Knobs (environment): SKIP_OVERLAP=1 gives gpu_compiled.py all the time; VARIANTS=a,b,c (eager
# first); GPU_SESSION_END_S (545). GPU_SESSION_SMOKE=1 runs the same plumbing on a CPU with the
# tiny model (benchmarks/gpu_kit_check.sh uses it), with GPU_SESSION_WHEELS and GPU_SESSION_SITE
# standing in for .whl and /tmp/site.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if [ ! -f pyproject.toml ] || [ ! -d dreamforge ]; then echo "run from the repository root" >&2; exit 2; fi

smoke=${GPU_SESSION_SMOKE:-0}
wheels=${GPU_SESSION_WHEELS:-.whl}
site=${GPU_SESSION_SITE:-/tmp/site}
end_s=${GPU_SESSION_END_S:-545}
headroom_s=120
overlap_cap_s=240
variants=${VARIANTS:-eager,compiled,vae-fp16,fp8,reduce-overhead,flash,together,cudnn,efficient,max-autotune-no-cudagraphs}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
failed=()
step() { echo; echo "== [$SECONDS s] $*"; }

main() {
  step "install the carried wheels into $site"
  ls "$wheels"/*.whl >/dev/null || { echo "FATAL: no wheels in $wheels: run benchmarks/gpu_wheels.sh here first"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || { echo "FATAL: the wheels did not install"; exit 1; }
  export PYTHONPATH="$site"
  spare=$(python3 benchmarks/gpu_kit_versions.py spares "$wheels/spare") || { echo "FATAL: version check"; exit 1; }
  if [ -n "$spare" ]; then
    # shellcheck disable=SC2086  # one path a line, no spaces
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $spare \
      || { echo "FATAL: the spare wheels did not install"; exit 1; }
  fi

  step "the machine"
  if [ "$smoke" = 1 ]; then
    echo "GPU_SESSION_SMOKE=1: no GPU, the tiny model on the CPU" | tee "$OUT/nvidia-smi.txt"
  else
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/nvidia-smi.txt"
  fi
  nproc; free -g | head -2; df -h /tmp | tail -1
  python3 benchmarks/gpu_kit_versions.py report 2>&1 | tee "$OUT/versions.txt"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
              torch.cuda.get_device_name() if torch.cuda.is_available() else "-")' 2>&1 | tee -a "$OUT/versions.txt"

  if [ "${SKIP_OVERLAP:-0}" = 1 ]; then
    step "overlap.py skipped (SKIP_OVERLAP=1)"
  else
    if [ "$smoke" = 1 ]; then overlap_args=(--sdxl tiny --size 64 --steps 4 --jobs 2 --singles 1)
    else overlap_args=(--sdxl full --jobs 6 --singles 2 --job-timeout-s 200); fi
    step "python3 benchmarks/overlap.py ${overlap_args[*]} (at most ${overlap_cap_s} s)"
    since=$(date +%s)
    # timeout signals its whole process group: the df worker and its runner child end too.
    timeout -k 15 "$overlap_cap_s" python3 benchmarks/overlap.py "${overlap_args[@]}" 2>&1 | tee "$OUT/overlap-sdxl.log"
    rc=$?
    [ "$rc" = 0 ] || { failed+=("overlap.py exit $rc"); echo "!! overlap.py FAILED or was cut (exit $rc)"; }
    # The workers' own logs (overlap.py leaves each round's data folder in /tmp): the place to look
    # when a job failed.
    find /tmp -maxdepth 2 -path '/tmp/df-overlap-*/worker.log' -newermt "@$since" -print0 2>/dev/null \
      | xargs -0 -r -I{} sh -c 'echo "--- {}"; tail -c 2000000 "{}"' >"$OUT/overlap-workers.log"
  fi

  step "python3 benchmarks/gpu_compiled.py"
  budget_s=$((end_s - headroom_s - SECONDS))
  compiled_args=(--variants "$variants" --out "$OUT/gpu-compiled.json")
  if [ "$smoke" = 1 ]; then compiled_args+=(--cpu-smoke); fi
  if [ "$budget_s" -lt 60 ]; then
    echo "!! only $budget_s s of budget left: eager alone"
    budget_s=60
  fi
  kill_s=$((end_s + 30 - SECONDS))
  echo "--budget-s $budget_s, stopped after $kill_s s at the latest; variants $variants"
  timeout -k 10 "$kill_s" python3 benchmarks/gpu_compiled.py "${compiled_args[@]}" --budget-s "$budget_s" 2>&1 \
    | tee "$OUT/gpu-compiled.log"
  rc=$?
  [ "$rc" = 0 ] || { failed+=("gpu_compiled.py exit $rc"); echo "!! gpu_compiled.py FAILED or was cut (exit $rc)"; }

  step "end"
  [ "$smoke" = 1 ] || nvidia-smi --query-gpu=memory.used,temperature.gpu,clocks.sm --format=csv 2>&1
  ls -l "$OUT"
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "!! FAILED: ${failed[*]}"
    exit 1
  fi
  echo "all ran to the end in $SECONDS s"
}

main 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
