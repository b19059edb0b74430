#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`: clang, ASan + UBSan) and runs each for
# SECONDS (default 60) from its seed corpus in fuzz/corpus/<target>/, one at a time.
#   scripts/fuzz.sh [SECONDS]        MOEX_FUZZ_JOBS=N: build parallelism (default nproc)
# New inputs go to a scratch copy of the corpus (build/fuzz/corpus-run/<target>), never into
# the repository; to keep an interesting one, copy it into fuzz/corpus/<target>/ by hand.
# Exits non-zero on the first crash, leak, timeout or out-of-memory, printing the input
# that caused it (reproduce with: build/fuzz/fuzz/<target> <input>).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
bash scripts/setup.sh
# libFuzzer comes with clang's runtime libraries (Debian 12: clang 14).
fuzz_pkgs=(clang libclang-rt-14-dev)
missing=()
for p in "${fuzz_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz.sh: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "${MOEX_FUZZ_JOBS:-$(nproc)}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
scratch=build/fuzz/corpus-run
artifacts=build/fuzz/artifacts
mkdir -p "$artifacts"
status=0
ran=0
# Every fuzz target the build produced (fuzz/CMakeLists.txt), each with its seeds.
for exe in build/fuzz/fuzz/fuzz_*; do
  [[ -f "$exe" && -x "$exe" ]] || continue
  target="$(basename "$exe")"
  dir="fuzz/corpus/$target/"
  if [[ ! -d "$dir" ]] || [[ -z "$(ls -A "$dir")" ]]; then
    echo "fuzz.sh: $target has no seeds in $dir (add a few small inputs there)" >&2
    exit 1
  fi
  ran=$((ran + 1))
  rm -rf "${scratch:?}/$target" "${artifacts:?}/$target"
  mkdir -p "$scratch/$target" "$artifacts/$target"
  cp "$dir"* "$scratch/$target/"
  log="$artifacts/$target/log.txt"
  echo "== $target: ${seconds}s, seeds $(ls "$dir" | wc -l) files"
  # One process (no -jobs: that forks workers logging to ./fuzz-N.log); -timeout: one input
  # taking 25 s is a hang; -rss_limit_mb: room for ASan's shadow memory.
  if "$exe" "$scratch/$target" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
      -print_final_stats=1 \
      -artifact_prefix="$artifacts/$target/" >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" | tr '\n' ' ' || true
    echo "corpus: $(ls "$scratch/$target" | wc -l) files, $(du -sk "$scratch/$target" | cut -f1) KiB"
  else
    status=1
    echo "fuzz.sh: $target FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    for crash in "$artifacts/$target"/{crash,leak,timeout,oom,slow-unit}-*; do
      [[ -e "$crash" ]] && echo "fuzz.sh: input: $crash (reproduce: $exe $crash)" >&2
    done
    break
  fi
done
if [[ "$ran" -eq 0 ]]; then
  echo "fuzz.sh: no fuzz targets in build/fuzz/fuzz/" >&2
  exit 1
fi
exit "$status"
