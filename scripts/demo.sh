#!/usr/bin/env bash
# The main job, end to end on a fresh machine: installs what is missing, builds moex,
# makes a default model with `moex gen` (a Qwen3-MoE-shaped model with random weights,
# 32 experts top-4, Q4_K_M) and generates from a prompt, printing the text and tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target moex_cli
moex=build/release/tools/moex
model=models/default-qwen3moe-q4_k_m.gguf
if [ ! -f "$model" ]; then
  mkdir -p models
  "$moex" gen --arch qwen3moe --type q4_k_m --hidden 512 --layers 8 --heads 8 --kv-heads 4 \
    --experts 32 --top-k 4 --ffn 512 --vocab-size 8192 --seed 1 -o "$model"
fi
"$moex" inspect "$model" | head -5
prompt="Mixture-of-Experts models route each token to a few experts."
echo "--- moex run -p \"$prompt\" -n 64 (random weights: the words are nonsense, the speed is real) ---"
"$moex" run -m "$model" -p "$prompt" -n 64 --seed 1 --ignore-eos
"$moex" run -m "$model" -p "$prompt" -n 64 --seed 1 --ignore-eos --json
