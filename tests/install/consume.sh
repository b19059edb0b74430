#!/usr/bin/env bash
# Installs moex into a fresh prefix and builds the examples against the installed package
# only (find_package(moex), headers and libmoex.so from the prefix), then runs them.
#   consume.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
prefix=$(mktemp -d /tmp/moex_install_XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/moex/moex.h"
ls "$prefix"/lib*/libmoex.so* >/dev/null
# A sanitizer build installs an instrumented libmoex.so, which loads only into programs
# linked with the same sanitizer runtime (ASan must come first in the library list).
san=$(sed -n 's/^MOEX_SANITIZE:STRING=//p' "$build/CMakeCache.txt")
san_flags=()
if [[ -n "$san" ]]; then
  san_flags=(-DCMAKE_CXX_FLAGS="-fsanitize=$san" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$san")
fi
cmake -S "$src/examples" -B "$prefix/build-ex" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON "${san_flags[@]}" >/dev/null
# The examples must see the installed headers, never the source tree's.
if grep -q -- "-I$src/include" "$prefix/build-ex/compile_commands.json"; then
  echo "examples compiled against the source tree's headers" >&2
  exit 1
fi
cmake --build "$prefix/build-ex" >/dev/null
"$prefix/bin/moex" gen --arch qwen3moe --type q8_0 --hidden 64 --layers 2 --heads 4 \
  --kv-heads 2 --experts 4 --top-k 2 --ffn 64 --vocab-size 600 --quiet -o "$prefix/m.gguf"
out=$("$prefix/build-ex/moex_example_routing" "$prefix/m.gguf" "hello world")
echo "$out"
echo "$out" | grep -q "top-2 of 4 experts"
printf 'hi\nagain\n' | "$prefix/build-ex/moex_example_chat" "$prefix/m.gguf" >/dev/null
echo "installed package consumed: OK"
