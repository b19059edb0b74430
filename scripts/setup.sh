#!/usr/bin/env bash
# Installs the Debian packages moex needs, when missing. Idempotent; safe in CI.
# CUDA is not a Debian package here: it is used from /usr/local/cuda when present.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config
      libabsl-dev libtbb-dev libdnnl-dev libhwloc-dev libpcre2-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
