#!/usr/bin/env bash
# A GPU's first run of cnnlab, in one go and at most 8 minutes (GPU_FIRST_RUN_LIMIT seconds,
# default 480): the environment (GPU, driver, torch, CUDA, cuDNN), then in order of value the
# fused-SGD/GradScaler check, host syncs per step per precision, the CIFAR-10-shaped speedrun,
# floor vs loop per precision at batch 128 and 512 with the CUDA-graph floor, auto's choice,
# torch.compile, the CUDA tests, and, time permitting, the default recipe on the carried
# Fashion-MNIST. Each section is written the moment it ends; an error stays in its row.
#
#   benchmarks/gpu_first_run.sh [--cpu] [--sections A,B,...]
#
# Everything lands in $OUT (else ./gpu_first_run/): gpu_first_run.json, gpu_first_run.log,
# cuda_tests.txt, fashion_mnist_log.txt. Needs no network: the python's missing packages and
# Fashion-MNIST come from the carried folder (benchmarks/gpu_env.sh, docs/gpu.md). --cpu is
# the dry run on the CPU, every phase shrunk to seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$PWD/gpu_first_run}"
mkdir -p "$out"
exec > >(tee "$out/gpu_first_run.log") 2>&1
source "$here/gpu_env.sh"
limit="${GPU_FIRST_RUN_LIMIT:-480}"
tiny=()
for arg in "$@"; do [ "$arg" = --cpu ] && tiny=(--tiny); done
sections=env,fused_sgd,syncs,speedrun,floor_vs_loop,auto,compile,cuda_tests,fashion_mnist
status=0
timeout "$limit" "$python" "$here/gpu_check.py" --sections "$sections" \
    --out "$out/gpu_first_run.json" --budget "$((limit - 10))" "${tiny[@]}" "$@" || status=$?
echo "gpu_first_run: exit $status; results in $out"
exit "$status"
