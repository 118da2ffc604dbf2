#!/usr/bin/env bash
# Installs the Debian packages Switchboard builds and runs with, if any is missing.
# Safe to run repeatedly: it only calls apt-get when something is absent.
# Usage: scripts/setup.sh [--tests]
set -euo pipefail
# libdnnl-dev: oneDNN, the fp32 and bf16 matrix products where it is faster than OpenBLAS.
# iproute2 (ip netns) for the multi-host test harness in cluster/netns; binutils (nm) for the
# test that the program does not carry the allocation counter.
packages=(libopenmpi-dev openmpi-bin libopenblas-dev libdnnl-dev libhdf5-dev hdf5-tools zlib1g-dev pkg-config dataset-fashion-mnist iproute2
          binutils)
# --tests: what only the test suite uses: headless Chromium renders `switchboard report`'s
# page; Python's venv holds TensorBoard's reader (from PyPI, installed by the tests); Slurm and
# munge make the test cluster of cluster/slurm/harness.sh.
if [ "${1:-}" = "--tests" ]; then
  packages+=(chromium python3-venv slurm-wlm munge)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6 is required)" >&2; exit 1; }
