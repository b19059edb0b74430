#!/usr/bin/env bash
# Builds the GPU check's programs HERE, for a GPU machine that has the CUDA toolkit but
# not the project's Debian packages and no network (the lent H100/H200 machines): a
# portable build (MOEX_NATIVE=OFF: the CPU kernels still pick AVX-512/AVX2 at run time)
# for one CUDA architecture, with the shared libraries it needs beside it (Abseil, TBB,
# hwloc, oneDNN, GoogleTest, Google Benchmark, libstdc++), stripped, in one folder that
# fits the device tool's 64 MiB. bench/gpu_check.sh runs from it:
#   bash bench/gpu_bundle.sh [ARCH=90] [DIR=.gpu]   # here
#   MOEX_GPU_BUNDLE=.gpu bash bench/gpu_check.sh     # there (carry DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-90}
dir=${2:-.gpu}
build=build/gpu$arch
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON -DMOEX_NATIVE=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMOEX_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target moex_cuda_tests moex_cuda_bench moex_kernels_bench \
  moex_cli moex_runtime_tests moex_api_tests

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib"
bins=("$build/tests/moex_cuda_tests" "$build/bench/moex_cuda_bench"
  "$build/bench/moex_kernels_bench" "$build/tools/moex" "$build/tests/moex_runtime_tests"
  "$build/tests/moex_api_tests")
for b in "${bins[@]}"; do
  strip -o "$dir/bin/$(basename "$b")" "$b"
done
# A/B builds of the GPU benchmarks with other GEMV unroll factors (kernels_cuda/matmul.cu),
# e.g. MOEX_GEMV_VARIANTS="1 2": bin/moex_cuda_bench_u1, _u2, which gpu_check.sh runs too.
for u in ${MOEX_GEMV_VARIANTS:-}; do
  cmake -S . -B "$build-u$u" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON -DMOEX_NATIVE=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMOEX_BUILD_BENCH=ON -DMOEX_BUILD_TESTS=OFF \
    -DCMAKE_CUDA_FLAGS="-DMOEX_GEMV_UNROLL=$u" >/dev/null
  cmake --build "$build-u$u" -j "$(nproc)" --target moex_cuda_bench
  strip -o "$dir/bin/moex_cuda_bench_u$u" "$build-u$u/bench/moex_cuda_bench"
done
# Every library the programs load except the C library's own (which the machine has, and
# which must match its loader).
for b in "${bins[@]}"; do ldd "$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*)\.so' |
  while read -r lib; do strip -o "$dir/lib/$(basename "$lib")" "$lib"; done
# The newest C library symbol version the programs need, to compare with the machine's.
need=$(for f in "$dir"/bin/* "$dir"/lib/*; do objdump -T "$f"; done | grep -o 'GLIBC_[0-9.]*' |
  sort -uV | tail -1)
echo "$need" >"$dir/GLIBC_NEEDED"
echo "bundle $dir: $(du -sh "$dir" | cut -f1), sm_$arch, needs $need"
