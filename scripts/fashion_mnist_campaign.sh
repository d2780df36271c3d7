#!/usr/bin/env bash
# Reproduce hysts' Fashion-MNIST table at full length (docs/fashion_mnist_reproduction.md):
# ResNet-preact-20 plain (3 seeds), + Cutout 12 (3 seeds), + Mixup (1 seed), 160 epochs each,
# and seed 0's first 20 epochs in fp32 without compilation, to check what bf16 and
# torch.compile do to the accuracy. Re-running the script continues every run exactly where it
# stopped (a kill at any moment loses at most the epoch in progress).
#
#   bash scripts/fashion_mnist_campaign.sh COMMIT [FOLDER]
#
# The code of COMMIT runs from a detached git worktree ($CAMPAIGN_CODE, default
# ~/cnnlab-campaign), so later commits cannot change a run half-way; run folders go under FOLDER
# (default ~/campaign). Runs are niced, one torch thread each, so other work keeps its cores.
set -euo pipefail
commit=${1:?usage: fashion_mnist_campaign.sh COMMIT [FOLDER]}
folder=${2:-$HOME/campaign}
repo=$(cd "$(dirname "$0")/.." && pwd)
code=${CAMPAIGN_CODE:-$HOME/cnnlab-campaign}
python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$folder"
[ -d "$code" ] || git -C "$repo" worktree add --detach "$code" "$commit" >/dev/null
if [ "$(git -C "$code" rev-parse HEAD)" != "$(git -C "$repo" rev-parse "$commit^{commit}")" ]; then
    echo "$code holds $(git -C "$code" rev-parse --short HEAD), not $commit: its runs would" \
         "change code half-way; set CAMPAIGN_CODE to another folder" >&2
    exit 2
fi
cd "$folder"
export PYTHONPATH=$code
numerics="train.precision=bf16 train.compile=auto"
sweep() {  # recipe, seeds, parallel runs
    nice -n 19 "$python" -m cnnlab sweep "$code/recipes/fashion_mnist/$1.yaml" $numerics \
        --seeds "$2" --workers "$3" --out "sweeps/$1"
}
sweep preact_resnet20 3 3
check=runs/preact_resnet20_fp32_eager_seed0
epochs_done() { if [ -f $check/metrics.jsonl ]; then wc -l < $check/metrics.jsonl; else echo 0; fi; }
if [ "$(epochs_done)" -lt 20 ]; then
    if [ -f $check/last.pt ]; then args=(--resume $check); else
        args=(--config "$code/recipes/fashion_mnist/preact_resnet20.yaml" --out $check
              train.precision=fp32 train.compile=false); fi
    OMP_NUM_THREADS=1 nice -n 19 "$python" -m cnnlab train "${args[@]}" & pid=$!
    while kill -0 $pid 2>/dev/null && [ "$(epochs_done)" -lt 20 ]; do sleep 30; done
    kill $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
fi
sweep preact_resnet20_cutout12 3 3
sweep preact_resnet20_mixup 1 1
