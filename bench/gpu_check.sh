#!/usr/bin/env bash
# GPU check, for the lent GPU machine (H100/H200): builds the CUDA kernels, their parity
# tests and benchmarks for the card present only (not the whole project), runs the tests
# (ctest label `gpu`) and the GPU benchmarks, and prints the figures as a table to copy
# into docs/PERFORMANCE.md. Budget: under 8 minutes on an H100 with 16 cores (the build
# is ~1-2 minutes of that, the benchmarks ~2).
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${arch:-90}
jobs=$(nproc)
# The device machine may lack the Debian packages; install what is missing.
bash scripts/setup.sh
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMOEX_BUILD_BENCH=ON >/dev/null
cmake --build build/gpu -j "$jobs" --target moex_cuda_tests moex_cuda_bench moex_kernels_bench

echo "--- CUDA tests (label gpu): every kernel against the CPU reference ---"
# Seeds are printed per test ([ seed ] lines); MOEX_TEST_SEED=<n> repeats one.
ctest --test-dir build/gpu -L gpu -j 4 --output-on-failure

echo "--- CUDA kernel benchmarks (sm_$arch) ---"
out=build/gpu/cuda_bench.json
build/gpu/bench/moex_cuda_bench --benchmark_min_time=0.2 --benchmark_out="$out" \
  --benchmark_out_format=json >/dev/null
if ! command -v python3 >/dev/null; then
  cat "$out"
else
  python3 - "$out" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"GPU benchmarks on {d['context'].get('host_name', '?')}, {d['context']['date']}")
print("| benchmark | type | GB/s | us/call |")
print("| --- | --- | ---: | ---: |")
for b in d["benchmarks"]:
    name = b["name"].replace("/manual_time", "")
    if "error_message" in b:
        print(f"| {name} | | error: {b['error_message']} | |")
        continue
    us = b.get("us/call", b["real_time"] if b.get("time_unit") == "us" else float("nan"))
    print(f"| {name} | {b.get('label', '')} | {b.get('GB/s', float('nan')):.1f} | {us:.1f} |")
EOF
fi

echo "--- CPU kernel benchmarks on this host (for comparison) ---"
build/gpu/bench/moex_kernels_bench --benchmark_min_time=0.2 --benchmark_filter='MemoryRead|MatVec/.*/1/' || true

# ---- calibration (another engineer's `moex calibrate`): runs only once that command exists.
if cmake --build build/gpu -j "$jobs" --target moex_cli >/dev/null 2>&1 &&
  build/gpu/tools/moex calibrate --help >/dev/null 2>&1; then
  echo "--- moex calibrate --json ---"
  build/gpu/tools/moex calibrate --json
fi
