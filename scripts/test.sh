#!/usr/bin/env bash
# Builds moex and runs the whole test suite (the README's test command; .ci/run calls it).
#   scripts/test.sh [PRESET]     PRESET: release (default), debug, asan, ubsan, tsan, cuda
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
bash scripts/setup.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)"
