#!/usr/bin/env bash
# The policy comparison of docs/HYBRID.md: `moex sim` on the real Mixtral-8x7B routing trace
# (../shared/testdata/traces, gsm8k + humaneval, 577 decode tokens) at the Q4_K_M shape, for
# two GPU profiles and expert budgets of 25 %, 50 % and all that fits; every policy; prints a
# markdown table. A policy whose weights do not fit the card is listed as such.
#   bash bench/hybrid_table.sh [build/release] [cpu-profile]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/release}/tools/moex
cpu=${2:-desktop-ddr5}
traces=../shared/testdata/traces/mixtral-8x7b-instruct-fp8
echo "| GPU | expert budget | policy | cache | prefetch | decode tok/s | vs static-layers | vs lru-ondemand | hit rate | MB copied/token | stall ms/token | CPU ms/token |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for gpu in rtx4060-8g rtx4090-24g; do
  for mem in 25% 50% max; do
    args=(sim "$traces/gsm8k_2_routing.jsonl" "$traces/humaneval_2_routing.jsonl"
          --model-shape mixtral-8x7b --quant q4_k_m --profile "$gpu" --cpu-profile "$cpu"
          --policy all --json)
    [ "$mem" != max ] && args+=(--gpu-mem "$mem")
    json=$("$bin" "${args[@]}" 2>/dev/null)
    python3 - "$gpu" "$mem" "$json" <<'PY'
import json, sys
gpu, mem, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
runs = {r["policy"]: r for r in j["runs"]}
fit = [r for r in runs.values() if r["policy"] not in ("cpu-only", "gpu-only")]
if mem == "max" and fit:
    mem = f"all that fits ({fit[0]['gpu_expert_share'] * 100:.0f}%)"
st = runs.get("static-layers", {}).get("decode_tps", 0)
lru = runs.get("lru-ondemand", {}).get("decode_tps", 0)
for p, r in runs.items():
    d = r["decode_tps"]
    print(f"| {gpu} | {mem} | {p} | {r['cache_policy']} | {r['prefetch']} | {d:.2f} | "
          f"{f'{d / st:.2f}x' if st else '-'} | {f'{d / lru:.2f}x' if lru else '-'} | "
          f"{r['hit_rate']:.3f} | {r['bytes_copied_per_token'] / 1e6:.0f} | "
          f"{r['stall_ms_per_token']:.2f} | {r['cpu_ms_per_token']:.1f} |")
for s in j.get("skipped", []):
    p, why = s.split(": ", 1)
    print(f"| {gpu} | {mem} | {p} | | | does not fit: {why.split(': ', 1)[-1]} | | | | | | |")
PY
  done
done
