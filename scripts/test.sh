#!/usr/bin/env bash
# Quick start 2: set up, build, and run the whole test suite.
# The suite runs on the optimized build (as users run it), with -enable-testing for the
# tests' @testable imports; allocation-free stepping is only a property of that build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
flags=(-c release -Xswiftc -enable-testing)
swift build "${flags[@]}" --build-tests
swift test "${flags[@]}" --skip-build "$@"
