#!/usr/bin/env bash
# Copy the record of each finished run of a sweep into results/DATASET/RECIPE/seedK/ (metrics,
# summary, config, log and curves; no checkpoints), so the runs behind a published table travel
# with the repository.
#
#   bash scripts/collect_results.sh SWEEP_DIR DATASET/RECIPE      e.g.
#   bash scripts/collect_results.sh ~/campaign/sweeps/preact_resnet20 fashion_mnist/preact_resnet20
set -euo pipefail
sweep=${1:?usage: collect_results.sh SWEEP_DIR DATASET/RECIPE}
name=${2:?usage: collect_results.sh SWEEP_DIR DATASET/RECIPE}
dest="$(cd "$(dirname "$0")/.." && pwd)/results/$name"
found=0
for run in "$sweep"/*/seed*/; do
    [ -f "$run/summary.json" ] || continue  # unfinished: nothing to publish yet
    out="$dest/$(basename "$run")"
    mkdir -p "$out"
    for file in metrics.jsonl summary.json config.yaml log.txt curves.png; do
        [ -f "$run/$file" ] && cp "$run/$file" "$out/"
    done
    found=$((found + 1))
done
echo "$found finished run(s) -> results/$name"
