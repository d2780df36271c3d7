#!/usr/bin/env bash
# The prepared GPU check: no downloads, writes JSON ($OUT/gpu_check.json where $OUT is set,
# else ./gpu_check.json; --out FILE to choose).
#   benchmarks/gpu_check.sh [--cpu] [--out FILE] [--tiny] [--cifar-root DIR] [--sections A,B]
# See benchmarks/gpu_check.py for the sections; benchmarks/gpu_first_run.sh runs them with the
# environment record, the CUDA tests and a real-data run. GPU_CHECK_LIMIT (seconds, default
# 300) bounds the whole run; sections that would not fit in what is left are skipped, and the
# JSON is rewritten after every section, so a cut-off run keeps its results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/gpu_env.sh"
limit="${GPU_CHECK_LIMIT:-300}"
exec timeout "$limit" "$python" "$here/gpu_check.py" --budget "$((limit - 10))" "$@"
