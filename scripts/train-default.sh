#!/usr/bin/env bash
# Quick start 1: set up, build, and train the default model on Fashion-MNIST.
# Extra arguments go to `switchboard train` (for example --set train.epochs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product switchboard 2>&1 | grep -E "error:|Build complete" || true
test -x .build/release/switchboard || { echo "build failed" >&2; exit 1; }
exec .build/release/switchboard train cluster/fashion-mlp.toml "$@"
