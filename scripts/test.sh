#!/usr/bin/env bash
# Quick start 2: set up, build, and run the whole test suite.
# The suite runs on the optimized build (as users run it), with -enable-testing for the
# tests' @testable imports; allocation-free stepping is only a property of that build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
flags=(-c release -Xswiftc -enable-testing)
swift build "${flags[@]}" --build-tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
swift test "${flags[@]}" --skip-build "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
    # CI keeps only the end of a long log: repeat what failed there, each line cut short.
    echo "=== the suite failed (exit $status); its failures and crashes: ==="
    grep -E ": error: |Fatal error|Test Case .* failed|Crash|Signal" "$log" | cut -c1-1500 | tail -n 60 || true
fi
exit "$status"
