#!/usr/bin/env bash
# moex against llama.cpp on the same GGUF file, side by side on this machine: prefill and
# decode tokens/s, alternating the two engines (A B A B ...) so that a busy machine slows
# both alike; medians and ratios at the end. llama.cpp comes from PyPI (llama-cpp-python,
# built from source once into a throwaway virtual environment; the product and its tests
# never need it).
#   bash bench/compare_llamacpp.sh MODEL.gguf [-p 128] [-n 32] [--reps 3] [--build DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/compare_llamacpp.sh MODEL.gguf [-p N] [-n N] [--reps N] [--build DIR]}
shift
p=128 n=32 reps=3 build=build/release
while [ $# -gt 0 ]; do
  case "$1" in
    -p) p=$2; shift 2 ;;
    -n) n=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "compare_llamacpp.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
venv=${MOEX_LLAMACPP_VENV:-build/llamacpp-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "compare_llamacpp.sh: building llama-cpp-python 0.3.36 into $venv (several minutes)" >&2
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" install -q llama-cpp-python==0.3.36
fi
moex="$build/tools/moex"
[ -x "$moex" ] || { echo "compare_llamacpp.sh: no $moex (build first)" >&2; exit 1; }


# llama.cpp: the same shape of work as moex bench: a prefill of p random tokens in one
# batch, then n single-token decode steps, on physical-core threads.
llama() {
  "$venv/bin/python" - "$model" "$p" "$n" <<'PY'
import json, os, random, sys, time
import llama_cpp
model, p, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
threads = len(os.sched_getaffinity(0))
llm = llama_cpp.Llama(model_path=model, n_ctx=p + n + 8, n_batch=max(p, 32), n_threads=threads,
                      n_threads_batch=threads, verbose=False)
rng = random.Random(1)
toks = [rng.randrange(llm.n_vocab()) for _ in range(p)]
t0 = time.perf_counter(); llm.eval(toks); t1 = time.perf_counter()
for i in range(n):
    llm.eval([rng.randrange(llm.n_vocab())])
t2 = time.perf_counter()
print(json.dumps({"prefill_tps": p / (t1 - t0), "decode_tps": n / (t2 - t1)}))
PY
}
moexrun() {
  "$moex" bench -m "$model" -p "$p" -n "$n" --reps 1 --json 2>/dev/null
}
results=()
for r in $(seq 1 "$reps"); do
  a=$(llama); b=$(moexrun)
  echo "rep $r: llama.cpp $a" >&2
  echo "rep $r: moex $(echo "$b" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("prefill_tps", "decode_tps", "mem_bw_gbps")})')" >&2
  results+=("$a" "$b")
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
ll, mo = rows[0::2], rows[1::2]
med = lambda xs, k: statistics.median(x[k] for x in xs)
print("| engine | prefill tok/s | decode tok/s |")
print("|---|---|---|")
print("| llama.cpp (llama-cpp-python 0.3.36) | %.1f | %.2f |" % (med(ll, "prefill_tps"), med(ll, "decode_tps")))
print("| moex | %.1f | %.2f |" % (med(mo, "prefill_tps"), med(mo, "decode_tps")))
print("| moex / llama.cpp | %.2fx | %.2fx |" % (med(mo, "prefill_tps") / med(ll, "prefill_tps"),
                                             med(mo, "decode_tps") / med(ll, "decode_tps")))
'
