#!/usr/bin/env bash
# GPU check, for the lent GPU machine (H100/H200): builds moex with CUDA for the card
# present, runs the CUDA tests (ctest label `gpu`) and the GPU benchmarks, and prints the
# figures to copy into docs/PERFORMANCE.md. Budget: under 8 minutes.
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${arch:-90}
# The device machine may lack the Debian packages; install what is missing.
bash scripts/setup.sh
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMOEX_BUILD_BENCH=ON >/dev/null
cmake --build build/gpu -j "$(nproc)"
echo "--- CUDA tests (label gpu) ---"
ctest --test-dir build/gpu -L gpu --output-on-failure
echo "--- full suite on the GPU machine ---"
ctest --test-dir build/gpu -j "$(nproc)" 2>&1 | tail -3
echo "--- CPU kernel benchmarks on this host (for comparison) ---"
build/gpu/bench/moex_kernels_bench --benchmark_min_time=0.2 --benchmark_filter='MemoryRead|MatVec/.*/1/' || true
