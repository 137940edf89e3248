#!/usr/bin/env bash
# One-shot GPU session for issue 3. Usage, from the repository root on a machine with an NVIDIA
# GPU and a CUDA build of torch:
#   bash benchmarks/run_gpu.sh [STAGE ...]     (default: all stages, in this order)
# Stages: build (pip install -e .), kernel (standalone CMake kernel test), tests (GPU tests),
# sanitizer (compute-sanitizer on the standalone test and a small torch run), tune (each shipped
# Triton config timed at N=M=1024), bench (GPU benchmarks), profile (Nsight Compute profile of the
# measured-best forward and atomics backward at N=M=1024). Results land in benchmarks/results/:
# JSON lines with device, commit and date, pytest-benchmark's JSON and the log of the run
# (gpu_run_<date>.log: every stage's whole output; the console shows its last lines).
# TGFR_COMMIT names the measured commit where the tree's .git may be stale (a copied tree); with
# $OUT set to a folder, the results files the run wrote are copied there after each stage and when
# the run is stopped (TERM, INT), so a stage past a time limit keeps the others' results.
# TGFR_BENCH_MAX_SIZE caps the N=M sweep (default 16384); TGFR_BENCH_MAX_CASE_S skips a case whose
# predicted cost (its steps, extrapolated from the previous size) is over it (default 120 s);
# TGFR_BENCH_DEADLINE_S skips the cases that would not finish that many seconds after the bench
# stage's start (default 420; a case with nothing to extrapolate from counts TGFR_BENCH_FIRST_CASE_S,
# default 60); both inf for the whole sweep. TGFR_BENCH_SELECT is passed to the bench stage's pytest
# as -k (e.g. "bfloat16 and 1024 and not reference" for the issue's case without the reference,
# measured at ae89997: forward 252 ms, forward+backward out of memory on an H100).
# Dependencies: every stage but kernel needs build to have run first on the same machine (a fresh
# machine has no tgfr installed); sanitizer runs kernel first when its test binary is missing.
# Time: tune compiles every shipped config, then times them for at most 300 s; bench starts no case
# predicted to end past TGFR_BENCH_DEADLINE_S; build, kernel, tests, sanitizer and profile each
# take minutes (compilation, ncu's replays). A whole run does not fit one 600 s call; split it
# into calls on one warm machine, in this order (a fresh machine's first call starts with build):
#   bash benchmarks/run_gpu.sh build kernel tests sanitizer
#   TGFR_BENCH_DEADLINE_S=360 bash benchmarks/run_gpu.sh bench profile
#   bash benchmarks/run_gpu.sh tune
# Every stage runs even if an earlier one failed; the exit status is 1 if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
mkdir -p "$results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logfile="$results/gpu_run_$stamp.log"
# Straight into the log, no `tee` in a pipe: a time limit's TERM goes to the whole process group,
# and a killed tee loses what the stage printed that it had not read yet.
log() { echo "== $*" >>"$logfile"; echo "== $*"; }
# A stage's whole output goes to the log (which comes back in $OUT), only its last lines to the
# console. Unbuffered Python, so that a stage stopped by TERM has logged all it printed.
export PYTHONUNBUFFERED=1
logged() {  # logged LINES COMMAND...: the command's output, its last LINES lines on the console
  local lines=$1 start status
  shift
  start=$(($(wc -c <"$logfile") + 1))
  "$@" >>"$logfile" 2>&1
  status=$?
  tail -c "+$start" "$logfile" | tail -n "$lines"
  return "$status"
}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build kernel tests sanitizer tune bench profile)

build() {
  logged 5 pip install --no-build-isolation --no-deps -e . \
    && logged 5 python -c "import tgfr.ops; print('backends:', tgfr.ops.available_backends())"
}

kernel() {
  logged 5 cmake -S . -B build/cmake -DTGFR_KERNELS_ONLY=ON -DTGFR_BUILD_KERNEL_TEST=ON \
    && logged 5 cmake --build build/cmake -j"$(nproc)" \
    && logged 20 ./build/cmake/word_region_kernel_test
}

