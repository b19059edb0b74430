#!/usr/bin/env bash
# GPU check, for the lent GPU machine (H100/H200): builds the CUDA kernels, their parity
# tests and benchmarks for the card present only (not the whole project), runs the tests
# (ctest label `gpu`, and the CUDA device's own tests) and the GPU benchmarks, and prints
# the figures as a table to copy into docs/PERFORMANCE.md. Budget: under 8 minutes on an
# H100 with 16 cores (the build is ~1-2 minutes of that, the benchmarks ~2).
#   bash bench/gpu_check.sh                          # a machine with the project's packages
#   MOEX_GPU_BUNDLE=.gpu bash bench/gpu_check.sh     # programs from bench/gpu_bundle.sh
# The lent machines have nvcc but none of the Debian packages and no network, so there
# the programs come prebuilt from bench/gpu_bundle.sh (run here, the folder carried).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${arch:-90}
jobs=$(nproc)
out_dir=${OUT:-build/gpu}
mkdir -p "$out_dir"

if [[ -n "${MOEX_GPU_BUNDLE:-}" ]]; then
  bin=$MOEX_GPU_BUNDLE/bin
  export LD_LIBRARY_PATH="$PWD/$MOEX_GPU_BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "bundle $MOEX_GPU_BUNDLE: needs $(cat "$MOEX_GPU_BUNDLE/GLIBC_NEEDED"), machine has $(ldd --version | head -1)"
  echo "--- CUDA tests: every kernel against the CPU reference ---"
  # Seeds are printed per test ([ seed ] lines); MOEX_TEST_SEED=<n> repeats one.
  status=0
  "$bin/moex_cuda_tests" --gtest_brief=1 >"$out_dir/cuda_tests.log" 2>&1 || status=$?
  grep -E '^\[  (FAILED|PASSED|SKIPPED) ' "$out_dir/cuda_tests.log" | sort | uniq -c | head -40
  grep -B2 -A12 -m 8 'Failure' "$out_dir/cuda_tests.log" | head -120 || true
  echo "--- CUDA device tests (runtime) ---"
  "$bin/moex_runtime_tests" --gtest_brief=1 --gtest_filter='*Cuda*:*Device*:*Gpu*' \
    >"$out_dir/runtime_tests.log" 2>&1 || status=$?
  tail -25 "$out_dir/runtime_tests.log"
  echo "--- the forward pass on the GPU against the CPU's (api) ---"
  "$bin/moex_api_tests" --gtest_filter='*Cuda*' >"$out_dir/api_tests.log" 2>&1 || status=$?
  grep -E '^\[ rel err|^\[  (FAILED|PASSED|SKIPPED) ' "$out_dir/api_tests.log" | head -60
  grep -B2 -A12 -m 8 'Failure' "$out_dir/api_tests.log" | head -80 || true
  echo "cuda tests exit status $status"
else
  bin=build/gpu/bench
  bash scripts/setup.sh
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DMOEX_BUILD_BENCH=ON >/dev/null
  cmake --build build/gpu -j "$jobs" --target moex_cuda_tests moex_cuda_bench moex_kernels_bench \
    moex_cli
  cp build/gpu/tools/moex "$bin/moex"
  echo "--- CUDA tests (label gpu): every kernel against the CPU reference ---"
  ctest --test-dir build/gpu -L gpu -j 4 --output-on-failure
fi

echo "--- CUDA kernel benchmarks (sm_$arch) ---"
out=$out_dir/cuda_bench.json
"$bin/moex_cuda_bench" --benchmark_min_time=0.2 --benchmark_out="$out" \
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

for ab in "$bin"/moex_cuda_bench_u*; do
  [[ -x $ab ]] || continue
  echo "--- A/B: $(basename "$ab") (GEMV unroll ${ab##*_u}) ---"
  "$ab" --benchmark_min_time=0.2 --benchmark_filter=Gemv 2>/dev/null |
    awk '/^BM_/ {for (i = 1; i <= NF; ++i) if ($i ~ /^GB\/s=/) print $1, $i}'
done

echo "--- CPU kernel benchmarks on this host (for comparison) ---"
"$bin/moex_kernels_bench" --benchmark_min_time=0.2 --benchmark_filter='MemoryRead|MatVec/.*/1/' || true

echo "--- moex calibrate --json ---"
# The profile file replays this machine elsewhere: --device sim:NAME --profiles FILE.
"$bin/moex" calibrate --json --save-profile "$out_dir/profile.ini" | tee "$out_dir/calibrate.json"

# ---- the forward pass on the GPU against this host's CPU, on a generated model of
# Qwen3-30B-A3B's layer shape (8 of its 48 layers, so that generating it takes ~1.5 min
# on 16 cores): all experts on the GPU, a quarter of the layers' experts (the rest on the
# CPU, --n-cpu-moe style), and the CPU alone.
echo "--- moex bench: the forward pass on the GPU ---"
model=/tmp/moex-gpu-check-q30b8.gguf
[[ -f $model ]] || "$bin/moex" gen --arch qwen3moe --hidden 2048 --layers 8 --heads 32 \
  --kv-heads 4 --head-dim 128 --experts 64 --top-k 8 --ffn 768 --type q4_k_m \
  --vocab-size 32000 -o "$model" >/dev/null 2>&1
for dev in "cuda" "cuda --gpu-mem 25%" "cpu"; do
  # shellcheck disable=SC2086  # $dev is several words on purpose
  "$bin/moex" bench -m "$model" --device $dev -p 512 -n 64 --reps 2 --json |
    tee -a "$out_dir/forward_bench.json" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
where = d.get("device", "cpu")
share = d.get("gpu_expert_share", 0)
print("| %s, %.0f%% of expert runs on the GPU | prefill %.1f tok/s | decode %.1f tok/s |"
      % (where, 100 * share, d["prefill_tps"], d["decode_tps"]))'
done
