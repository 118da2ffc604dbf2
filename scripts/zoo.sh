#!/usr/bin/env bash
# Trains the model zoo's jobs (docs/MODELS.md) one after another on this machine and prints,
# for each, the lines the table is made from: its model line (parameters, FLOPs per sample),
# its result (test accuracy, training time) and its inference rate. Run folders go under
# checkpoints/zoo/. Arguments: job names to run (default: all), e.g. scripts/zoo.sh fff switch.
# Extra `switchboard train` flags go in ZOO_FLAGS (e.g. ZOO_FLAGS="--set train.epochs=1").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product switchboard 2>&1 | grep -E "error:|Build complete" || true
jobs=("$@")
if [ ${#jobs[@]} -eq 0 ]; then
    jobs=(fashion-mlp fashion-moe fff fff-dense hourglass hourglass-conventional lowrank sigma-moe sigma-moe-dense topk switch deep deep-unscaled)
fi
for name in "${jobs[@]}"; do
    job="cluster/$name.toml"
    flags=()
    # The depth-scaled job's comparison: the same model without the scaling.
    if [ "$name" = deep-unscaled ]; then job=cluster/deep.toml; flags=(--set model.depth_scaled_norm=false); fi
    log=$(mktemp)
    start=$(date +%s)
    # shellcheck disable=SC2086
    .build/release/switchboard train "$job" --quiet --set "run.name=\"$name\"" --set 'run.output="checkpoints/zoo"' \
        ${flags[@]+"${flags[@]}"} ${ZOO_FLAGS:-} > "$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
    echo "== $name ($job ${flags[*]:-}): $(( $(date +%s) - start )) s"
    grep -E "^model:" "$log" || true
    grep -E "^(done:|inference|  blocks\.[0-9]+\.moe: tokens)" "$log" | tail -n 6
    rm -f "$log"
done