# Without CUDA (a CPU torch, a driver fault) or without the GPU backends built, every GPU test and
# benchmark is skipped and pytest exits 0: a stage that measured nothing would pass.
require_gpu() {
  logged 3 python -c 'import sys, torch, tgfr.ops
backends = tgfr.ops.available_backends()
missing = [name for name in ("cuda", "triton") if name not in backends]
if not torch.cuda.is_available() or missing:
    sys.exit(f"no GPU to run on: torch.cuda.is_available() is {torch.cuda.is_available()}, backends {backends}")'
}

tests() {
  # Every gpu-marked test, wherever it is (a list of files missed one added later); CI runs the rest
  # (interpreted Triton, the nvcc build checks).
  require_gpu && logged 30 python -m pytest -q -m gpu -p no:cacheprovider tests/
}

sanitizer() {
  local small_run='import torch, tgfr.ops
w = torch.randn(5, 7, 40, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(6, 23, 40, device="cuda", dtype=torch.bfloat16, requires_grad=True)
lengths = torch.tensor([1, 7, 3, 5, 2], device="cuda")
for backend in [b for b in ("cuda", "triton") if b in tgfr.ops.available_backends()]:
    tgfr.ops.word_region_scores(w, lengths, v, backend=backend).sum().backward()
torch.cuda.synchronize(); print("sanitized run done")'
  local tool status=0
  # build/ is not part of a copied tree: a fresh machine has no kernel test binary yet.
  [ -x ./build/cmake/word_region_kernel_test ] || kernel || status=1
  for tool in memcheck racecheck; do
    logged 3 compute-sanitizer --tool "$tool" --error-exitcode 1 ./build/cmake/word_region_kernel_test || status=1
  done
  # torch's caching allocator hands out slices of larger blocks: an access past a tensor's end
  # stays inside the block, where memcheck cannot see it.
  logged 3 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
    python -c "$small_run" || status=1
  return "$status"
}

tune() {
  local gpu
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
  logged 40 python -m benchmarks.tune_word_region_triton --out "$results/word_region_triton_configs_$gpu.jsonl"
}

bench() {
  require_gpu && logged 60 python -m pytest -q -rs -m gpu benchmarks/test_word_region_gpu.py -p no:cacheprovider \
    ${TGFR_BENCH_SELECT:+-k "$TGFR_BENCH_SELECT"} --benchmark-json="$results/word_region_gpu_$stamp.json"
}

profile() {
  local gpu
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
  logged 20 python -m benchmarks.profile_word_region_triton --out "$results/word_region_ncu_$gpu.jsonl"
}

for stage in "${stages[@]}"; do
  case "$stage" in
    build|kernel|tests|sanitizer|tune|bench|profile) ;;
    *) echo "unknown stage '$stage' (build, kernel, tests, sanitizer, tune, bench, profile)" >&2; exit 2 ;;
  esac
done
started=$(mktemp)
# On a lent machine whose $OUT folder comes back (benchmarks' device tool): the files this run wrote.
collect() {
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    find "$results" -maxdepth 1 -type f -newer "$started" -exec cp {} "$OUT"/ \;
  fi
}
# A run stopped by a time limit: what the finished stages and the running one wrote still comes back,
# and the console shows the stopped stage's last lines (logged() prints them only when a stage ends).
stopped() {
  tail -n 20 "$logfile"
  log "stopped"
  collect
  rm -f "$started"
  exit "$1"
}
trap 'stopped 143' TERM
trap 'stopped 130' INT
log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if [ -z "${TGFR_COMMIT:-}" ]; then
  log "WARNING: TGFR_COMMIT is unset: results name the commit of this tree's .git" \
    "($(git rev-parse --short=12 HEAD 2>/dev/null || echo 'none: unknown')), which a copied tree may carry stale;" \
    "set TGFR_COMMIT=<measured commit>" >&2
fi
failed=()
for stage in "${stages[@]}"; do
  log "$stage"
  "$stage" || failed+=("$stage")
  collect
done
if [ ${#failed[@]} -gt 0 ]; then
  log "failed stages: ${failed[*]}"
fi
log "done: $results"
collect
rm -f "$started"
[ ${#failed[@]} -eq 0 ]
