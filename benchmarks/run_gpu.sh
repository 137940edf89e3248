#!/usr/bin/env bash
# One-shot GPU session for issue 3: build with CUDA, run the GPU tests, compute-sanitizer on a
# small run, then the GPU benchmarks. Results land in benchmarks/results/ (JSON lines with device,
# commit and date, plus pytest-benchmark's JSON and the logs). Usage, from the repository root on
# a machine with an NVIDIA GPU and a CUDA build of torch:  bash benchmarks/run_gpu.sh
# TGFR_BENCH_MAX_SIZE caps the N=M sweep (default 16384); TGFR_BENCH_MAX_STEP_S skips sizes whose
# step would take longer (default 600 s, extrapolated from the previous size).
set -uo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
mkdir -p "$results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log() { echo "== $*" | tee -a "$results/gpu_run_$stamp.log"; }

log "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
log "build"
pip install --no-build-isolation --no-deps -e . 2>&1 | tail -5 | tee -a "$results/gpu_run_$stamp.log"
python -c "import tgfr.ops; print('backends:', tgfr.ops.available_backends())" | tee -a "$results/gpu_run_$stamp.log"

log "standalone kernel test (CMake)"
cmake -S . -B build/cmake -DTGFR_KERNELS_ONLY=ON -DTGFR_BUILD_KERNEL_TEST=ON >/dev/null \
  && cmake --build build/cmake -j"$(nproc)" >/dev/null \
  && ./build/cmake/word_region_kernel_test 2>&1 | tee -a "$results/gpu_run_$stamp.log"

log "GPU tests"
python -m pytest -q -m gpu tests/test_word_region_gpu.py tests/test_word_region_triton.py \
  tests/test_kernels_build.py 2>&1 | tail -30 | tee -a "$results/gpu_run_$stamp.log"

log "compute-sanitizer (memcheck, racecheck) on the standalone test and a small torch run"
sanitizer_run='import torch, tgfr.ops
w = torch.randn(5, 7, 40, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(6, 23, 40, device="cuda", dtype=torch.bfloat16, requires_grad=True)
lengths = torch.tensor([1, 7, 3, 5, 2], device="cuda")
for backend in [b for b in ("cuda", "triton") if b in tgfr.ops.available_backends()]:
    tgfr.ops.word_region_scores(w, lengths, v, backend=backend).sum().backward()
torch.cuda.synchronize(); print("sanitized run done")'
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 1 ./build/cmake/word_region_kernel_test 2>&1 | tail -3 \
    | tee -a "$results/gpu_run_$stamp.log"
done
compute-sanitizer --tool memcheck --error-exitcode 1 python -c "$sanitizer_run" 2>&1 | tail -3 \
  | tee -a "$results/gpu_run_$stamp.log"

log "benchmarks"
python -m pytest -q -m gpu benchmarks/test_word_region_gpu.py -p no:cacheprovider \
  --benchmark-json="$results/word_region_gpu_$stamp.json" 2>&1 | tail -60 | tee -a "$results/gpu_run_$stamp.log"
log "done: $results"
